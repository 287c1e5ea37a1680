"""Prompt timelines as a user gives them: generate's --prompt list and --timeline file, batch JSONL items."""

import json

import pytest

from test_batch import manifest, write_jsonl
from test_cli import run_main, tokentrim
from tokentrim_cli.output.video import probe


def test_generate_with_a_prompt_list_records_the_timeline(tmp_path):
    out = tmp_path / "tl.mp4"
    r = tokentrim("generate", "--prompt", "a red circle", "--prompt", "1s: a blue square", "--prompt",
                  "2s cut: a green star", "--seconds", "3", "--seed", "1", "--output", str(out), "--log-format",
                  "jsonl")
    assert r.returncode == 0, r.stderr
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["prompt"] == "a red circle"
    assert side["timeline"] == [{"start": 0.0, "prompt": "a red circle"}, {"start": 1.0, "prompt": "a blue square"},
                                {"start": 2.0, "prompt": "a green star", "switch": "cut"}]
    assert [(s["entry"], s["block"], s["requested"], s["snapped"], s["mode"]) for s in side["switches"]] == [
        (1, 2, 1.0, 1.3125, "recache"), (2, 3, 2.0, 2.0625, "cut")]
    assert [b["prompt"] for b in side["blocks"]] == [0, 0, 1, 2, 2]
    events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    said = [e["text"] for e in events if e.get("event") == "message" and e["text"].startswith("prompt ")]
    assert said == ["prompt 2/3 from block 2 (1.3125 s, recache): a blue square",
                    "prompt 3/3 from block 3 (2.0625 s, cut): a green star"]
    meta = json.loads(probe(out)["comment"])
    assert meta["timeline"] == [[0.0, "a red circle"], [1.0, "a blue square"], [2.0, "a green star"]]
    # evaluate scores each prompt's stretch, cut where the switches snapped
    assert tokentrim("evaluate", str(out), "--quiet").returncode == 0
    segments = json.loads(out.with_suffix(".metrics.json").read_text())["segments"]
    assert [(s["prompt"], s["start_s"], s["frames"]) for s in segments] == [
        ("a red circle", 0.0, 21), ("a blue square", 1.3125, 12), ("a green star", 2.0625, 15)]


def test_generate_with_a_timeline_file(tmp_path):
    tl = tmp_path / "tl.yaml"
    tl.write_text("- {start: 0, prompt: a red circle}\n- {start: 1, prompt: a blue square, switch: keep}\n")
    out = tmp_path / "f.mp4"
    r = tokentrim("generate", "--timeline", str(tl), "--seconds", "2", "--seed", "1", "--output", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    side = json.loads(out.with_suffix(".json").read_text())
    assert [s["mode"] for s in side["switches"]] == ["keep"] and [b["prompt"] for b in side["blocks"]] == [0, 0, 1]


BAD = [
    (["--prompt", "a", "--prompt", "b"], "needs a start time"),
    (["--prompt", "a", "--prompt", "2s: b", "--prompt", "1s: c"], "start times must increase"),
    (["--prompt", "a", "--prompt", "9s: b"], "at or past the end of the 3 s video"),
    (["--prompt", "a", "--prompt", "2.9s: b"], "past the video's last block"),
    (["--prompt", "a", "--prompt", "1s:  "], "prompt 2 is empty"),
    (["--prompt", "a", "--prompt", "1s fade: b"], "unknown switch mode 'fade'"),
    (["--timeline", "FILE:- {start: 0, prompt: a, fade: 2}"], "unknown field 'fade'"),
    (["--prompt", "a", "--prompt", "1s blend=3: b", "--prompt", "2s: c"], "runs into prompt 3's switch"),
    (["--timeline", "FILE:- {start: 0, prompt: a}\n- {start: 1, prompt: b, switch: fade}"], "switch must be one of"),
    (["--timeline", "FILE:- {start: 0, prompt: a}", "--prompt", "b"], "exclude each other"),
]


@pytest.mark.parametrize("args, words", BAD, ids=[w for _, w in BAD])
def test_bad_timelines_one_line_exit_2(capsys, tmp_path, args, words):
    args = list(args)
    for i, a in enumerate(args):
        if a.startswith("FILE:"):
            (tmp_path / "t.yaml").write_text(a[5:])
            args[i] = str(tmp_path / "t.yaml")
    out = tmp_path / "x.mp4"
    code, stdout, err = run_main(capsys, "generate", *args, "--seconds", "3", "--seed", "1", "--output", str(out))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and words in lines[0], err
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_batch_mixes_prompt_and_timeline_items(capsys, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "a red circle", "seconds": 2},
        {"timeline": [{"start": 0, "prompt": "a red circle"}, {"start": 1, "prompt": "a blue square"}], "seconds": 2},
    ])
    out = tmp_path / "o"
    code, stdout, err = run_main(capsys, "batch", str(prompts), "--out-dir", str(out), "--dry-run")
    assert code == 0 and len(stdout.splitlines()) == 2 and not out.exists(), err
    r = tokentrim("batch", str(prompts), "--out-dir", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    rows = manifest(out)
    assert [row["status"] for row in rows] == ["ok", "ok"] and "timeline" in rows[1] and "timeline" not in rows[0]
    side = json.loads((out / rows[1]["sidecar"]).read_text())
    assert [b["prompt"] for b in side["blocks"]] == [0, 0, 1]
    code, _, err = run_main(capsys, "batch", str(prompts), "--out-dir", str(out), "--resume")
    assert code == 0 and "0 ok, 0 failed, 2 skipped" in err, err  # both kinds resume
    changed = write_jsonl(tmp_path / "p.jsonl", [  # another script for the timeline item: it is made again
        {"prompt": "a red circle", "seconds": 2},
        {"timeline": [{"start": 0, "prompt": "a red circle"}, {"start": 1, "prompt": "a green star"}], "seconds": 2},
    ])
    code, _, err = run_main(capsys, "batch", str(changed), "--out-dir", str(out), "--resume", "--overwrite")
    assert code == 0 and "1 ok, 0 failed, 1 skipped" in err, err


def test_batch_timeline_problems_listed_with_line_numbers(capsys, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "a", "timeline": [{"start": 0, "prompt": "a"}]},
        {"timeline": [{"start": 0, "prompt": "a"}, {"start": 9, "prompt": "b"}], "seconds": 2},
        {"timeline": [{"start": 0, "prompt": "a"}, {"start": 1.9, "prompt": "b"}], "seconds": 2},
    ])
    code, stdout, err = run_main(capsys, "batch", str(prompts), "--out-dir", str(tmp_path / "o"))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "line 1: give 'prompt' or 'timeline', not both" in lines[0]
    assert "line 2: prompt 2 starts at 9 s, at or past the end of the 2 s video" in lines[0]
    code, stdout, err = run_main(capsys, "batch", str(write_jsonl(tmp_path / "q.jsonl", [
        {"timeline": [{"start": 0, "prompt": "a"}, {"start": 1.9, "prompt": "b"}], "seconds": 2}])),
        "--out-dir", str(tmp_path / "o"), "--dry-run")
    assert code == 2 and "line 1: timeline: prompt 2 at 1.9 s snaps to block 3, past the video's last block" in err
