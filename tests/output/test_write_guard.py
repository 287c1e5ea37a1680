"""Nothing of the user's is lost (issue 33, the paths): every path a run, a batch item or ``evaluate`` writes is
checked before anything loads (``output/write_guard.py``); a full disk, a signal and a second batch on one folder end
with one line and a record that matches what is on disk."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_cli import run_main
from tokentrim_cli.output.video import probe

NOT_LOADED = AssertionError("a model was loaded")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A finished 1 s video with its sidecar (made once for the module)."""
    from tokentrim_cli.cli import main

    out = tmp_path_factory.mktemp("clip") / "v.mp4"
    with pytest.raises(SystemExit) as exc:
        main(["generate", "-p", "a red circle", "-s", "1", "--seed", "3", "-q", "-o", str(out)])
    assert exc.value.code == 0
    return out


@pytest.fixture
def no_loading(monkeypatch):
    """Any model load fails the test: refusals must come before it."""
    import tokentrim_cli.config.loading as loading

    monkeypatch.setattr(loading, "components_loader", lambda *a: lambda: (_ for _ in ()).throw(NOT_LOADED))


def snapshot(folder: Path) -> dict:
    return {p.name: (p.read_bytes() if p.is_file() else "folder") for p in sorted(folder.iterdir())}


def one_error(code, err, expected_code=2) -> str:
    lines = err.strip().splitlines()
    assert code == expected_code and len(lines) == 1 and lines[0].startswith("tokentrim: error: ") \
        and "Traceback" not in err, (code, err)
    return lines[0]


# ------------------------------------------------------------------------------------------------ evaluate (1, 10)
def test_evaluate_never_writes_over_the_video_or_its_sidecar(clip, capsys):
    """``evaluate v.mp4 -o v.mp4`` turned the video into JSON, ``-o v.json`` replaced its sidecar (exit 0 both)."""
    before = snapshot(clip.parent)
    one_error(*run_main(capsys, "evaluate", str(clip), "-o", str(clip))[::2])
    for extra in ([], ["--overwrite"]):  # --overwrite cannot make the sidecar a metrics file
        line = one_error(*run_main(capsys, "evaluate", str(clip), "-o", str(clip.with_suffix(".json")), *extra)[::2])
        assert "sidecar" in line and "--overwrite" not in line
    assert snapshot(clip.parent) == before


def test_evaluate_replaces_only_its_own_files(clip, capsys, tmp_path):
    """``-o photo.json`` replaced an unrelated photo.png with the plot; now refused unless --overwrite. A second
    evaluation replaces the first one's JSON and plot without being asked."""
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG my holiday")
    line = one_error(*run_main(capsys, "evaluate", str(clip), "-o", str(tmp_path / "photo.json"))[::2])
    assert str(photo) in line and "--overwrite" in line
    assert photo.read_bytes() == b"\x89PNG my holiday" and not (tmp_path / "photo.json").exists()
    mine = tmp_path / "m.json"
    for _ in range(2):
        code, out, err = run_main(capsys, "evaluate", str(clip), "-o", str(mine), "-q")
        assert code == 0 and out.strip() == str(mine), err
    assert json.loads(mine.read_text())["kind"] == "metrics"
    code, _, err = run_main(capsys, "evaluate", str(clip), "-o", str(tmp_path / "photo.json"), "-q", "--overwrite")
    assert code == 0 and photo.read_bytes()[:4] == b"\x89PNG" and len(photo.read_bytes()) > 1000, err


def test_evaluate_unwritable_outputs_are_one_line(clip, capsys, tmp_path, monkeypatch):
    """/dev/full, a folder in the way, a full disk, a read-only filesystem: one line, no traceback, nothing left;
    a missing folder is made."""
    one_error(*run_main(capsys, "evaluate", str(clip), "-o", "/dev/full")[::2])
    (tmp_path / "m.json").mkdir()
    line = one_error(*run_main(capsys, "evaluate", str(clip), "-o", str(tmp_path / "m.json"), "--overwrite")[::2])
    assert "is a folder" in line and "--overwrite" not in line
    code, out, err = run_main(capsys, "evaluate", str(clip), "-o", str(tmp_path / "new" / "sub" / "m.json"), "-q")
    assert code == 0 and (tmp_path / "new" / "sub" / "m.png").is_file(), err
    real = Path.write_text
    for number, text in ((errno.ENOSPC, "no space left on device"), (errno.EROFS, "read-only file system")):
        def write_text(self, *a, _n=number, **kw):
            if self.parent == tmp_path / "full":
                raise OSError(_n, os.strerror(_n), str(self))
            return real(self, *a, **kw)

        monkeypatch.setattr(Path, "write_text", write_text)
        (tmp_path / "full").mkdir(exist_ok=True)
        line = one_error(*run_main(capsys, "evaluate", str(clip), "-o", str(tmp_path / "full" / "m.json"))[::2],
                         expected_code=1)
        assert text in line and "choose another --output" in line
        assert list((tmp_path / "full").iterdir()) == []


# ------------------------------------------------------------------------------------------------ generate (3, 4, 11)
def test_a_state_folder_tokentrim_did_not_make_is_never_removed(tmp_path, capsys, no_loading):
    """A plain ``generate -o w.mp4`` deleted the user's w.state/ recursively without a word."""
    folder = tmp_path / "w.state"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):
        line = one_error(*run_main(capsys, "generate", "-p", "a red circle", "-s", "1", "--seed", "1",
                                   "-o", str(tmp_path / "w.mp4"), *extra)[::2])
        assert str(folder) in line and "--overwrite" not in line
    assert (folder / "notes.txt").read_text() == "mine" and snapshot(tmp_path).keys() == {"w.state"}


def test_the_sidecar_never_replaces_a_file_the_user_owns(tmp_path, capsys, no_loading):
    """``--timeline script.json -o script.mp4`` wrote the sidecar over the timeline; any NAME.json was replaced."""
    script = tmp_path / "script.json"
    script.write_text('[{"start": 0, "prompt": "a red circle"}]')
    for extra in ([], ["--overwrite"]):
        line = one_error(*run_main(capsys, "generate", "--timeline", str(script), "-s", "1", "--seed", "1",
                                   "-o", str(tmp_path / "script.mp4"), *extra)[::2])
        assert "--timeline" in line and "--overwrite" not in line
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    line = one_error(*run_main(capsys, "generate", "-p", "a red circle", "-s", "1", "--seed", "1",
                               "-o", str(tmp_path / "notes.mp4"))[::2])
    assert str(notes) in line and "--overwrite" in line
    assert snapshot(tmp_path) == {"notes.json": b'{"mine": true}',
                                  "script.json": b'[{"start": 0, "prompt": "a red circle"}]'}


def test_an_output_that_is_a_folder_is_refused_before_loading(tmp_path, capsys, no_loading):
    """``-o d.mp4`` (a folder) said to pass --overwrite, and with it generated the whole video, then failed."""
    (tmp_path / "d.mp4").mkdir()
    for extra in ([], ["--overwrite"]):
        line = one_error(*run_main(capsys, "generate", "-p", "a red circle", "-s", "1", "--seed", "1",
                                   "-o", str(tmp_path / "d.mp4"), *extra)[::2])
        assert "is a folder" in line and "--overwrite" not in line
    (tmp_path / "f").write_text("a file")  # a folder that cannot be made
    line = one_error(*run_main(capsys, "generate", "-p", "a red circle", "-s", "1", "--seed", "1",
                               "-o", str(tmp_path / "f" / "x.mp4"))[::2])
    assert "is a file" in line


# ------------------------------------------------------------------------------------------------ batch (5, 19)
def test_a_batch_item_never_replaces_the_prompts_file(tmp_path, capsys, no_loading):
    """An item named like its prompts file (``"output": "jobs"`` in jobs.json) replaced it with a sidecar."""
    jobs = tmp_path / "jobs.json"
    text = '{"prompt": "a red circle", "seconds": 1, "output": "jobs"}\n'
    jobs.write_text(text)
    for extra in ([], ["--overwrite"]):
        line = one_error(*run_main(capsys, "batch", str(jobs), "-d", str(tmp_path), *extra)[::2])
        assert line.startswith("tokentrim: error: line 1: ") and "prompts file" in line
    assert snapshot(tmp_path) == {"jobs.json": text.encode()}


def test_two_batches_on_one_folder_keep_a_finished_item_finished(tmp_path, capsys, monkeypatch):
    """Batch B checks its outputs, then batch A finishes the same item before B gets to it: B must not record
    ``failed ... exists`` over A's line, and --resume must then skip the item."""
    import tokentrim_cli.batch.run as batch_run

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    args = ["batch", str(prompts), "-d", str(tmp_path / "out"), "-s", "1"]
    real = batch_run.refuse_existing

    def race(*a, **kw):  # B has checked; A runs the whole batch now
        real(*a, **kw)
        monkeypatch.setattr(batch_run, "refuse_existing", real)
        assert run_main(capsys, *args)[0] == 0

    monkeypatch.setattr(batch_run, "refuse_existing", race)
    code, _, err = run_main(capsys, *args)
    assert code == 0 and "0 failed, 1 skipped" in err, err
    lines = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [x["status"] for x in lines] == ["ok"]
    code, _, err = run_main(capsys, *args, "--resume")
    assert code == 0 and "0 ok, 0 failed, 1 skipped" in err, err


# ------------------------------------------------------------------------------------------------ full disk (14)
def test_a_full_disk_stops_generation_with_one_line_and_a_true_record(tmp_path, capsys, monkeypatch):
    """An encoder that cannot write (a full disk) but goes on reading the frames it then drops: the run went on
    for about 50 blocks. It must stop at the encoder's first error, say one failure line and no warnings, and
    leave a record that is not ``running`` and lists only the blocks in the partial video (none here)."""
    import tokentrim_cli.run.video_run as job
    import tokentrim_cli.output.video as video

    real_popen = subprocess.Popen
    fake = ("import sys, time; sys.stderr.write('[mp4] Error writing: No space left on device\\n'); "
            "sys.stderr.flush(); sys.stdin.buffer.read(); sys.exit(1)")

    def popen(cmd, *a, **kw):  # the encoder of the streaming file
        if cmd[-1].endswith(".tmp.mp4"):
            cmd = [sys.executable, "-c", fake]
        return real_popen(cmd, *a, **kw)

    generated = []
    real_blocks = job.generate_blocks

    def counting(*a, **kw):
        for block in real_blocks(*a, **kw):
            generated.append(block.index)
            yield block

    monkeypatch.setattr(video.subprocess, "Popen", popen)
    monkeypatch.setattr(job, "generate_blocks", counting)
    out = tmp_path / "x.mp4"
    code, _, err = run_main(capsys, "generate", "-p", "a red circle", "-s", "20", "--seed", "1", "-o", str(out))
    lines = [x for x in err.strip().splitlines() if not x.startswith(("block ", "tokentrim: preset "))]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("tokentrim: failed: no space left on device"), err
    assert len(generated) <= 6, f"{len(generated)} of 27 blocks generated after the encoder failed"
    data = json.loads((tmp_path / "x.partial.json").read_text())
    assert data["status"] == "failed" and data["error"] == lines[0][len("tokentrim: failed: "):]
    kept = probe(tmp_path / "x.partial.mp4")["frames"] if data["video"] else 0
    assert all(b["frames_written"] <= kept for b in data["blocks"]), (kept, data["blocks"])


def test_a_record_that_does_not_fit_a_full_disk_is_shrunk_in_place(tmp_path):
    """The last resort on a full disk rewrites the record within the file's blocks: smaller forms if the whole
    one does not fit, never ``running`` left behind when the outcome fits."""
    from tokentrim_cli.output.sidecar import Sidecar

    side = Sidecar(tmp_path / "x.partial.json", prompt="a red circle", seed=1, config={"big": "x" * 3000})
    for k in range(200):
        side.data["blocks"].append({"index": k, "frames_written": 12 * k, "severity": 0.5})
    side.data.update(status="failed", error="no space left on device", frames_written=24, video=None)
    assert side.write_in_place()
    data = json.loads(side.path.read_text())
    assert data["status"] == "failed" and data["error"] == "no space left on device" and data["frames_written"] == 24


# ------------------------------------------------------------------------------------------------ signals (15)
# test_cli.py::test_interrupt_leaves_playable_partial_video: SIGINT, SIGTERM and SIGHUP each end with one line


# ------------------------------------------------------------------------------------------------ docs (25)
def test_help_texts(capsys):
    """--timeline's help names every prefix field (blend too); download's argument shows no default."""
    code, out, _ = run_main(capsys, "generate", "--help")
    text = " ".join(out.split())
    assert code == 0 and "blend" in text[text.index("--timeline"):text.index("--seconds")]
    code, out, _ = run_main(capsys, "download", "--help")
    assert code == 0 and "[required]" in out and "default" not in out.lower()


# ------------------------------------------------------------------------------------------------ hostile trial
def test_links_and_batch_files_are_never_written_through(tmp_path, capsys, no_loading):
    """A state folder or lock that is a link to the user's things, a prompts file named like the manifest, the
    --extend input as the output's partial video: refused before loading, --overwrite or not, nothing touched."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "f.txt").write_text("mine")
    (tmp_path / "i.state").symlink_to(tmp_path / "mine")
    (tmp_path / ".l.lock").symlink_to(tmp_path / "mine" / "f.txt")
    for name in ("i", "l"):
        line = one_error(*run_main(capsys, "generate", "-p", "a red circle", "-s", "1", "--seed", "1",
                                   "-o", str(tmp_path / f"{name}.mp4"), "--overwrite")[::2])
        assert "is a link" in line
    assert (tmp_path / "mine" / "f.txt").read_text() == "mine" and os.listdir(tmp_path / "mine") == ["f.txt"]
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "manifest.jsonl").write_text('{"prompt": "a red circle", "seconds": 1}\n')
    line = one_error(*run_main(capsys, "batch", str(jobs / "manifest.jsonl"), "-d", str(jobs))[::2])
    assert "manifest" in line and "prompts file" in line
    assert snapshot(jobs) == {"manifest.jsonl": b'{"prompt": "a red circle", "seconds": 1}\n'}


def test_a_sidecar_link_is_replaced_not_written_through(clip, tmp_path, capsys):
    """``evaluate -o g.json --overwrite`` where g.json links to the user's file: the link is replaced, the file
    kept."""
    mine = tmp_path / "mine.json"
    mine.write_text('{"mine": 1}')
    (tmp_path / "g.json").symlink_to(mine)
    args = ["evaluate", str(clip), "-o", str(tmp_path / "g.json"), "-q"]
    assert "--overwrite" in one_error(*run_main(capsys, *args)[::2])
    code, _, err = run_main(capsys, *args, "--overwrite")
    assert code == 0 and mine.read_text() == '{"mine": 1}' and not (tmp_path / "g.json").is_symlink(), err
