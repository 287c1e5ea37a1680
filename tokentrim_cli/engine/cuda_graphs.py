"""``runtime.cuda_graphs``: every transformer block's static pieces (``piecewise.py``: ``pre`` and ``post``)
captured as CUDA graphs once per forward shape and replayed; the cache's bookkeeping and attention run eagerly
between them (``mid``).

Why piecewise rather than one graph per forward: a forward's cache work depends on the cache's state (which
segments a layer attends, stages or turns, where the arena's rows sit), which changes when eviction starts, when
TokenTrim prunes, when a three-partition selection changes its sizes, and every block or two as the arena's
region slides. A whole-forward graph would be valid only while all of that repeats exactly, which the cache
cannot promise cheaply. The pieces read only tensors of the forward's own size, so those layout changes need
no fallback at all; what does invalidate the graphs:

- a new forward shape (batch, tokens, width, dtype): its first forward runs eagerly ("warm-up"), the second
  captures; at most ``max_shapes`` shapes are kept ("shape limit" beyond);
- a new prompt (``set_prompt``: a timeline switch, a batch's next item): the graphs read the prompt's K/V where
  they were, so all are dropped and the shapes warm up again ("prompt switch");
- a forward without a cache (training's block-causal mask): "no cache";
- a capture that fails: recorded, and the rest of the run is eager ("capture failed").

Memory: per kept shape, each layer keeps its five q/k/v outputs and its block output (6 x tokens x width values;
at 480x832, 3 latent frames, bf16: about 86 MB a layer, 2.6 GB for Wan2.1-1.3B's 30 layers).
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch

from .attention import ForwardState
from .piecewise import mid_attention

EAGER_REASONS = ("warm-up", "prompt switch", "shape limit", "no cache", "capture failed")


@dataclass(frozen=True)
class StaticKey:
    """What a captured graph is valid for, besides the prompt (tracked by identity): the blocks' input shape."""

    batch: int
    tokens: int
    width: int
    dtype: str
    device: str

    @classmethod
    def of(cls, x: torch.Tensor) -> "StaticKey":
        """The key of a forward whose block input is ``x`` (B, tokens, width)."""
        b, n, d = x.shape
        return cls(b, n, d, str(x.dtype).removeprefix("torch."), str(x.device))


@dataclass
class GraphStats:
    """How a run used its graphs: the sidecar's ``levers.cuda_graphs``."""

    captured_shapes: int = 0
    graphs: int = 0  # two per layer and captured shape
    replayed_forwards: int = 0
    eager_forwards: Counter = field(default_factory=Counter)  # reason -> forwards
    error: str | None = None

    def as_dict(self) -> dict:
        return {"captured_shapes": self.captured_shapes, "graphs": self.graphs,
                "replayed_forwards": self.replayed_forwards, "eager_forwards": dict(self.eager_forwards),
                "error": self.error}


@dataclass
class Captured:
    """One captured piece: ``replay()`` recomputes ``outputs`` in place from the static inputs it was captured on."""

    replay: Callable[[], None]
    outputs: object


class CudaCapturer:
    """Real CUDA graphs; all share one memory pool (they replay one after another on one stream)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.pool = torch.cuda.graph_pool_handle()

    def capture(self, fn: Callable, args: tuple) -> Captured:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture (lazy init, a compiled function's compile)
            fn(*args)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread-local: the decoder's worker thread (runtime.overlap_decode) keeps decoding on its own stream
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            out = fn(*args)
        return Captured(graph.replay, out)


class EagerCapturer:
    """Graph semantics without a GPU (tests, the meta device): a replay reruns the piece on the same static inputs
    and overwrites the same output tensors, so whatever a graph would get wrong about static buffers shows."""

    def reset(self) -> None:
        pass

    def capture(self, fn: Callable, args: tuple) -> Captured:
        out = fn(*args)

        def replay():
            for kept, new in zip(_flat(out), _flat(fn(*args))):
                kept.copy_(new)

        return Captured(replay, out)


def _flat(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


class ShapeGraphs:
    """Every layer's ``pre`` and ``post`` captured for one :class:`StaticKey`, on static input buffers."""

    def __init__(self, capturer, pieces, model, x: torch.Tensor, tproj: torch.Tensor):
        st = model.state
        self.x, self.tproj, self.freqs = torch.zeros_like(x), torch.zeros_like(tproj), torch.zeros_like(st.rope)
        self.attn = torch.zeros_like(x)  # the eager middle's output, copied in before each ``post``
        self.layers: list[tuple[Captured, Captured]] = []
        h = self.x
        for block, (k, v) in zip(model.transformer.blocks, st.prompt_kv):  # the prompt's K/V: read where they are
            pre = capturer.capture(functools.partial(pieces.pre, block), (h, self.tproj, self.freqs))
            post = capturer.capture(functools.partial(pieces.post, block), (h, self.attn, self.tproj, k, v))
            self.layers.append((pre, post))
            h = post.outputs
        self.out = h

    def run(self, state: ForwardState, x: torch.Tensor, tproj: torch.Tensor) -> torch.Tensor:
        """The blocks' output for ``x`` (B, n, D): a copy, since the next replay overwrites the graphs' own."""
        self.x.copy_(x)
        self.tproj.copy_(tproj)
        self.freqs.copy_(state.rope)
        for i, (pre, post) in enumerate(self.layers):
            pre.replay()
            self.attn.copy_(mid_attention(state, i, pre.outputs, private=True))
            post.replay()
        return self.out.clone()


class BlockGraphs:
    """Decides, per forward, between replaying captured graphs and running eagerly, and keeps the counts.

    Args:
        capturer: :class:`CudaCapturer` (a GPU run) or :class:`EagerCapturer` (tests).
        max_shapes: forward shapes kept captured (Self Forcing has one; Rolling Forcing's windows several).
    """

    def __init__(self, capturer, max_shapes: int = 3):
        self.capturer, self.max_shapes = capturer, max_shapes
        self.entries: dict[StaticKey, ShapeGraphs] = {}
        self.seen: set[StaticKey] = set()
        self.prompt = None  # the prompt K/V list the entries read (held: its tensors stay where the graphs read)
        self.stats = GraphStats()

    def eager_reason(self, key: StaticKey, state: ForwardState) -> str | None:
        """Why this forward runs eagerly, or None to replay (capturing first if needed). Updates the bookkeeping
        (a new prompt drops every graph; a first sight of a shape is remembered)."""
        if self.stats.error is not None:
            return "capture failed"
        if state.cache is None or state.mask is not None:
            return "no cache"
        if state.prompt_kv is not self.prompt:
            switched = self.prompt is not None
            self.forget()
            self.prompt = state.prompt_kv
            self.seen.add(key)
            return "prompt switch" if switched else "warm-up"
        if key in self.entries:
            return None
        if key not in self.seen:
            self.seen.add(key)
            return "warm-up"
        return "shape limit" if len(self.entries) >= self.max_shapes else None

    def forget(self) -> None:
        """Drop every captured graph and its memory."""
        self.entries.clear()
        self.seen.clear()
        self.capturer.reset()

    def run(self, model, pieces, x: torch.Tensor, tproj: torch.Tensor) -> torch.Tensor:
        """The blocks' output for ``x``: replayed when the rules allow, else ``pieces.eager``."""
        st = model.state
        key = StaticKey.of(x)
        reason = self.eager_reason(key, st)
        if reason is None:
            entry = self.entries.get(key) or self._capture(key, model, pieces, x, tproj)
            if entry is not None:
                self.stats.replayed_forwards += 1
                return entry.run(st, x, tproj)
            reason = "capture failed"
        self.stats.eager_forwards[reason] += 1
        return pieces.eager(model, x, tproj)

    def _capture(self, key: StaticKey, model, pieces, x, tproj) -> ShapeGraphs | None:
        """Capture every layer before anything of this forward runs: a failure leaves the cache untouched."""
        try:
            entry = ShapeGraphs(self.capturer, pieces, model, x, tproj)
        except Exception as exc:  # noqa: BLE001 - recorded in the sidecar; the run goes on eagerly
            self.stats.error = f"{type(exc).__name__}: {exc}"[:500]
            self.forget()
            return None
        self.entries[key] = entry
        self.stats.captured_shapes += 1
        self.stats.graphs += 2 * len(entry.layers)
        return entry
