"""Transactional outputs (``output/files.py``): what a run leaves behind when the disk fills, when it is killed,
interrupted or raced, and when its output exists already; and ``evaluate`` reading the prompt back."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_cli import ENV, run_main
import zygote
from tokentrim_cli.output.video import probe

NO_SPACE = " free); free space or choose another --output"


def generate(capsys, out, *extra, seconds="1", seed="3"):
    return run_main(capsys, "generate", "--prompt", "a red circle", "--seconds", seconds, "--seed", seed,
                    "--output", str(out), *extra)


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def wait_for_blocks(side: Path, n: int, proc, timeout=90) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            data = json.loads(side.read_text())
            if len(data["blocks"]) >= n:
                return data
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{side} never had {n} blocks")


def long_run(out: Path, *extra):
    return zygote.popen([sys.executable, "-m", "tokentrim_cli", "generate", "--prompt", "a long walk",
                         "--seconds", "600", "--seed", "1", "--output", str(out), *extra],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def test_full_disk_in_the_sidecar_write(tmp_path, capsys, monkeypatch):
    """ENOSPC while the sidecar is rewritten after the third block: exit 1 with one line naming the sidecar and
    the free space, no traceback, no temporary file, the blocks written so far in a playable partial video."""
    real = Path.write_text
    calls = []

    def write_text(self, data, *a, **kw):  # the 4th sidecar write (after block 3) finds the disk full
        if self.name.startswith(".x.partial.json."):
            calls.append(self.name)
            if len(calls) == 4:
                real(self, data[:100], *a, **kw)
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data, *a, **kw)

    monkeypatch.setattr(Path, "write_text", write_text)
    out = tmp_path / "x.mp4"
    code, _, err = generate(capsys, out, seconds="2.5")
    last = err.strip().splitlines()[-1]
    assert code == 1 and "Traceback" not in err, err
    assert last.startswith(f"tokentrim: failed: no space left on device writing {tmp_path}/x.partial.json (")
    assert last.endswith(NO_SPACE), last
    assert files(tmp_path) == {"x.partial.mp4", "x.partial.json", "x.state"}  # resumable after block 1
    data = json.loads((tmp_path / "x.partial.json").read_text())
    assert data["status"] == "failed" and data["error"] == last[len("tokentrim: failed: "):]
    assert data["video"] == str(tmp_path / "x.partial.mp4")
    assert probe(tmp_path / "x.partial.mp4")["frames"] == data["frames_written"] == 33


def test_full_disk_in_the_final_copy_keeps_the_finished_pair(tmp_path, capsys, monkeypatch):
    """A rerun (--overwrite) whose final stream copy hits ENOSPC fails (exit 1) instead of replacing the
    finished pair: NAME.mp4 and NAME.json stay as they were; the new frames are kept as NAME.partial.mp4 (the
    temporary file as it is: it plays) and NAME.partial.json says what happened."""
    from tokentrim_cli.output.video import Mp4Writer

    out = tmp_path / "x.mp4"
    assert generate(capsys, out)[0] == 0
    before = {n: (tmp_path / n).read_bytes() for n in ("x.mp4", "x.json")}

    def publish(self, comment, target):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(Mp4Writer, "publish", publish)
    code, _, err = generate(capsys, out, "--overwrite", seed="4")
    last = err.strip().splitlines()[-1]
    assert code == 1 and last.startswith(f"tokentrim: failed: no space left on device writing {out} ("), err
    assert last.endswith(NO_SPACE)
    assert files(tmp_path) == {"x.mp4", "x.json", "x.partial.mp4", "x.partial.json"}
    assert {n: (tmp_path / n).read_bytes() for n in ("x.mp4", "x.json")} == before
    data = json.loads((tmp_path / "x.partial.json").read_text())
    assert data["status"] == "failed" and data["seed"] == 4 and data["video"] == str(tmp_path / "x.partial.mp4")
    assert probe(tmp_path / "x.partial.mp4")["frames"] == data["frames_written"] == 16


def _tmpfs_works() -> bool:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return r.returncode == 0


@pytest.mark.skipif(not _tmpfs_works(), reason="cannot mount a tmpfs here (unshare -rm + mount not permitted)")
def test_a_real_full_tmpfs(tmp_path):
    """A 10 s video into a 64 KiB tmpfs (in a private mount namespace): one line, exit 1, what plays is kept."""
    copy = tmp_path / "copy"
    script = (f"mount -t tmpfs -o size=64k tmpfs /mnt && {sys.executable} -m tokentrim_cli generate "
              f"--prompt 'a red circle' --seconds 10 --seed 1 --output /mnt/x.mp4; echo $? > /mnt/rc; "
              f"mkdir -p {copy} && cp -a /mnt/. {copy}/")
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=ENV, timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert (copy / "rc").read_text().strip() == "1"
    assert last.startswith("tokentrim: failed: no space left on device writing /mnt/x") and last.endswith(NO_SPACE)
    assert files(copy) - {"rc"} <= {"x.partial.mp4", "x.partial.json", "x.state"} and "x.partial.json" in files(copy)
    data = json.loads((copy / "x.partial.json").read_text())
    assert data["status"] == "failed" and data["error"] == last[len("tokentrim: failed: "):]
    if data["video"]:  # kept only when it plays
        assert probe(copy / "x.partial.mp4")["frames"] == data["frames_written"] > 0
    else:
        assert not (copy / "x.partial.mp4").exists()


def test_unwritable_output_folder_is_a_usage_error(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, _, err = generate(capsys, ro / "x.mp4")
    finally:
        ro.chmod(0o700)
    assert code == 2 and len(err.strip().splitlines()) == 1 and f"permission denied writing {ro}" in err, err


def test_unwritable_output_is_one_line_before_loading(tmp_path, capsys, monkeypatch):
    """The first sidecar write failing (read-only filesystem) stops the run before any model loads: exit 2."""
    import tokentrim_cli.config.loading as loading
    from tokentrim_cli.output.sidecar import Sidecar

    def stage(self):
        raise OSError(errno.EROFS, "Read-only file system", str(self.path))

    monkeypatch.setattr(Sidecar, "stage", stage)
    monkeypatch.setattr(loading, "components_loader", lambda *a: lambda: (_ for _ in ()).throw(AssertionError("loaded")))
    code, _, err = generate(capsys, tmp_path / "x.mp4")
    assert code == 2 and err.strip().splitlines() == [
        f"tokentrim: error: read-only file system writing {tmp_path}/x.partial.json; choose another --output"]
    assert files(tmp_path) == set()


def test_sigkill_then_rerun_cleans_up(tmp_path, capsys):
    out = tmp_path / "long.mp4"
    proc = long_run(out)
    wait_for_blocks(tmp_path / "long.partial.json", 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    left = files(tmp_path)
    assert f".long.{proc.pid}.tmp.mp4" in left and "long.partial.json" in left
    assert json.loads((tmp_path / "long.partial.json").read_text())["status"] == "running"

    code, _, err = run_main(capsys, "generate", "--prompt", "a long walk", "--seconds", "0.5", "--seed", "2",
                            "--output", str(out))
    assert code == 0, err
    note = [line for line in err.splitlines() if "killed run" in line]
    assert len(note) == 1 and f"PID {proc.pid}" in note[0] and "long.partial.json said running" in note[0], err
    assert files(tmp_path) == {"long.mp4", "long.json"}
    data = json.loads((tmp_path / "long.json").read_text())
    assert data["status"] == "ok" and data["seed"] == 2 and data["video"] == str(out)
    assert probe(out)["frames"] == data["frames_written"] == 8


def test_interrupted_rerun_keeps_the_finished_pair(tmp_path, capsys, monkeypatch):
    """A rerun over a finished output, interrupted: NAME.json still describes the finished run (and NAME.mp4 is
    the same file); the interrupted run is NAME.partial.mp4 + NAME.partial.json."""
    import tokentrim_cli.run.video_run as job
    from tokentrim_cli.output.video import Mp4Writer

    out = tmp_path / "x.mp4"
    assert generate(capsys, out)[0] == 0
    before = {n: (tmp_path / n).read_bytes() for n in ("x.mp4", "x.json")}

    class CtrlC(Mp4Writer):
        def write(self, frames):
            super().write(frames)
            if self.frames >= 21:
                os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(job, "Mp4Writer", CtrlC)
    code, _, err = generate(capsys, out, "--overwrite", seconds="5", seed="9")
    assert code == 130, err
    assert {n: (tmp_path / n).read_bytes() for n in ("x.mp4", "x.json")} == before
    assert json.loads(before["x.json"])["status"] == "ok"
    assert files(tmp_path) == {"x.mp4", "x.json", "x.partial.mp4", "x.partial.json", "x.state"}
    data = json.loads((tmp_path / "x.partial.json").read_text())
    assert data["status"] == "interrupted" and data["seed"] == 9
    assert probe(tmp_path / "x.partial.mp4")["frames"] == data["frames_written"] >= 21

    monkeypatch.setattr(job, "Mp4Writer", Mp4Writer)  # a successful run then removes the partial pair
    assert generate(capsys, out, "--overwrite", seed="5")[0] == 0
    assert files(tmp_path) == {"x.mp4", "x.json"} and json.loads((tmp_path / "x.json").read_text())["seed"] == 5


def test_existing_output_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "x.mp4"
    assert generate(capsys, out)[0] == 0
    before = {n: (tmp_path / n).read_bytes() for n in ("x.mp4", "x.json")}
    code, _, err = generate(capsys, out, seed="4")
    assert code == 2 and err.strip().splitlines() == [
        f"tokentrim: error: {out} exists; pass --overwrite to replace it or choose another --output"]
    assert {n: (tmp_path / n).read_bytes() for n in ("x.mp4", "x.json")} == before and files(tmp_path) == set(before)
    assert generate(capsys, out, "--overwrite", seed="4")[0] == 0
    assert json.loads((tmp_path / "x.json").read_text())["seed"] == 4 == json.loads(probe(out)["comment"])["seed"]
    assert files(tmp_path) == {"x.mp4", "x.json"}


def test_batch_refuses_existing_outputs_up_front(tmp_path, capsys, monkeypatch):
    """Without --overwrite a batch that would regenerate an existing video stops before anything loads (exit 2,
    nothing written); --resume skips finished items; --overwrite regenerates."""
    from tokentrim_cli.batch.run import BatchRun

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red kite\na paper boat\n")
    out = tmp_path / "out"
    args = ["batch", str(prompts), "--out-dir", str(out), "--seconds", "0.5"]
    assert run_main(capsys, *args)[0] == 0
    manifest = (out / "manifest.jsonl").read_text()
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    monkeypatch.setattr(BatchRun, "_run_item", lambda *a: (_ for _ in ()).throw(AssertionError("ran an item")))
    code, _, err = run_main(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"tokentrim: error: 2 outputs exist in {out}: "), err
    assert "--overwrite" in lines[0] and "--resume" in lines[0]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    assert (out / "manifest.jsonl").read_text() == manifest
    monkeypatch.undo()
    code, _, err = run_main(capsys, *args, "--resume")
    assert code == 0 and "0 ok, 0 failed, 2 skipped" in err
    code, _, err = run_main(capsys, *args, "--overwrite")
    assert code == 0 and "2 ok, 0 failed" in err and len((out / "manifest.jsonl").read_text().splitlines()) == 4


def test_evaluate_reads_a_long_prompt_back(tmp_path, capsys, monkeypatch):
    """A default-named video whose JSON comment is far over 255 characters: the prompt comes back whole from the
    metadata; from the sidecar when the video has none; a warning when neither has one."""
    monkeypatch.chdir(tmp_path)
    prompt = "a red circle bouncing on a dark blue background, " + ", ".join(f"detail {k}" for k in range(40))
    assert len(prompt) > 300
    code, out, err = run_main(capsys, "generate", "--prompt", prompt, "--seconds", "0.5", "--seed", "7", "-q")
    assert code == 0, err
    video = Path(out.strip())
    assert video.parent.name == "outputs" and len(probe(video)["comment"]) > 400
    code, out, err = run_main(capsys, "evaluate", str(video), "-q")
    result = json.loads(Path(out.strip()).read_text())
    assert code == 0 and result["caption"] == prompt and result["caption_source"] == "metadata" and err == ""

    bare = tmp_path / "outputs" / "bare.mp4"  # the same frames without metadata, next to a sidecar naming it
    subprocess.run([__import__("imageio_ffmpeg").get_ffmpeg_exe(), "-v", "error", "-i",
                    str(video), "-map_metadata", "-1", "-c", "copy", str(bare)], check=True)
    side = json.loads(video.with_suffix(".json").read_text())
    bare.with_suffix(".json").write_text(json.dumps({**side, "video": str(bare)}))
    code, out, err = run_main(capsys, "evaluate", str(bare), "-q")
    result = json.loads(Path(out.strip()).read_text())
    assert result["caption"] == prompt and result["caption_source"] == f"sidecar {bare.with_suffix('.json')}"

    bare.with_suffix(".json").unlink()
    code, out, err = run_main(capsys, "evaluate", str(bare), "-q")
    result = json.loads(Path(out.strip()).read_text())
    assert code == 0 and result["caption"] is None and result["caption_source"] is None
    assert len(err.strip().splitlines()) == 1 and err.startswith("tokentrim: warning: no prompt"), err
