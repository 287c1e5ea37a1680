"""The fast decoder (``video.decoder: tiny``, TAEHV's taew2_1) with random weights in the published file's format:
its key names and shapes, the frame count per block, streaming against one-shot decoding, resuming, the command."""

import json

import pytest
import torch

from tokentrim_cli.engine.tiny_decoder import StreamState, TinyDecoder, TinyStreamingDecoder, build_tiny_decoder
from tokentrim_cli.errors import WeightsError


def _conv(key, c_out, c_in, k=3, bias=True):
    return {f"{key}.weight": (c_out, c_in, k, k), **({f"{key}.bias": (c_out,)} if bias else {})}


def _memory(key, c):
    return {**_conv(f"{key}.conv.0", c, 2 * c), **_conv(f"{key}.conv.2", c, c), **_conv(f"{key}.conv.4", c, c)}


def published_shapes() -> dict[str, tuple]:
    """taew2_1's tensors as taehv.py builds them (encoder: time pooling 2, 2, 1; decoder: widths 256/128/64,
    time growth 1, 2, 2), written out here independently of tokentrim's module."""
    enc = {**_conv("encoder.0", 64, 3), **_conv("encoder.17", 16, 64)}
    for stage, (pool, first) in enumerate(((2, 2), (2, 7), (1, 12))):
        enc.update(_conv(f"encoder.{first}.conv", 64, 64 * pool, 1, bias=False))
        enc.update(_conv(f"encoder.{first + 1}", 64, 64, bias=False))
        for i in range(3):
            enc.update(_memory(f"encoder.{first + 2 + i}", 64))
    dec = {**_conv("decoder.1", 256, 16), **_conv("decoder.22", 3, 64)}
    for first, width, grow, nxt in ((3, 256, 1, 128), (9, 128, 2, 64), (15, 64, 2, 64)):
        for i in range(3):
            dec.update(_memory(f"decoder.{first + i}", width))
        dec.update(_conv(f"decoder.{first + 4}.conv", width * grow, width, 1, bias=False))
        dec.update(_conv(f"decoder.{first + 5}", nxt, width, bias=False))
    return {**enc, **dec}


def synthetic_file(path, dtype=torch.float16, seed=0):
    """A taew2_1-format file (encoder and decoder) of random weights; returns its tensors."""
    g = torch.Generator().manual_seed(seed)
    sd = {k: (torch.randn(shape, generator=g) * 0.05).to(dtype) for k, shape in published_shapes().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return sd


def test_the_module_has_the_published_decoder_keys_and_shapes():
    ours = {k: tuple(v.shape) for k, v in TinyDecoder().state_dict().items()}
    assert ours == {k: v for k, v in published_shapes().items() if k.startswith("decoder.")}


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_file_in_the_published_format_loads_its_decoder(tmp_path, suffix):
    sd = synthetic_file(tmp_path / f"taew2_1{suffix}")
    model = build_tiny_decoder(tmp_path / f"taew2_1{suffix}")
    for k, v in model.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, sd[k].float()), k


def test_a_file_that_is_not_a_taehv_decoder_is_one_line(tmp_path):
    from safetensors.torch import save_file

    save_file({"encoder.0.weight": torch.zeros(64, 3, 3, 3)}, str(tmp_path / "enc.safetensors"))
    with pytest.raises(WeightsError, match="no TAEHV decoder"):
        build_tiny_decoder(tmp_path / "enc.safetensors")
    sd = {k: v for k, v in synthetic_file(tmp_path / "x.safetensors").items() if k != "decoder.22.bias"}
    save_file(sd, str(tmp_path / "short.safetensors"))
    with pytest.raises(WeightsError, match="1 missing"):
        build_tiny_decoder(tmp_path / "short.safetensors")


@pytest.fixture(scope="module")
def model():
    return build_tiny_decoder(7)


def test_frames_per_block_and_shape_match_the_vae_path(model, tiny_vae):
    """T latent frames -> 4T - 3 pixel frames (1 for the first latent frame, 4 for each later one) at 8x the
    latent size, block by block as the VAE's streaming decoder gives them."""
    from tokentrim_cli.engine.vae import StreamingDecoder

    latents = torch.randn(1, 16, 9, 4, 6, generator=torch.Generator().manual_seed(1))
    tiny, vae = TinyStreamingDecoder(model), StreamingDecoder(tiny_vae)
    vae.reset()
    for block in latents.split(3, dim=2):
        a, b = tiny.frames(block), vae.frames(block)
        assert a.shape == b.shape and a.dtype == b.dtype
    assert tiny.frames(latents[:, :, :1]).shape == (4, 32, 48, 3)  # past the start: 4 per latent frame
    first = TinyStreamingDecoder(model)
    assert first.frames(latents[:, :, :1]).shape == (1, 32, 48, 3)


def test_streaming_block_by_block_equals_decoding_at_once(model):
    """The memories carried between blocks make a streamed video the one-shot decode's frames, bit for bit (both go
    through the stack one latent frame at a time)."""
    latents = torch.randn(1, 16, 10, 4, 6, generator=torch.Generator().manual_seed(2))
    whole = model.decode(latents, StreamState({}))
    state = StreamState({})
    parts = torch.cat([model.decode(b, state) for b in latents.split([1, 3, 3, 3], dim=2)], dim=2)
    assert whole.shape == (1, 3, 37, 32, 48)
    assert torch.equal(parts, whole)


def test_a_restored_state_goes_on_as_the_uninterrupted_stream(model):
    latents = torch.randn(1, 16, 6, 4, 6, generator=torch.Generator().manual_seed(3))
    one = TinyStreamingDecoder(model)
    one.frames(latents[:, :, :3])
    saved = one.state_dict()
    ahead = one.frames(latents[:, :, 3:])
    other = TinyStreamingDecoder(model)
    other.load_state_dict(saved)
    assert (other.frames(latents[:, :, 3:]) == ahead).all()
    with pytest.raises(WeightsError, match="full VAE decoder"):
        other.load_state_dict({"first": True, "feat_map": None})


def test_generate_with_the_tiny_decoder_writes_the_vae_paths_frame_count(tmp_path):
    from tokentrim_cli.output.video import read_video
    from test_cli import tokentrim

    from tokentrim_cli.output.video import probe

    counts, first = {}, {}
    for decoder in ("vae", "tiny"):
        out = tmp_path / f"{decoder}.mp4"
        r = tokentrim("generate", "-p", "a red circle", "--seconds", "1.5", "--seed", "1", "--output", str(out),
                      "--set", f"video.decoder={decoder}", "--set", "model.tiny_decoder=random:3")
        assert r.returncode == 0, r.stderr
        counts[decoder] = probe(out)["frames"]
        first[decoder] = read_video(out)[0]
        side = json.loads(out.with_suffix(".json").read_text())
        assert side["config"]["video"]["decoder"] == decoder
    assert counts["tiny"] == counts["vae"] == 24
    assert first["tiny"].shape == first["vae"].shape and (first["tiny"] != first["vae"]).any()  # another decoder


def test_the_toy_codec_refuses_the_tiny_decoder():
    from tokentrim_cli.config.presets import load_preset
    from tokentrim_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="video.decoder tiny decodes Wan 2.1 latents"):
        load_preset("toy", ["video.decoder=tiny"], architecture=False)


def test_download_fetches_the_tiny_decoder_only_when_asked(tmp_path, capsys, monkeypatch):
    from tokentrim_cli.cli import main
    from tokentrim_cli.config.settings import TINY_DECODER_WEIGHTS
    from tokentrim_cli.engine import weights

    fetched = []
    monkeypatch.setattr(weights, "fetch", lambda ref, local=None: fetched.append(ref) or tmp_path / "f")
    for extra in ([], ["--set", "video.decoder=tiny"]):
        with _no_exit():
            main(["download", "tiny", *extra])
    assert fetched == [TINY_DECODER_WEIGHTS]
    assert "MIT" in capsys.readouterr().out


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is SystemExit and exc.code in (0, None)


def test_a_url_reference_is_found_in_the_weights_folder_or_named_missing(tmp_path, monkeypatch):
    from tokentrim_cli.config.settings import TINY_DECODER_WEIGHTS
    from tokentrim_cli.engine import weights
    from tokentrim_cli.errors import MissingWeights

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(MissingWeights) as exc:
        weights.resolve(TINY_DECODER_WEIGHTS, str(tmp_path))
    assert exc.value.downloadable and TINY_DECODER_WEIGHTS in str(exc.value)
    local = tmp_path / "github.com/madebyollin/taehv/raw" / TINY_DECODER_WEIGHTS.split("/raw/")[1]
    local.parent.mkdir(parents=True)
    synthetic_file(local)
    assert weights.resolve(TINY_DECODER_WEIGHTS, str(tmp_path)) == local


def test_the_decoder_settings_keep_old_hashes_and_tiny_changes_it():
    from tokentrim_cli.batch.manifest import settings_hash
    from tokentrim_cli.config.presets import load_preset

    vae = load_preset("tiny", architecture=False).config.as_dict()
    old = {k: v for k, v in vae.items()}  # a config from before the two settings existed
    old["video"] = {k: v for k, v in vae["video"].items() if k != "decoder"}
    old["model"] = {k: v for k, v in vae["model"].items() if k != "tiny_decoder"}
    tiny = load_preset("tiny", ["video.decoder=tiny"], architecture=False).config.as_dict()
    h = lambda c: settings_hash(c, "a prompt", 2.0, 0)
    assert h(vae) == h(old) != h(tiny)


def test_an_interrupted_run_with_the_tiny_decoder_resumes_exactly(tmp_path, monkeypatch, capsys):
    """The decoder's memories go into the resumable state: the resumed video's frames are the uninterrupted run's."""
    from test_resume import _twin_stop_resume

    args = ["generate", "-p", "a red kite", "--seconds", "3", "--seed", "7", "--preset", "tiny", "-q",
            "--set", "video.decoder=tiny", "--set", "model.tiny_decoder=random:3"]
    out, _, _ = _twin_stop_resume(capsys, monkeypatch, tmp_path, args, 13, "error", 1)
    assert json.loads(out.with_suffix(".json").read_text())["resumed"]
