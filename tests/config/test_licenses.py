"""Every preset names its checkpoint's license and where that was read; listings show it, ``download`` says it
before fetching, and a run of a checkpoint not for commercial use says so once, on stderr and in its sidecar."""

import json

import pytest

from tokentrim_cli.config.presets import list_presets, load_preset
from tokentrim_cli.config.loading import weights_refs
from tokentrim_cli.config.notices import positions_notice, run_notices

from test_cli import run_main

NON_COMMERCIAL = {"self-forcing", "self-forcing-packed", "rolling-forcing", "rolling-forcing-packed",
                  "causal-forcing-long", "reward-forcing", "infinity-rope"}  # the last three: no license read grants it


def test_every_preset_states_its_license_and_its_source():
    for name in list_presets():
        lic = load_preset(name).config.license
        assert lic.name and lic.source and isinstance(lic.commercial, bool), name
        real = any(r.startswith("hf://") for r in weights_refs(load_preset(name).config.model))
        assert lic.commercial == (name not in NON_COMMERCIAL), name
        if not real:  # random or shipped weights: the project's own license
            assert lic.name == "Apache-2.0" and "pyproject" in lic.source, name
    assert load_preset("rolling-forcing").config.license.name == "academic use only"
    assert "TencentARC/RollingForcing LICENSE" in load_preset("rolling-forcing").config.license.source
    assert load_preset("longlive").config.license.name == "Apache-2.0"


def test_listings_and_download_show_the_license(capsys, monkeypatch):
    code, out, _ = run_main(capsys, "presets", "list")
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert code == 0 and "academic use only (non-commercial)" in rows["rolling-forcing"]
    assert "CC-BY-NC-SA-4.0 (non-commercial)" in rows["self-forcing"] and "Apache-2.0" in rows["longlive"]
    code, out, _ = run_main(capsys, "doctor")
    assert code == 0 and "preset tiny: ready; license: Apache-2.0" in out
    assert "preset rolling-forcing: " in out and "license: academic use only (non-commercial)" in out

    from tokentrim_cli.config import loading
    from tokentrim_cli.engine import weights as W

    said = []
    monkeypatch.setattr(loading, "check_hub_reachable", lambda: None)
    monkeypatch.setattr(W, "fetch", lambda ref, local_dir=None: said.append(capsys.readouterr().out) or ref)
    code, out, _ = run_main(capsys, "download", "rolling-forcing")
    assert code in (0, None)
    assert said[0].startswith("preset rolling-forcing: checkpoint license academic use only (NOT for commercial use; "
                              "github.com/TencentARC/RollingForcing LICENSE")  # before the first file is fetched


def test_a_non_commercial_run_says_so_once_and_records_it(tmp_path, capsys):
    """The tiny model under a made-up academic-only license, with absolute positions past a 12-frame RoPE table:
    both notices once on stderr, both in the sidecar."""
    out = tmp_path / "n.mp4"
    code, _, err = run_main(capsys, "generate", "--preset", "tiny", "--prompt", "a red circle", "--seconds", "4",
                            "--seed", "1", "--output", str(out),
                            "--set", "license={name: academic use only, commercial: false, source: a test}",
                            "--set", "cache={policy: rolling, sink_frames: 3, window_frames: 6, positions: absolute}",
                            "--set", "model.transformer.config.rope_max_seq_len=12")
    assert code == 0, err
    assert err.count("NOT for commercial use") == 1 and err.count("RoPE table") == 1
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["config"]["license"] == {"name": "academic use only", "commercial": False, "source": "a test"}
    assert [w for w in record["warnings"] if "NOT for commercial use" in w or "RoPE table" in w] == [
        "preset tiny: its checkpoint is licensed academic use only, NOT for commercial use; this video is bound by "
        "that license (source: a test)",
        "this video reaches latent frame 17, past the model's 12-frame RoPE table: from the first block that does not "
        "fit on, cached keys are positioned packed (the sink right before the window, as LongLive's long-video "
        "variant does) instead of at their absolute frames"]


@pytest.mark.parametrize("name, last, said", [("longlive", 1023, False), ("longlive", 1024, True),
                                              ("longlive-packed", 5000, False), ("tiny", 5000, False)])
def test_the_fallback_is_said_only_for_absolute_presets_past_the_table(name, last, said):
    assert (positions_notice(load_preset(name).config, last) is not None) == said
    assert run_notices(name, load_preset(name).config, 10) == []  # commercial and inside the table: nothing
