"""Untrusted input is checked before anything loads, bounded, and refused in one line that never echoes it
unbounded: start images of any mode and size, --extend videos, timelines, prompts files, preset values."""

import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from tokentrim_cli.errors import ConfigError
from tokentrim_cli.run.image import load_image

from test_cli import run_main


def png16(path, arr, size=None):
    """Write a 16-bit PNG of uint16 ``arr`` (H, W) grey or (H, W, 3) RGB; ``size``: claim this (w, h) in the
    header instead (the pixel data is then wrong: only the header is read before the size check)."""
    h, w = arr.shape[:2]
    colour = 0 if arr.ndim == 2 else 2
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    w, h = size or (w, h)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


# ------------------------------------------------------------------------------------------ --image
def test_a_16_bit_grey_png_keeps_its_brightness(tmp_path):
    """PIL's own RGB conversion clips 16-bit grey to white (issue 33 #8)."""
    pic = png16(tmp_path / "g.png", np.full((40, 60), 127 * 257, np.uint16))
    assert abs(load_image(pic, 64, 96).pixels.mean() - 127) < 1


def test_a_16_bit_rgb_png_keeps_its_colours(tmp_path):
    pic = png16(tmp_path / "c.png", np.dstack([np.full((40, 60), v * 257, np.uint16) for v in (200, 100, 50)]))
    assert np.abs(load_image(pic, 64, 96).pixels.mean((0, 1)) - [200, 100, 50]).max() < 1


@pytest.mark.parametrize("mode", ["P", "LA", "RGBA"])
def test_transparency_is_composited_over_white(tmp_path, mode):
    """A transparent half shows white, whatever colour its hidden pixels hold; the opaque half its own."""
    rgba = np.zeros((64, 96, 4), np.uint8)
    rgba[:, :48] = (0, 0, 0, 255)  # opaque black left half
    rgba[:, 48:] = (0, 0, 0, 0)  # transparent right half (hidden black)
    img = Image.fromarray(rgba, "RGBA")
    if mode == "LA":
        img = img.convert("LA")
    elif mode == "P":
        img = img.convert("P")  # one palette entry is black; mark it transparent only where alpha was 0
        pal = Image.new("P", (96, 64))
        pal.putpalette([0, 0, 0, 1, 1, 1] + [0] * 762)
        pal.paste(1, (48, 0, 96, 64))
        pal.info["transparency"] = 1
        img = pal
    img.save(tmp_path / "t.png", **({"transparency": 1} if mode == "P" else {}))
    px = load_image(tmp_path / "t.png", 64, 96).pixels
    assert px[:, :40].max() < 5 and px[:, 56:].min() > 250


def test_a_thin_strip_is_cropped_before_it_is_resized(tmp_path, monkeypatch):
    """A 1x5000 picture must not be resized to 256x1,280,000 first (issue 33 #23): no resize asks for more
    pixels than the frame has."""
    Image.fromarray(np.full((5000, 1, 3), 90, np.uint8)).save(tmp_path / "strip.png")
    sizes = []
    original = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda self, size, *a, **k: sizes.append(size) or original(self, size, *a, **k))
    im = load_image(tmp_path / "strip.png", 256, 256)
    assert im.pixels.shape == (256, 256, 3) and abs(im.pixels.mean() - 90) < 1
    assert sizes and max(w * h for w, h in sizes) <= 256 * 256


def test_a_huge_image_is_refused_by_us_in_one_line_before_decoding(tmp_path):
    """Over the stated bound (100 megapixels): our one line, and never PIL's two-line warning (issue 33 #23)."""
    big = png16(tmp_path / "big.png", np.zeros((2, 2), np.uint16), size=(10001, 10000))
    over_pil = png16(tmp_path / "pil.png", np.zeros((2, 2), np.uint16), size=(9500, 9500))  # PIL warns from 89 MP
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ConfigError, match="10001x10000, over 100 megapixels"):
            load_image(big, 64, 96)
        with pytest.raises(ConfigError, match="not a readable image"):  # its data is 2x2: read, refused
            load_image(over_pil, 64, 96)
    assert not [w for w in seen if "DecompressionBomb" in type(w.message).__name__ or "decompression" in str(w.message)]


# ------------------------------------------------------------------------------------------ timelines, prompts
def test_a_yaml_alias_bomb_is_refused_fast_and_not_echoed(tmp_path):
    """700 bytes of nested aliases expand to gigabytes: refused at the first alias, in one short line (#16)."""
    from tokentrim_cli.run.timeline import load_file

    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as exc:
        load_file(tmp_path / "bomb.yaml")
    assert time.perf_counter() - t0 < 2 and "alias" in str(exc.value) and len(str(exc.value)) < 300


def test_a_huge_timeline_file_and_a_long_bad_value_are_bounded(tmp_path):
    from tokentrim_cli.run.timeline import load_file

    (tmp_path / "big.yaml").write_text("- {start: 0, prompt: a}\n" + "#" * (5 * 2**20) + "\n")
    with pytest.raises(ConfigError, match="MiB"):
        load_file(tmp_path / "big.yaml")
    (tmp_path / "long.yaml").write_text(f"- {{start: 0, prompt: a, switch: {'x' * 100000}}}\n")
    with pytest.raises(ConfigError) as exc:
        load_file(tmp_path / "long.yaml")
    assert len(str(exc.value)) < 400


@pytest.mark.parametrize("prefix", ["-1s", "nans", "1e999s", "1e-9s", "1S CUT"])
def test_an_odd_start_time_is_named_not_repeated_in_the_hint(prefix):
    """The hint was "e.g. --prompt '20s: -1s: ...'" (#22)."""
    from tokentrim_cli.run.timeline import parse_prompts

    with pytest.raises(ConfigError) as exc:
        parse_prompts(["a red kite", f"{prefix}: a blue ball"])
    msg = str(exc.value)
    assert "is not a start time" in msg and f"20s: {prefix}" not in msg and "lower case" in msg


def test_a_blend_longer_than_the_video_is_refused():
    """blend=1000 on a 16-block clip: the new prompt would never pass 1.4 % weight (#21). Refused, not warned: it is
    a slip of units (blocks, not frames) and the run would be wasted; a blend up to the blocks left is allowed."""
    from tokentrim_cli.run.timeline import Entry, snap

    with pytest.raises(ConfigError, match="blend=1000 is longer than the 14 block"):
        snap([Entry(0, "a"), Entry(1, "b", blend=1000)], _plan(12, 16))
    assert snap([Entry(0, "a"), Entry(1, "b", blend=14)], _plan(12, 16))[0].blend == 14


def test_control_characters_in_a_prompt_are_escaped_on_the_terminal(tmp_path, capsys):
    rc, _, err = run_main(capsys, "generate", "-p", "a", "-p", "x\x1b[2J\x07 ball", "--seconds", "1")
    assert rc == 2 and "\x1b" not in err and "\x07" not in err and "\\x1b" in err


def test_a_pretty_printed_json_array_of_prompts_is_read_as_items(tmp_path):
    """Not one item per line ('[', '{"prompt": ...},') (#20); plain strings are prompts; lines are where each
    element starts; a broken array is one line."""
    from tokentrim_cli.batch.prompts import read_prompts

    path = tmp_path / "jobs.txt"
    path.write_text('[\n  {"prompt": "a red kite", "seed": 3},\n  {"prompt": "a blue ball"},\n  "a green square"\n]\n')
    items = read_prompts(path)
    assert [(i.line, i.prompt, i.seed) for i in items] == [(2, "a red kite", 3), (3, "a blue ball", None),
                                                           (4, "a green square", None)]
    path.write_text('[\n  {"prompt": "a red kite"}\n  {"prompt": "a blue ball"}\n]\n')
    with pytest.raises(ConfigError, match="not valid JSON .* line 3"):
        read_prompts(path)
    path.write_text("[]\n")  # an empty array is no prompts, not the prompt "[]" (found in the hostile trial)
    with pytest.raises(ConfigError, match="no prompts found"):
        read_prompts(path)
    path.write_text("[intro] a cat\n[outro] a dog\n")  # text that merely starts with a bracket stays text
    assert [i.prompt for i in read_prompts(path)] == ["[intro] a cat", "[outro] a dog"]


# ------------------------------------------------------------------------------------------ sizes
def test_a_huge_frame_size_is_refused_before_anything_loads(capsys):
    """100000 x 100000 passed validation and died after loading, twice (#13): one line, exit 2."""
    rc, _, err = run_main(capsys, "generate", "-p", "a red kite", "--seconds", "1", "--set", "video.width=100000",
                          "--set", "video.height=100000")
    assert rc == 2 and "video.height" in err and "4096" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------ time to error
@pytest.mark.parametrize("args", [
    ["-p", "x", "--output", "a.txt"],
    ["-p", "x", "--set", "video.width=100000"],
    ["-p", "x", "--image", "missing.png"],
    ["-p", "x", "--extend", "missing.mp4"],
    ["-p", "x", "-p", "nans: y"],
])
def test_bad_generate_input_is_refused_before_torch_is_imported(tmp_path, args):
    """Errors for bad input took 6-17 s: torch and the engine were imported before the checks (#24)."""
    import subprocess
    import sys

    from test_cli import ENV

    code = ("import sys\nfrom tokentrim_cli.cli import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code, "generate", *args], capture_output=True, text=True,
                          env=ENV, cwd=tmp_path, timeout=120)
    assert done.stdout.split() == ["2", "False"], done.stderr


# ------------------------------------------------------------------------------------------ --extend
def _mp4(path, frames=33):
    """A finished MP4 of the tiny preset's size and rate (random pictures), as Mp4Writer makes it."""
    from tokentrim_cli.output.video import Mp4Writer

    w = Mp4Writer(path, 96, 64, 16, 18, "veryfast")
    rng = np.random.default_rng(0)
    w.write(rng.integers(0, 255, (frames, 64, 96, 3), dtype=np.uint8))
    w.finish()
    w.publish("test", path)
    w.discard()
    return path


@pytest.mark.parametrize("cut", ["tail", "head"])
def test_a_cut_short_extend_input_is_refused_before_loading_in_one_line(tmp_path, capsys, cut):
    """Tail cut: ffmpeg decodes it with exit 0 but an error and one frame short, and the stream copy then lost
    every new frame (#2). Head cut (the first bytes, a file being written): refused up front, the message once,
    and no partial copy of the input left behind (#12)."""
    data = _mp4(tmp_path / "demo.mp4").read_bytes()
    src = tmp_path / "clip.mp4"
    src.write_bytes(data[:-1000] if cut == "tail" else data[: len(data) * 6 // 10])
    out = tmp_path / "out" / "long.mp4"
    out.parent.mkdir()
    rc, _, err = run_main(capsys, "generate", "-p", "a red kite", "--seconds", "1", "--seed", "1", "--extend",
                          str(src), "-o", str(out))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--extend" in err, err
    assert list(out.parent.iterdir()) == []


def test_a_joined_video_with_frames_missing_fails_instead_of_reporting_ok(tmp_path, monkeypatch):
    """The output's frame count is verified after the join: a prefix that loses frames in the stream copy is an
    error (the run keeps its partial), never 'ok' with fewer frames (#2)."""
    from tokentrim_cli.output.video import Mp4Writer

    prefix = _mp4(tmp_path / "prefix.mp4")
    w = Mp4Writer(tmp_path / "out.mp4", 96, 64, 16, 18, "veryfast", prefix, 40)  # claims 7 frames it has not
    w.write(np.zeros((4, 64, 96, 3), np.uint8))
    w.finish()
    with pytest.raises(OSError, match="joined video has 37 frames, not 44"):
        w.publish("test", tmp_path / "out.mp4")
    w.discard()
    assert not (tmp_path / "out.mp4").exists()


def test_a_folder_given_as_preset_is_called_a_folder(tmp_path, capsys):
    (tmp_path / "mypresets").mkdir()
    for ref in (str(tmp_path / "mypresets"), str(tmp_path / "mypresets") + "/"):
        rc, _, err = run_main(capsys, "generate", "-p", "x", "--preset", ref)
        assert rc == 2 and "is a folder" in err and "does not exist" not in err


def _plan(seconds, blocks, block_frames=3, fps=16):
    """A plan of ``blocks`` blocks for a video of ``seconds`` (its other counts do not matter to ``snap``)."""
    from tokentrim_cli.run.plan import Plan

    return Plan(float(seconds), fps, round(seconds * fps), blocks * block_frames, blocks, block_frames)
