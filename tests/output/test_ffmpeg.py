"""The ffmpeg the commands run is checked before anything loads: none, a broken one or one older than 5 (4.2's stream
copy writes MP4s one frame short) is refused in one line, exit 2, nothing written."""

import pytest

from tokentrim_cli.errors import ConfigError
from tokentrim_cli.output.ffmpeg import ffmpeg_exe, major_version

from test_cli import run_main


def fake_ffmpeg(folder, first_line: str, code: int = 0):
    """An executable that answers ``-version`` with ``first_line`` and exits ``code``."""
    exe = folder / "ffmpeg"
    exe.write_text(f"#!/bin/sh\necho '{first_line}'\nexit {code}\n")
    exe.chmod(0o755)
    return exe


@pytest.mark.parametrize("line, major", [
    ("ffmpeg version 4.2.2-static https://johnvansickle.com/ffmpeg/  Copyright (c) 2000-2019", 4),
    ("ffmpeg version n9.0.2-17-g2a571b6068-20260930 Copyright (c) 2000-2026 the FFmpeg developers", 9),
    ("ffmpeg version 5.1.9-0+deb12u1 Copyright (c) 2000-2026 the FFmpeg developers", 5),
    ("ffmpeg version N-109876-g1234abcd Copyright (c) 2000-2023", None),  # a build from git: not judged
])
def test_the_major_version_is_read_from_every_kind_of_build(line, major):
    assert major_version(line) == major


def test_an_old_missing_or_broken_ffmpeg_is_refused_with_what_to_do(tmp_path, monkeypatch):
    cases = {"old": ("ffmpeg version 4.2.2-static https://johnvansickle.com/ffmpeg/", 0, "4.2.2-static at "),
             "broken": ("Segmentation fault", 139, "is not a working ffmpeg"),
             "git": ("ffmpeg version N-109876-g1234abcd Copyright", 0, None),
             "new": ("ffmpeg version 7.0.2-static https://johnvansickle.com/ffmpeg/", 0, None)}
    for name, (line, code, problem) in cases.items():
        (tmp_path / name).mkdir()
        exe = fake_ffmpeg(tmp_path / name, line, code)
        monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(exe))
        if problem is None:
            assert ffmpeg_exe() == str(exe)
            continue
        with pytest.raises(ConfigError, match=problem) as err:
            ffmpeg_exe()
        assert "(from IMAGEIO_FFMPEG_EXE)" in str(err.value) and "unset IMAGEIO_FFMPEG_EXE" in str(err.value)
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="does not run"):
        ffmpeg_exe()


@pytest.mark.parametrize("command", ["generate", "batch"])
def test_generate_and_batch_stop_before_anything_loads(tmp_path, monkeypatch, capsys, command):
    """Before the check, a missing ffmpeg was a traceback after the model had loaded, with a partial sidecar left."""
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(fake_ffmpeg(tmp_path, "ffmpeg version 4.2.2-static x")))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_text("a red circle\n")
    args = (["generate", "--prompt", "a red circle", "--seconds", "1", "--output", "clip.mp4"] if command == "generate"
            else ["batch", "prompts.txt", "--out-dir", "out"])
    code, _, err = run_main(capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "is too old" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ffmpeg", "prompts.txt"]
