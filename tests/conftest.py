import gc
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

import pytest

# before torch loads OpenMP: threads that spin while waiting take the CPU from the one doing the work whenever the
# machine has fewer free cores than threads (a busy CI machine, pytest-xdist's workers); the tests' tensors are
# tiny, so one thread per process does as well as two (the entry point sets the same policy for CLI runs)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
sys.path.insert(0, str(ROOT))
# tests/ mirrors the package (tests/engine/, tests/batch/, tests/toy/ for tokentrim_cli/engine, ...): a test file
# imports another one's helpers by its module name (basenames are unique) from whichever folder it is in
for _folder in [TESTS, *sorted(p for p in TESTS.iterdir() if p.is_dir() and p.name.isidentifier())]:
    if str(_folder) not in sys.path:
        sys.path.insert(1, str(_folder))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["TOKENTRIM_PRESET"] = "tiny"  # CLI tests run the fast random-weight preset unless they name another
THREADS = 1
torch.set_num_threads(THREADS)
# A shell's background job (`make test &`, CI runners) starts Python with SIGINT ignored, and an ignored signal
# stays ignored in every child: the tests that deliver Ctrl-C to a run (in this process or a subprocess) need
# Python's own handler, whether the suite runs in the foreground, in the background or in an xdist worker.
try:
    signal.signal(signal.SIGINT, signal.default_int_handler)
except ValueError:  # not the main thread: nothing to restore here
    pass


# The slowest tests (measured in a run of the suite; most start processes), grouped where they share a module
# fixture. `make test` runs two xdist workers with --dist worksteal, which hands
# the first half of the collection to one worker and the second half to the other, then lets an idle worker take
# the back half of the other's queue: the groups go to the front of the two halves (the heavier half of the work to
# the lighter worker) so that both start with them and the run does not end on one of them. Other modes: harmless.
SLOW = {  # seconds of the group in one run of the suite (2 workers, one CPU each, with the processes they start)
    "tests/batch/test_batch.py::test_accelerate_launch_two": 17,
    "tests/live/test_browser.py::": 18,  # the live run, chromium and the replay
    "tests/test_packaging.py::": 18,
    "tests/run/test_resume.py::test_sig": 14,
    "tests/live/test_live_run.py::test_": 11,
    "tests/output/test_files.py::test_a_real_full_tmpfs": 10,
    "tests/toy/test_toy.py::": 8,
    "tests/test_signals.py::": 8,
    "tests/test_cli.py::test_interrupt_leaves_playable_partial_video": 6,
    "tests/output/test_writer.py::test_gpu_check": 5,
    "tests/test_planner.py::test_the_levers": 5,
}


def pytest_configure(config):
    """The run's process (xdist's controller, or pytest without xdist) names the folder of the run's test zygote
    (``tests/zygote.py``) and owns it; the workers inherit the names. A run of whole folders starts the zygote
    at once, while the workers import and collect (otherwise the first test that needs it does).

    Each xdist worker keeps to one CPU of its own (with the processes it starts): the command's threads default
    to the CPUs a process may use, and two threads per worker on a 2-core machine cost more CPU time than they
    save on these tiny models (the toy preset: 8.1 vs 4.8 CPU-seconds for 3 s of video)."""
    if hasattr(config, "workerinput"):
        cpus = sorted(os.sched_getaffinity(0))
        worker = int(config.workerinput["workerid"].removeprefix("gw"))
        os.sched_setaffinity(0, {cpus[worker % len(cpus)]})
        return
    gc.freeze()  # torch, imported above: the controller's collections (5 at its end) leave it alone
    os.environ["TOKENTRIM_TEST_ZYGOTE"] = os.path.join(tempfile.mkdtemp(prefix="tokentrim-zygote-"), "socket")
    os.environ["TOKENTRIM_TEST_ZYGOTE_OWNER"] = str(os.getpid())
    if all(Path(arg.split("::")[0]).is_dir() for arg in config.args):
        import zygote

        threading.Thread(target=zygote.ensure_started, daemon=True).start()


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):  # the zygote sees its owner gone within a second and exits
        shutil.rmtree(os.path.dirname(os.environ["TOKENTRIM_TEST_ZYGOTE"]), ignore_errors=True)


def pytest_collection_finish(session):
    """What the collection imported (torch, diffusers, the test modules) moves to the garbage collector's permanent
    generation: the tests' full collections no longer walk it (each took about 0.3 s, 5-7 s per worker)."""
    gc.collect()
    gc.freeze()


def _slow_group(nodeid: str) -> str | None:
    return next((prefix for prefix in SLOW if nodeid.startswith(prefix)), None)


def pytest_collection_modifyitems(config, items):
    """Order: slow groups A, other tests, slow groups B, other tests; A and B of about equal weight, the split
    between the rest placed where worksteal cuts the collection in two (at len // 2)."""
    groups: dict[str, list] = {}
    rest = []
    for item in items:
        prefix = _slow_group(item.nodeid)
        (groups.setdefault(prefix, []) if prefix else rest).append(item)
    halves: tuple[list, list] = ([], [])
    weight = [0, 0]
    for prefix in sorted(groups, key=lambda p: -SLOW[p]):
        k = weight.index(min(weight))
        halves[k].extend(groups[prefix])
        weight[k] += SLOW[prefix]
    cut = max(0, len(items) // 2 - len(halves[0]))
    items[:] = [*halves[0], *rest[:cut], *halves[1], *rest[cut:]]


@pytest.fixture(autouse=True)
def _one_thread():
    """An in-process CLI run sets torch's threads to the CPUs it may use; the next test starts with one again."""
    yield
    if torch.get_num_threads() != THREADS:
        torch.set_num_threads(THREADS)

TINY_TRANSFORMER = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=256,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=64,
)
TINY_VAE = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])


def tiny_transformer(seed=0, **overrides):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(**{**TINY_TRANSFORMER, **overrides}).eval()


@pytest.fixture
def causal_model():
    from tokentrim_cli.engine.model import CausalWan

    model = CausalWan(tiny_transformer())
    torch.manual_seed(1)
    model.set_prompt(torch.randn(1, 16, 32))
    return model


@pytest.fixture
def tiny_vae():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(2)
    return AutoencoderKLWan(**TINY_VAE).eval()


class CacheDriver:
    """Stands in for CausalWan where only the cache's bookkeeping is under test (positions, eviction, selection,
    arena vs plain path): it calls the cache exactly as the model does (``begin``, ``attend`` per layer with the
    current keys rotated at ``current_positions``, ``end``; a write pass stores its K/V) with one attention per
    layer over fixed random projections of the latents, and returns a velocity made from the attention outputs,
    so the real samplers and TokenTrim run unchanged at a fraction of a transformer's cost.

    Args:
        layers, heads, head_dim: as a Wan transformer's (head_dim split 4/4/4 into t/h/w RoPE channels at 12).
        rope_len: positions in the RoPE table (the model's ``rope_max_seq_len``).
    Latents are (B, 16, F, H, W) with 2 x 2 patches, as the tiny transformer's.
    """

    def __init__(self, layers=2, heads=2, head_dim=12, rope_len=64, seed=0):
        from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

        from tokentrim_cli.engine.rope import Rope

        self.rope = Rope(WanRotaryPosEmbed(head_dim, (1, 2, 2), rope_len))
        self.num_layers, self.rope_len, self.heads = layers, rope_len, heads
        self.device, self.dtype = torch.device("cpu"), torch.float32
        g = torch.Generator().manual_seed(seed)
        self.qkv = [torch.randn(64, 3 * heads * head_dim, generator=g) / 8 for _ in range(layers)]
        self.out = [torch.randn(heads * head_dim, 64, generator=g) / (heads * head_dim) ** 0.5 for _ in range(layers)]
        self.calls = []  # per attend: (writing, current frames, the attention output) for comparisons

    def __call__(self, latents, timesteps, frames, cache=None, write=False, first_step=False):
        from tokentrim_cli.engine.attention import attend
        from tokentrim_cli.engine.rope import rotate

        b, c, f, hh, ww = latents.shape
        gh, gw = hh // 2, ww // 2
        n = gh * gw
        x = latents.reshape(b, c, f, gh, 2, gw, 2).permute(0, 2, 3, 5, 1, 4, 6).reshape(b, f * n, c * 4)
        self.rope.grid_w = gw
        cache.begin(torch.as_tensor(frames).long(), (gh, gw), write=write, first_step=first_step, rope=self.rope)
        completed = False
        try:
            freqs = self.rope.tables(cache.current_positions.repeat_interleave(n), torch.arange(n).repeat(f))
            for layer in range(self.num_layers):
                q, k, v = (x @ self.qkv[layer]).unflatten(2, (3, self.heads, -1)).unbind(2)
                keys, values = cache.attend(layer, q, k, rotate(k, freqs), v)
                h = attend(rotate(q, freqs), keys, values).flatten(2)
                self.calls.append((write, tuple(cache.current_frames.tolist()), h))
                x = x + h @ self.out[layer]
            completed = True
        finally:
            cache.end(completed)
        v = x.reshape(b, f, gh, gw, c, 2, 2).permute(0, 4, 1, 2, 5, 3, 6).reshape(b, c, f, hh, ww)
        return v - latents  # a velocity of the latents' own scale
