"""tokentrim batch: validation before any model loads, names, seeds, shards, manifest, resume, accelerate launch."""

import json
import multiprocessing
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tokentrim_cli import batch as B
from tokentrim_cli.batch import names as batch_names
from tokentrim_cli.cli import main
from tokentrim_cli.output.video import probe

from conftest import ROOT
from test_cli import tokentrim  # the command in this process, its output captured
import zygote

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
ENV.pop("WORLD_SIZE", None)
SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


def run_main(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def manifest(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "manifest.jsonl").read_text().splitlines()]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------- parsing and validation (in-process)
def test_read_text_and_jsonl(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("# header\n\na red kite\n   \n  # indented comment\n a paper boat \r\n")
    items = B.read_prompts(txt, 2.0)
    assert [(i.index, i.line, i.prompt, i.seconds, i.seed) for i in items] == [
        (0, 3, "a red kite", 2.0, None), (1, 6, "a paper boat", 2.0, None)]
    # no .jsonl suffix, but every kept line is an object: read as JSONL
    js = write_jsonl(tmp_path / "p.txt", ['{"prompt": "a", "seconds": 1.5, "seed": 7, "set": ["pruning.p=0.2"]}',
                                          "", '{"prompt": "b", "preset": "tiny-rolling", "output": "clip.mp4"}'])
    a, b = B.read_prompts(js, 3)
    assert (a.prompt, a.seconds, a.seed, a.sets, a.index) == ("a", 1.5, 7, ["pruning.p=0.2"], 0)
    assert (b.prompt, b.seconds, b.seed, b.preset, b.output, b.index, b.line) == ("b", 3.0, None, "tiny-rolling", "clip", 1, 3)


NON_UTF8 = b"a cat\na dog\ncaf\xe9 au lait\n"
VALIDATION = [
    ("p.txt", NON_UTF8, [], "line 3: not UTF-8"),
    ("p.txt", b"", [], "no prompts found"),
    ("p.txt", b"# only a comment\n\n", [], "no prompts found"),
    ("p.jsonl", b'{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c",}\n', [], "line 3: invalid JSON"),
    ("p.jsonl", b'{"prompt": "a"}\n\n{"promt": "b"}\n', [],
     "line 3: unknown field 'promt' (allowed: prompt, seconds, seed, preset, output, set, timeline)"),
    ("p.jsonl", b'{"prompt": "a", "seconds": -1}\n{"prompt": "b", "seconds": "5"}\n', [],
     "line 1: seconds must be a positive number, got -1; line 2: seconds must be a positive number, got '5'"),
    ("p.jsonl", b'{"prompt": "a", "seed": 1.5}\n', [], "line 1: seed must be an integer"),
    ("p.jsonl", b'["a"]\n', [], "line 1: expected a JSON object"),
    ("p.jsonl", b'{"prompt": "a", "set": "video.fps=8"}\n', [], "line 1: set must be a list"),
    ("p.jsonl", b'{"prompt": "a", "output": "../evil"}\n', [], "line 1: output must be a file name without folders"),
    ("p.jsonl", b'{"prompt": "a"}\n{"prompt": "b", "preset": "nope"}\n', [], "line 2: unknown preset 'nope'"),
    ("p.txt", b"a cat\n", ["--shard", "3/3"], "--shard 3/3: need 0 <= I < N"),
    ("p.txt", b"a cat\n", ["--shard", "1of2"], "--shard must look like I/N"),
    ("p.txt", b"a cat\n", ["--set", "video.fps=0"], "video.fps must be an integer from 1 to 240, got 0"),
    ("p.txt", b"a cat\n", ["--preset", "nope"], "unknown preset 'nope'"),
    ("p.txt", b"a cat\n", ["--name-template", "{index}-{title}"], "unknown field {title}"),
    ("p.txt", b"a cat\n", ["--seconds", "0"], "--seconds must be a positive number"),
    ("missing.txt", None, [], "does not exist"),
]


@pytest.mark.parametrize("name,content,extra,message", VALIDATION, ids=[m for *_, m in VALIDATION])
def test_validation_exit_2_one_line_nothing_created(capsys, tmp_path, name, content, extra, message):
    prompts = tmp_path / name
    if content is not None:
        prompts.write_bytes(content)
    out = tmp_path / "out"
    code, stdout, err = run_main(capsys, "batch", str(prompts), "--out-dir", str(out), *extra)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("tokentrim: error: ") and message in lines[0], lines[0]
    assert "Traceback" not in err and stdout == ""
    assert not out.exists()  # nothing created, nothing loaded


def test_per_item_override_is_not_validated_up_front(capsys, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b", "set": ["video.fps=0"]}])
    code, out, err = run_main(capsys, "batch", str(prompts), "--out-dir", str(tmp_path / "o"), "--dry-run",
                              "--seconds", "1", "--log-format", "jsonl")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["index"] for r in rows] == [0, 1] and not (tmp_path / "o").exists()
    assert rows[0]["frames"] == 16 and rows[0]["action"] == "run" and rows[0]["shard"] == "0/1"
    assert rows[1]["action"] == "fail" and "video.fps must be" in rows[1]["error"]


def test_dry_run_text_plan_with_shard(capsys, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"prompt {k}\n" for k in range(5)))
    code, out, err = run_main(capsys, "batch", str(prompts), "--out-dir", str(tmp_path / "o"), "--dry-run",
                              "--shard", "1/2", "--seconds", "2", "--seed", "3")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2 and "dry run: 2 item(s)" in err
    for line, k in zip(lines, (1, 3)):
        seed = B.item_seed(3, k)
        assert line.split()[:2] == [str(k), f"{k:04d}-prompt-{k}-{seed}.mp4"]
        assert f"seed {seed}" in line and "2s  32 frames  preset tiny  shard 1/2  process 0/1" in line


def test_empty_shard_exits_0_with_message(capsys, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\n")
    code, out, err = run_main(capsys, "batch", str(prompts), "--out-dir", str(tmp_path / "o"), "--shard", "5/7")
    assert code == 0 and "nothing to do for shard 5/7" in err and not (tmp_path / "o").exists()


# ---------------------------------------------------------------------- seeds, names, shards (pure)
def test_seeds_are_deterministic_and_distinct():
    seeds = [B.item_seed(0, k) for k in range(1000)]
    assert seeds == [B.item_seed(0, k) for k in range(1000)]
    assert len(set(seeds)) == 1000 and all(0 <= s < 2**31 for s in seeds)
    assert B.item_seed(1, 0) != B.item_seed(0, 0)


def test_names_are_safe_and_unique():
    nasty = ["a cat", "a cat", "A CAT", "../../etc/passwd", "a/b\\c", "CON", "nul", "com1", "🎬🎥", "x" * 300,
             "tab\there", "dots...", ".hidden", "-dash", "café au lait", "", "a cat-2"]
    items = [B.Item(k, k + 1, p, 1.0, 5) for k, p in enumerate(nasty)]
    for template in ("{slug}", "{index:04d}-{slug}-{seed}", "{slug}/{preset}", "CON", "{slug}.partial"):
        names = B.assign_names(items, template, "tiny")
        assert len({n.lower() for n in names}) == len(names), (template, names)
        for n in names:
            assert SAFE.match(n) and len(n) <= B.NAME_LIMIT and not n.endswith("."), n
            assert n.split(".")[0].upper() not in batch_names._RESERVED and not n.lower().endswith(".partial"), n
    names = B.assign_names(items, "{slug}", "tiny")
    assert names[:3] == ["a-cat", "a-cat-2", "a-cat-3"]  # duplicates numbered in index order
    assert names[-1] == "a-cat-2-2"  # a name that looks like a numbered duplicate does not steal one
    assert B.assign_names(items, "{slug}", "tiny") == names  # deterministic
    # per-item "output" names are made safe too
    assert B.safe_name("CON.mp4") == "_CON" and B.safe_name("🎬") == "video" and B.safe_name("a\x00b\nc") == "a-b-c"
    assert B.safe_name("café") == "cafe" and len(B.safe_name("y" * 500)) == B.NAME_LIMIT


@pytest.mark.parametrize("shards", range(1, 8))
def test_shards_cover_every_item_exactly_once(shards):
    items = list(range(5))
    parts = [B.select(items, i, shards) for i in range(shards)]
    assert sorted(x for p in parts for x in p) == items
    assert all(p == [k for k in items if k % shards == i] for i, p in enumerate(parts))
    for procs in (1, 2, 3):  # shard first, then split across processes: still exactly once
        split = [B.select(items, i, shards, r, procs) for i in range(shards) for r in range(procs)]
        assert sorted(x for p in split for x in p) == items


@pytest.mark.parametrize("text,expected", [(None, (0, 1)), ("0/1", (0, 1)), (" 2 / 7 ", (2, 7))])
def test_parse_shard(text, expected):
    assert B.parse_shard(text) == expected


def _append_many(path, worker):
    for k in range(200):
        B.append_line(path, {"worker": worker, "k": k, "pad": "x" * (k * 37 % 5000)})


def test_manifest_appends_never_interleave(tmp_path):
    path = tmp_path / "manifest.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 800 and {(r["worker"], r["k"]) for r in rows} == {(w, k) for w in range(4) for k in range(200)}


# ---------------------------------------------------------------------- end to end
def test_batch_item_failure_then_resume(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "a red kite"},
        {"prompt": "a paper boat", "seed": 11},
        {"prompt": "broken item", "set": ["video.fps=0"]},
        {"prompt": "clouds", "output": "clouds"},
    ])
    out = tmp_path / "out"
    r = tokentrim("batch", str(prompts), "--out-dir", str(out), "--seconds", "0.5")
    assert r.returncode == 1, r.stderr
    rows = manifest(out)
    assert len(rows) == 4 and sorted(x["index"] for x in rows) == [0, 1, 2, 3]
    by = {x["index"]: x for x in rows}
    for row in rows:
        assert set(row) >= {"index", "prompt", "output", "sidecar", "seed", "status", "error", "seconds", "settings_hash"}
    bad = by[2]
    assert bad["status"] == "failed" and bad["prompt"] == "broken item" and bad["output"] is None
    assert "video.fps must be an integer from 1 to 240, got 0" in bad["error"]
    assert "item 2 (line 3) failed" in r.stderr and "video.fps" in r.stderr
    assert "3 ok, 1 failed, 0 skipped" in r.stderr and str(out / "manifest.jsonl") in r.stderr
    assert by[1]["seed"] == 11 and by[0]["seed"] == B.item_seed(0, 0) and by[3]["output"] == "clouds.mp4"
    videos = sorted(out.glob("*.mp4"))
    assert len(videos) == 3 and r.stdout.split() == [str(out / by[k]["output"]) for k in (0, 1, 3)]
    for k in (0, 1, 3):
        assert by[k]["status"] == "ok" and by[k]["error"] is None and by[k]["seconds"] == 0.5
        side = json.loads((out / by[k]["sidecar"]).read_text())
        assert side["status"] == "ok" and side["seed"] == by[k]["seed"] and side["batch"]["index"] == k
        assert probe(out / by[k]["output"])["frames"] == 8
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix in (".mp4", ".json")}

    r = tokentrim("batch", str(prompts), "--out-dir", str(out), "--seconds", "0.5", "--resume")
    assert r.returncode == 1, r.stderr
    assert "0 ok, 1 failed, 3 skipped" in r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix in (".mp4", ".json")} == stamps
    rows2 = manifest(out)
    assert rows2[:4] == rows and len(rows2) == 5
    assert rows2[4]["index"] == 2 and rows2[4]["status"] == "failed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_args(tmp_path, *launch_args) -> tuple[list[str], Path]:
    """``accelerate launch`` arguments that run a 3-item batch into tmp_path/out, and that folder."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red kite\na paper boat\nclouds over peaks\n")
    out = tmp_path / "out"
    return ["--num_processes", "2", "--main_process_port", str(_free_port()), *launch_args, "-m", "tokentrim_cli",
            "batch", str(prompts), "--out-dir", str(out), "--seconds", "0.5", "--quiet"], out


def _complete_batch(out: Path) -> list[dict]:
    """The manifest rows of a finished 3-item batch in ``out``, each ok with its video."""
    assert len(list(out.glob("*.mp4"))) == 3
    rows = manifest(out)
    assert len(rows) == 3 and sorted(x["index"] for x in rows) == [0, 1, 2]
    assert all(x["status"] == "ok" and (out / x["output"]).is_file() for x in rows)
    return rows


def test_accelerate_launch_two_processes_gloo_shared_manifest(tmp_path):
    """Two real worker processes (torchrun + gloo): on a machine without CUDA, `--multi_gpu` is what makes
    accelerate start them; each process takes every other item and both append to one manifest."""
    args, out = _launch_args(tmp_path, "--multi_gpu")
    exe = Path(sys.executable).with_name("accelerate")
    launcher = [str(exe), "launch"] if exe.exists() else [sys.executable, "-m", "accelerate.commands.launch"]
    env = {**ENV, "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}  # no stray accelerate config
    r = subprocess.run([*launcher, *args], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    where = {x["index"]: x["where"] for x in _complete_batch(out)}
    assert where == {0: "shard 0/1, process 0/2", 1: "shard 0/1, process 1/2", 2: "shard 0/1, process 0/2"}
    assert "process 0/2" in r.stderr and "process 1/2" in r.stderr


def test_accelerate_launch_cpu_flag(tmp_path, monkeypatch, capsys):
    """The literal `accelerate launch --num_processes 2 --cpu -m tokentrim_cli batch ...`: accelerate 1.x starts
    multi-CPU jobs only through mpirun, otherwise one process; the batch must still be complete and correct.
    accelerate's launch command decides here, in this process; the one process its simple launcher would start
    (the command and environment accelerate prepares for it, the same from 1.0 to 1.16) runs here too, as the
    command in this process (the real processes: the test above)."""
    from accelerate.commands import launch

    started = []
    monkeypatch.setattr(launch, "simple_launcher",
                        lambda args: started.append(launch.prepare_simple_launcher_cmd_env(args)))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no stray accelerate config
    args, out = _launch_args(tmp_path, "--cpu")
    launch.launch_command(launch.launch_command_parser().parse_args(args))
    [(cmd, env)] = started  # one process, not two
    assert cmd[:3] == [sys.executable, "-m", "tokentrim_cli"] and env["ACCELERATE_USE_CPU"] == "True"
    assert "WORLD_SIZE" not in env
    for key, value in env.items():  # this environment with what accelerate sets for its process
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
    code, _, err = run_main(capsys, *cmd[3:])
    assert code == 0, err
    assert {x["where"] for x in _complete_batch(out)} == {"shard 0/1"}  # no processes but this one


def test_interrupt_finalises_current_item_and_stops(tmp_path):
    import signal
    import time

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "short", "seconds": 0.5},
                                                 {"prompt": "a very long walk", "seconds": 600}, {"prompt": "never"}])
    out = tmp_path / "out"
    proc = zygote.popen([sys.executable, "-m", "tokentrim_cli", "batch", str(prompts), "--out-dir", str(out)],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 90
    side = None
    while time.time() < deadline and side is None:
        time.sleep(0.3)
        for p in out.glob("0001-*.json"):
            try:
                if len(json.loads(p.read_text())["blocks"]) >= 2:
                    side = p
            except (json.JSONDecodeError, KeyError):
                pass
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    rows = manifest(out)
    assert [(x["index"], x["status"]) for x in rows] == [(0, "ok"), (1, "interrupted")]
    assert rows[1]["output"].endswith(".partial.mp4") and (out / rows[1]["output"]).is_file()
    assert "1 interrupted, 1 not started" in err and not list(out.glob("0002-*"))


def test_hour_long_items_need_yes(capsys, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b", "seconds": 7200}])
    args = ["batch", str(prompts), "--out-dir", str(tmp_path / "o"), "--dry-run", "--log-format", "jsonl"]
    code, _, err = run_main(capsys, *args)
    assert code == 2 and err.strip() == (f"tokentrim: error: {prompts}: line 2: seconds is 2.0 hours of video (over "
                                         "3600); pass --yes to confirm a run that long")
    code, out, _ = run_main(capsys, *args, "--yes")
    assert code == 0 and [json.loads(line)["seconds"] for line in out.splitlines()] == [5.0, 7200]


def test_name_template_preset_is_the_preset_items_run(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("TOKENTRIM_PRESET", raising=False)  # no --preset: the configured default, toy
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    code, out, _ = run_main(capsys, "batch", str(prompts), "--out-dir", str(tmp_path / "o"), "--dry-run",
                            "--name-template", "{preset}-{index}", "--log-format", "jsonl")
    row = json.loads(out)
    assert code == 0 and row["output"] == "toy-0.mp4" and row["preset"] == "toy"


def test_settings_hash_of_a_0_1_0_batch_is_unchanged():
    """Settings added since 0.1.0 (runtime.threads, sampler.switch at its default) stay out of the hash, so a
    batch begun with 0.1.0 resumes without redoing finished items (the value is 0.1.0's for this item)."""
    from tokentrim_cli.config.presets import load_preset

    cfg = load_preset("tiny").config.as_dict()
    assert B.settings_hash(cfg, "a red circle", 1.0, 5) == "18bec84e67d6d73f"
    cut = load_preset("tiny", ["sampler.switch=cut", "runtime.threads=3"]).config.as_dict()
    assert B.settings_hash(cut, "a red circle", 1.0, 5) != "18bec84e67d6d73f"  # what changes the video counts
    lora = load_preset("tiny", ["model.transformer.lora_scale=0.5"]).config.as_dict()
    assert B.settings_hash(lora, "a red circle", 1.0, 5) != "18bec84e67d6d73f"
    every = load_preset("tiny", ["runtime.threads=3", "runtime.state_every=0"]).config.as_dict()
    assert B.settings_hash(every, "a red circle", 1.0, 5) == "18bec84e67d6d73f"  # never change the pictures


def _leaf_paths(cls, prefix=()):
    import dataclasses

    from tokentrim_cli.config.settings import section_type, yaml_key

    for f in dataclasses.fields(cls):
        sub = section_type(cls, f)
        yield from _leaf_paths(sub, (*prefix, yaml_key(f))) if sub else [(*prefix, yaml_key(f))]


def test_every_setting_has_a_settings_hash_rule():
    """Each field of a preset is in exactly one list of the hash's rule (0.1.0's fields, fields added since with
    their 0.1.0 value, never hashed): a new setting cannot change old manifests' hashes by accident."""
    from tokentrim_cli.batch import manifest as M
    from tokentrim_cli.config.settings import Config

    lists = [set(M.HASH_FIELDS_V1), set(M.HASH_FIELDS_ADDED), set(M.UNHASHED_FIELDS)]
    assert sum(len(s) for s in lists) == len(set().union(*lists))  # no field in two lists
    assert set().union(*lists) == set(_leaf_paths(Config))
