"""The package as a user installs it: an sdist, a wheel built from it, installed into a fresh folder and run from
outside the checkout (no editable install, nothing of the checkout on the path)."""

import os
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tokentrim_cli import __version__

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("pyproject.toml", "setup.py", "README.md", "tokentrim_cli", "presets")  # what the build reads


def _build(hook: str, src: Path, out: Path) -> Path:
    """Run a PEP 517 hook of setuptools' backend in ``src`` (offline: setuptools is already installed)."""
    code = f"import sys; from setuptools import build_meta; print(build_meta.{hook}(sys.argv[1]))"
    r = subprocess.run([sys.executable, "-c", code, str(out)], cwd=src, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return out / r.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(sdist, wheel built from the unpacked sdist, folder the wheel is installed into)."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "checkout"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SHIPPED:
        path = ROOT / name
        (shutil.copytree(path, src / name, ignore=ignore) if path.is_dir() else shutil.copy2(path, src / name))
    sdist = _build("build_sdist", src, tmp)
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
    wheel = _build("build_wheel", tmp / "unpacked" / sdist.name[: -len(".tar.gz")], tmp)
    target = tmp / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                        str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return sdist, wheel, target


def _source_files() -> set[str]:
    """Every file the package is made of in the checkout, by its path inside the installed package."""
    files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tokentrim_cli").rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    return files | {f"tokentrim_cli/presets/{p.name}" for p in (ROOT / "presets").glob("*.yaml")}


def test_the_wheel_holds_every_module_preset_and_weight(built):
    """Compared with the checkout: every subpackage of tokentrim_cli (a new one needs no list to be edited),
    every module, the presets and the toy model's weights; the version is the package's."""
    sdist, wheel, _ = built
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "tokentrim_cli").rglob("__init__.py")}
    assert {"tokentrim_cli", "tokentrim_cli/batch", "tokentrim_cli/engine", "tokentrim_cli/toy"} <= packages
    missing = sorted(f for f in _source_files() if f not in names)
    assert not missing, f"not in the wheel: {missing}"
    assert not [n for n in names if n.startswith(("training/", "tests/", "bench/"))]  # the trainer is not packaged
    assert wheel.name == f"tokentrim-{__version__}-py3-none-any.whl" and sdist.name == f"tokentrim-{__version__}.tar.gz"
    assert f"tokentrim-{__version__}.dist-info/entry_points.txt" in names


def _isolated_env(target: Path, tmp: Path) -> dict:
    """The installed folder, then the interpreter's own packages (torch, ...) without their .pth files (python -S):
    the editable install of the checkout is not on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENTRIM_", "PYTHON"))}
    return {**env, "PYTHONPATH": os.pathsep.join([str(target), *site.getsitepackages()]), "HF_HUB_OFFLINE": "1",
            "HOME": str(tmp)}


def test_the_installed_wheel_generates_and_plans_a_batch_outside_the_checkout(built, tmp_path):
    _, _, target = built
    env = _isolated_env(target, tmp_path)

    def tokentrim(*args):
        r = subprocess.run([sys.executable, "-S", "-m", "tokentrim_cli", *args], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout

    where = subprocess.run([sys.executable, "-S", "-c", "import tokentrim_cli.batch as b; print(b.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True)
    assert where.stdout.startswith(str(target)), where.stderr  # the installed copy, not the checkout
    out = tokentrim("generate", "--preset", "toy", "--prompt", "a red circle bouncing on a dark blue background",
                    "--seconds", "1", "--seed", "1", "-o", "clip.mp4", "-q")
    assert out.strip().endswith("clip.mp4") and (tmp_path / "clip.mp4").stat().st_size > 0
    (tmp_path / "prompts.txt").write_text("a red circle\na blue square\n")
    plan = tokentrim("batch", "prompts.txt", "--out-dir", "batch", "--preset", "toy", "--dry-run")
    assert len([line for line in plan.splitlines() if "toy" in line]) == 2 and not (tmp_path / "batch").exists()
    # the console script the wheel declares
    script = target / "bin" / "tokentrim"
    r = subprocess.run([sys.executable, "-S", str(script), "--version"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.stdout == f"tokentrim {__version__}\n", r.stderr


def test_the_gpu_machines_wheels_are_the_versions_pyproject_allows():
    """``make gpu-wheels`` brings the lent GPU machine what it lacks: each at a version pyproject.toml allows (the
    exact pins for diffusers and torchao), so a GPU run measures the code with the dependencies it is tested with."""
    import re

    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python 3.11 and newer
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    allowed = {r.name: r.specifier for r in map(Requirement, project["dependencies"]
                                                  + project["optional-dependencies"]["quantize"])}
    line = re.search(r"^DEVICE_WHEELS = (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    wheels = dict(w.split("==") for w in line.split())
    assert set(wheels) == {"diffusers", "torchao", "imageio-ffmpeg"}
    for name, version in wheels.items():
        assert allowed[name].contains(version), f"{name}=={version} is outside pyproject's {allowed[name]}"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("has_packages", [False, True])
def test_gpu_check_installs_the_carried_wheels_only_where_a_package_is_missing(tmp_path, has_packages):
    """On the GPU machine (no diffusers, no network) ``make gpu-check`` installs the wheels carried in .whl/ into
    build/gpu-site, offline, puts that folder ahead on the path of the check, and passes ARGS on; where the packages
    import it installs nothing. A stand-in Python records what make asks of it."""
    (tmp_path / ".whl").mkdir()
    (tmp_path / ".whl" / "diffusers-0.42.1-py3-none-any.whl").touch()
    log = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\necho \"$* | $PYTHONPATH\" >> {log}\n"
                    f"[ \"$1\" = -c ] && exit {0 if has_packages else 1}\nexit 0\n")
    fake.chmod(0o755)
    r = subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), "gpu-check", f"PY={fake}", "ARGS=--out o.json"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    site_dir = f"{tmp_path}/build/gpu-site"
    installs = [c for c in calls if c.startswith("-m pip install")]
    if has_packages:
        assert installs == []
    else:
        assert len(installs) == 1 and "--no-index" in installs[0] and f"--target {site_dir} " in installs[0]
        assert ".whl/diffusers-0.42.1-py3-none-any.whl" in installs[0]
    assert calls[-1].startswith("bench/gpu_check.py --out o.json | ")
    assert calls[-1].split(" | ")[1].split(":")[0] == site_dir
