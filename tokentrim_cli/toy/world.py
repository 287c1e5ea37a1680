"""A procedural, seed-deterministic video world of coloured moving shapes, with captions.

Clips show one or two filled shapes (``circle``, ``square``, ``triangle``, ``diamond``,
``ring``, ``cross``) in named palette colours, moving in one of four ways over a static
background:

* ``bouncing``: constant velocity, reflected at the frame borders so the whole shape stays
  inside the frame;
* ``sliding``: constant velocity that **wraps around** (torus): what leaves one edge re-enters
  at the opposite edge at once, so part of the shape can show on both sides;
* ``rotating``: in place, constant angular speed (sampled only for shapes whose rotation is
  visible: square, triangle, diamond, cross);
* ``growing``: in place, the size oscillates sinusoidally around its base value.

Backgrounds are ``plain`` (one colour), ``gradient`` (vertical: the top row is the colour mixed
25% towards white, the middle row is the colour itself, the bottom row is mixed 25% towards black,
linear in between) or ``textured`` (diagonal stripes of period 9 px: two thirds the colour itself,
one third a shade mixed 12% towards black, or towards white for dark colours). The background
colour reported in the attributes is the palette colour itself.

Caption grammar (all lower case, words separated by single spaces)::

    CAPTION    := OBJECT [ "and" OBJECT ] MOTION "on" ARTICLE BACKGROUND "background"
    OBJECT     := ARTICLE COLOUR SHAPE
    ARTICLE    := "a" | "an"            (``caption`` writes "an" before a vowel: "an orange ring")
    COLOUR     := one of COLOURS         ("dark blue", "light green" and "light blue" are two words)
    SHAPE      := circle | square | triangle | diamond | ring | cross
    MOTION     := bouncing | sliding | rotating | growing      (shared by both objects)
    BACKGROUND := [ "plain" | "gradient" | "textured" ] COLOUR   (``caption`` omits "plain")

Examples: "a red circle bouncing on a dark blue background",
"a yellow square rotating on a gradient green background",
"a red circle and a blue square sliding on a textured white background".
``parse_caption`` also accepts upper case, extra spaces, hyphens for spaces ("dark-blue"),
"grey" for "gray" and one trailing full stop. ``VOCAB`` lists every word of the grammar.

Rules every sampled clip obeys: object and background colours differ and are at least
``MIN_CONTRAST`` apart (RGB Euclidean distance, 0-255 scale); so are the two objects' colours.

Held-out combinations (never produced by ``sample_spec(split="train")``; every
``split="heldout"`` clip contains at least one of them)::

    HELDOUT_SHAPE_PAIRS      (object colour, shape):             red triangle, blue circle, yellow square
    HELDOUT_BACKGROUND_PAIRS (object colour, background colour): orange on dark blue, green on white

Geometry: pixel (row i, column j) has its centre at (x=j, y=i), so the frame spans
[-0.5, W-0.5] x [-0.5, H-0.5]. ``ObjectSpec.size`` is a fraction of min(H, W) and is the
shape's radius: circle/ring radius, half the side of a square, circumradius of the triangle,
half the diagonal of a diamond, half the arm length of a cross. Angles are in degrees,
positive is clockwise on screen (the y axis points down). Edges are anti-aliased from a
signed distance (one pixel of blending); pixels fully inside a shape have its exact RGB.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "yellow": (245, 215, 40),
    "orange": (245, 135, 30),
    "purple": (135, 55, 185),
    "pink": (245, 140, 190),
    "brown": (130, 80, 40),
    "gray": (128, 128, 128),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "dark blue": (20, 30, 110),
    "light blue": (140, 190, 245),
    "light green": (150, 230, 140),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "ring", "cross")
ROTATABLE_SHAPES: tuple[str, ...] = ("square", "triangle", "diamond", "cross")
FILLED_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
MOTIONS: tuple[str, ...] = ("bouncing", "sliding", "rotating", "growing")
BACKGROUND_KINDS: tuple[str, ...] = ("plain", "gradient", "textured")
MIN_CONTRAST = 70.0

HELDOUT_SHAPE_PAIRS: tuple[tuple[str, str], ...] = (("red", "triangle"), ("blue", "circle"), ("yellow", "square"))
HELDOUT_BACKGROUND_PAIRS: tuple[tuple[str, str], ...] = (("orange", "dark blue"), ("green", "white"))

_GRAMMAR_WORDS = ("a", "an", "and", "on", "background", "plain", "gradient", "textured")
VOCAB: list[str] = sorted(
    set(_GRAMMAR_WORDS) | {w for c in COLOUR_NAMES for w in c.split()} | set(SHAPES) | set(MOTIONS)
)

# Half extents (x, y) of each shape at angle 0, and its circumradius, in units of its size.
_EXTENT = {"circle": (1.0, 1.0), "square": (1.0, 1.0), "triangle": (math.sqrt(3) / 2, 1.0),
           "diamond": (1.0, 1.0), "ring": (1.0, 1.0), "cross": (1.0, 1.0)}
_CIRCUM = {"circle": 1.0, "square": math.sqrt(2), "triangle": 1.0, "diamond": 1.0, "ring": 1.0,
           "cross": math.hypot(1.0, 0.3)}
_RING_INNER = 0.5  # inner radius of a ring, fraction of its outer radius
_CROSS_HALF_WIDTH = 0.3  # half width of a cross arm, fraction of its size
_CHUNK = 128  # frames rendered at once (bounds memory for long clips)


@dataclass(frozen=True)
class ObjectSpec:
    """One object. ``x``/``y`` in [0, 1] place its initial centre within the range the centre may
    take at the rendered resolution (the whole frame for sliding, the frame shrunk by the object's
    extent otherwise). ``vx``/``vy`` are in units of min(H, W) per frame (bouncing, sliding),
    ``spin`` in degrees per frame (rotating), ``grow_amp`` the relative size amplitude,
    ``grow_period`` in frames and ``grow_phase`` in radians (growing)."""

    shape: str
    colour: str
    x: float = 0.5
    y: float = 0.5
    size: float = 0.12
    vx: float = 0.0
    vy: float = 0.0
    angle: float = 0.0
    spin: float = 0.0
    grow_amp: float = 0.0
    grow_period: float = 48.0
    grow_phase: float = 0.0

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLOURS[self.colour]


@dataclass(frozen=True)
class ParsedCaption:
    """The attributes a caption states: ``objects`` is a tuple of (colour, shape) pairs."""

    objects: tuple[tuple[str, str], ...]
    motion: str
    background_kind: str
    background_colour: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "objects": [{"colour": c, "shape": s, "rgb": list(COLOURS[c])} for c, s in self.objects],
            "motion": self.motion,
            "background": {"kind": self.background_kind, "colour": self.background_colour,
                           "rgb": list(COLOURS[self.background_colour])},
        }


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render a clip (rendering is a pure function of the spec).
    ``seed`` records where the spec came from: ``sample_spec(seed, split, ...)`` rebuilds it."""

    objects: tuple[ObjectSpec, ...]
    motion: str
    background_kind: str = "plain"
    background_colour: str = "black"
    seed: int | None = None
    split: str = "any"

    def __post_init__(self):
        _validate(self.objects, self.motion, self.background_kind, self.background_colour)

    @property
    def background_rgb(self) -> tuple[int, int, int]:
        return COLOURS[self.background_colour]

    def caption_attributes(self) -> ParsedCaption:
        return ParsedCaption(tuple((o.colour, o.shape) for o in self.objects), self.motion,
                             self.background_kind, self.background_colour)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["objects"] = [asdict(o) for o in self.objects]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClipSpec":
        d = dict(d)
        d["objects"] = tuple(ObjectSpec(**o) for o in d["objects"])
        return cls(**d)


def _validate(objects, motion, bg_kind, bg_colour) -> None:
    if not 1 <= len(objects) <= 2:
        raise ValueError(f"a clip has one or two objects, got {len(objects)}")
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}; expected one of {', '.join(MOTIONS)}")
    if bg_kind not in BACKGROUND_KINDS:
        raise ValueError(f"unknown background kind {bg_kind!r}; expected one of {', '.join(BACKGROUND_KINDS)}")
    if bg_colour not in COLOURS:
        raise ValueError(f"unknown background colour {bg_colour!r}; expected one of {', '.join(COLOUR_NAMES)}")
    for o in objects:
        colour, shape = (o.colour, o.shape) if isinstance(o, ObjectSpec) else o
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
        if colour not in COLOURS:
            raise ValueError(f"unknown colour {colour!r}; expected one of {', '.join(COLOUR_NAMES)}")
        if colour == bg_colour:
            raise ValueError(f"the {colour} {shape} would be invisible on a {colour} background: "
                             "object and background colours must differ")


def colour_distance(a: str | Sequence[float], b: str | Sequence[float]) -> float:
    """Euclidean RGB distance (0-255 scale) between two colour names or RGB triples."""
    ra = np.asarray(COLOURS[a] if isinstance(a, str) else a, dtype=np.float64)
    rb = np.asarray(COLOURS[b] if isinstance(b, str) else b, dtype=np.float64)
    return float(np.linalg.norm(ra - rb))


def heldout_pairs(spec: ClipSpec | ParsedCaption) -> list[tuple[str, str]]:
    """The held-out pairs a spec (or parsed caption) contains, as (colour, shape) or (colour, background)."""
    attrs = spec.caption_attributes() if isinstance(spec, ClipSpec) else spec
    found = []
    for colour, shape in attrs.objects:
        if (colour, shape) in HELDOUT_SHAPE_PAIRS:
            found.append((colour, shape))
        if (colour, attrs.background_colour) in HELDOUT_BACKGROUND_PAIRS:
            found.append((colour, attrs.background_colour))
    return found


# --------------------------------------------------------------------------------------------- captions

def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(spec: ClipSpec | ParsedCaption) -> str:
    """The caption of a spec, e.g. "a red circle bouncing on a dark blue background"."""
    attrs = spec.caption_attributes() if isinstance(spec, ClipSpec) else spec
    objs = " and ".join(f"{_article(c)} {c} {s}" for c, s in attrs.objects)
    bg = attrs.background_colour if attrs.background_kind == "plain" else f"{attrs.background_kind} {attrs.background_colour}"
    return f"{objs} {attrs.motion} on {_article(bg)} {bg} background"


_GRAMMAR_HELP = ('expected "a|an COLOUR SHAPE [and a|an COLOUR SHAPE] MOTION on a|an [plain|gradient|textured] '
                 'COLOUR background", e.g. "a red circle bouncing on a dark blue background"')


def parse_caption(text: str) -> ParsedCaption:
    """Invert ``caption``: the objects' colours and shapes, the motion and the background.
    Raises ValueError, naming the offending word and what was expected, for text outside the grammar."""
    if not isinstance(text, str):
        raise ValueError(f"caption must be a string, got {type(text).__name__}")
    norm = text.strip().lower().replace("-", " ").replace("grey", "gray")
    if norm.endswith("."):
        norm = norm[:-1]
    toks = norm.split()
    if not toks:
        raise ValueError(f"empty caption; {_GRAMMAR_HELP}")
    unknown = [t for t in toks if t not in VOCAB]
    if unknown:
        raise ValueError(f"caption {text!r} uses word(s) outside the toy-world vocabulary: "
                         f"{', '.join(repr(u) for u in unknown)}; known words: {' '.join(VOCAB)}")
    pos = 0

    def fail(expected: str):
        got = f"{toks[pos]!r} (word {pos + 1})" if pos < len(toks) else "the end of the caption"
        raise ValueError(f"cannot parse caption {text!r}: expected {expected} but found {got}; {_GRAMMAR_HELP}")

    def take(options, what):
        nonlocal pos
        if pos < len(toks) and toks[pos] in options:
            pos += 1
            return toks[pos - 1]
        fail(what)

    def colour():
        nonlocal pos
        if pos + 1 < len(toks) and f"{toks[pos]} {toks[pos + 1]}" in COLOURS:
            pos += 2
            return f"{toks[pos - 2]} {toks[pos - 1]}"
        return take(COLOURS, f"a colour ({', '.join(COLOUR_NAMES)})")

    objects = []
    while True:
        take(("a", "an"), '"a" or "an"')
        c = colour()
        s = take(SHAPES, f"a shape ({', '.join(SHAPES)})")
        objects.append((c, s))
        if pos < len(toks) and toks[pos] == "and" and len(objects) < 2:
            pos += 1
            continue
        break
    motion = take(MOTIONS, f"a motion ({', '.join(MOTIONS)})")
    take(("on",), '"on"')
    take(("a", "an"), '"a" or "an"')
    kind = "plain"
    if pos < len(toks) and toks[pos] in BACKGROUND_KINDS:
        kind = toks[pos]
        pos += 1
    bg = colour()
    take(("background",), '"background"')
    if pos != len(toks):
        fail("the end of the caption")
    _validate(objects, motion, kind, bg)
    return ParsedCaption(tuple(objects), motion, kind, bg)


# --------------------------------------------------------------------------------------------- sampling

def _rng(rng_or_seed) -> tuple[np.random.Generator, int]:
    if isinstance(rng_or_seed, np.random.Generator):
        seed = int(rng_or_seed.integers(0, 2**31 - 1))
    elif isinstance(rng_or_seed, (int, np.integer)):
        seed = int(rng_or_seed)
    else:
        raise TypeError(f"expected an int seed or a numpy Generator, got {type(rng_or_seed).__name__}")
    return np.random.default_rng(seed), seed


def _sample_dynamics(rng: np.random.Generator, motion: str, shapes: Sequence[str]) -> list[dict[str, float]]:
    """Continuous parameters (position, size, velocity, spin, growth) for each object."""
    n = len(shapes)
    out = []
    for i, _shape in enumerate(shapes):
        size = float(rng.uniform(0.09, 0.15) if n == 1 else rng.uniform(0.08, 0.12))
        d: dict[str, float] = {"size": size}
        if motion in ("bouncing", "sliding"):
            if motion == "bouncing":  # diagonal enough to bounce off both axes
                theta = math.radians(rng.uniform(20, 70) + 90 * int(rng.integers(4)))
                speed = rng.uniform(0.015, 0.04)
            else:
                theta = rng.uniform(0, 2 * math.pi)
                speed = rng.uniform(0.01, 0.03)
            d.update(x=float(rng.uniform()), y=float(rng.uniform()),
                     vx=float(speed * math.cos(theta)), vy=float(speed * math.sin(theta)))
        else:
            # in place; two objects sit at opposite sides so they never overlap
            x = rng.uniform(0.25, 0.75) if n == 1 else (rng.uniform(0.0, 0.08) if i == 0 else rng.uniform(0.92, 1.0))
            d.update(x=float(x), y=float(rng.uniform(0.2, 0.8)))
            if motion == "rotating":
                d["spin"] = float(rng.uniform(2.0, 8.0) * rng.choice([-1.0, 1.0]))
            else:
                d.update(grow_amp=float(rng.uniform(0.3, 0.45)), grow_period=float(rng.uniform(24, 64)),
                         grow_phase=float(rng.uniform(0, 2 * math.pi)))
        out.append(d)
    return out


def _contrasting(candidates, avoid) -> list[str]:
    return [c for c in candidates if all(c != a and colour_distance(c, a) >= MIN_CONTRAST for a in avoid)]


def sample_spec(rng_or_seed: int | np.random.Generator = 0, split: str = "train",
                two_objects_prob: float = 0.25) -> ClipSpec:
    """Draw a random clip spec. ``split="train"`` never contains a held-out pair, ``"heldout"`` always
    contains at least one, ``"any"`` is unrestricted. Same seed and arguments -> same spec."""
    if split not in ("train", "heldout", "any"):
        raise ValueError(f"split must be 'train', 'heldout' or 'any', got {split!r}")
    rng, seed = _rng(rng_or_seed)
    n = 2 if rng.random() < two_objects_prob else 1
    heldout = HELDOUT_SHAPE_PAIRS + HELDOUT_BACKGROUND_PAIRS
    for _ in range(1000):
        forced = heldout[int(rng.integers(len(heldout)))] if split == "heldout" else None
        forced_idx = int(rng.integers(n))
        forced_shape = forced[1] if forced in HELDOUT_SHAPE_PAIRS else None
        motions = [m for m in MOTIONS if not (m == "rotating" and forced_shape and forced_shape not in ROTATABLE_SHAPES)]
        motion = motions[int(rng.integers(len(motions)))]
        bg_kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
        if forced is not None and forced in HELDOUT_BACKGROUND_PAIRS:
            bg = forced[1]
        else:
            bg_choices = _contrasting(COLOUR_NAMES, [forced[0]]) if forced else list(COLOUR_NAMES)
            bg = bg_choices[int(rng.integers(len(bg_choices)))]
        shape_pool = ROTATABLE_SHAPES if motion == "rotating" else SHAPES
        objs: list[tuple[str, str]] = []
        ok = True
        for i in range(n):
            if forced is not None and i == forced_idx:
                c = forced[0]
                s = forced_shape or shape_pool[int(rng.integers(len(shape_pool)))]
            else:
                avoid = [bg] + [o[0] for o in objs] + ([forced[0]] if forced is not None and i < forced_idx else [])
                pool = _contrasting(COLOUR_NAMES, avoid)
                if not pool:
                    ok = False
                    break
                c = pool[int(rng.integers(len(pool)))]
                s = shape_pool[int(rng.integers(len(shape_pool)))]
            objs.append((c, s))
        if not ok or len({c for c, _ in objs}) != n:
            continue
        if any(colour_distance(c, bg) < MIN_CONTRAST for c, _ in objs):
            continue
        attrs = ParsedCaption(tuple(objs), motion, bg_kind, bg)
        found = heldout_pairs(attrs)
        if (split == "train" and found) or (split == "heldout" and not found):
            continue
        break
    else:  # pragma: no cover - the constraints are always satisfiable
        raise RuntimeError("could not sample a clip spec")
    dyn = _sample_dynamics(rng, motion, [s for _, s in objs])
    objects = tuple(ObjectSpec(shape=s, colour=c, **d) for (c, s), d in zip(objs, dyn))
    return ClipSpec(objects, motion, bg_kind, bg, seed=seed, split=split)


def spec_from_caption(text: str | ParsedCaption, rng_or_seed: int | np.random.Generator = 0) -> ClipSpec:
    """A renderable spec for a caption (e.g. typed by a user); positions, sizes and speeds are drawn from the seed."""
    attrs = parse_caption(text) if isinstance(text, str) else text
    rng, seed = _rng(rng_or_seed)
    dyn = _sample_dynamics(rng, attrs.motion, [s for _, s in attrs.objects])
    objects = tuple(ObjectSpec(shape=s, colour=c, **d) for (c, s), d in zip(attrs.objects, dyn))
    return ClipSpec(objects, attrs.motion, attrs.background_kind, attrs.background_colour, seed=seed)


# --------------------------------------------------------------------------------------------- rendering

def _mix(rgb, target, f) -> np.ndarray:
    return (1 - f) * np.asarray(rgb, np.float32) + f * np.asarray(target, np.float32)


def render_background(kind: str, colour: str, height: int, width: int) -> np.ndarray:
    """The static background as float32 (H, W, 3) on the 0-255 scale."""
    rgb = np.asarray(COLOURS[colour], np.float32)
    bg = np.broadcast_to(rgb, (height, width, 3)).astype(np.float32)
    if kind == "gradient":
        light, dark = _mix(rgb, (255, 255, 255), 0.25), _mix(rgb, (0, 0, 0), 0.25)
        t = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]  # -1 top, 0 middle, +1 bottom
        col = np.where(t < 0, rgb + (-t) * (light - rgb), rgb + t * (dark - rgb))  # (H, 3)
        bg = np.broadcast_to(col[:, None, :], (height, width, 3)).astype(np.float32)
    elif kind == "textured":
        luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
        shade = _mix(rgb, (0, 0, 0) if luma > 100 else (255, 255, 255), 0.12)
        i, j = np.indices((height, width))
        stripe = ((i + j) % 9) < 3
        bg[stripe] = shade
    elif kind != "plain":
        raise ValueError(f"unknown background kind {kind!r}")
    return bg


def _fold(p: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect positions into [lo, hi] (closed-form bouncing)."""
    if hi <= lo:
        return np.full_like(p, (lo + hi) / 2)
    span = hi - lo
    u = np.mod(p - lo, 2 * span)
    return lo + np.where(u <= span, u, 2 * span - u)


def _trajectory(o: ObjectSpec, motion: str, t: np.ndarray, height: int, width: int):
    """Centre x, y, size (pixels) and angle (degrees) of one object at frames ``t``."""
    m = min(height, width)
    s = o.size * m
    ones = np.ones_like(t, dtype=np.float64)
    if motion == "sliding":
        x = np.mod(-0.5 + o.x * width + o.vx * m * t + 0.5, width) - 0.5
        y = np.mod(-0.5 + o.y * height + o.vy * m * t + 0.5, height) - 0.5
        return x, y, s * ones, o.angle * ones
    if motion == "rotating":
        hx = hy = s * _CIRCUM[o.shape]
    elif motion == "growing":
        ex, ey = _EXTENT[o.shape]
        hx, hy = ex * s * (1 + o.grow_amp), ey * s * (1 + o.grow_amp)
    else:
        ex, ey = _EXTENT[o.shape]
        hx, hy = ex * s, ey * s
    lo_x, hi_x, lo_y, hi_y = -0.5 + hx, width - 0.5 - hx, -0.5 + hy, height - 0.5 - hy
    x0 = lo_x + o.x * max(hi_x - lo_x, 0.0) if hi_x > lo_x else (width - 1) / 2
    y0 = lo_y + o.y * max(hi_y - lo_y, 0.0) if hi_y > lo_y else (height - 1) / 2
    if motion == "bouncing":
        return _fold(x0 + o.vx * m * t, lo_x, hi_x), _fold(y0 + o.vy * m * t, lo_y, hi_y), s * ones, o.angle * ones
    if motion == "rotating":
        return x0 * ones, y0 * ones, s * ones, np.mod(o.angle + o.spin * t, 360.0)
    if motion == "growing":
        size = s * (1 + o.grow_amp * np.sin(2 * np.pi * t / o.grow_period + o.grow_phase))
        return x0 * ones, y0 * ones, size, o.angle * ones
    raise ValueError(f"unknown motion {motion!r}")


def _sdf(shape: str, u: np.ndarray, v: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Signed distance (pixels, negative inside) in the object's local frame."""
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return np.sqrt(u * u + v * v) - s
    if shape == "ring":
        r = np.sqrt(u * u + v * v)
        half = s * (1 - _RING_INNER) / 2
        return np.abs(r - (s - half)) - half
    if shape == "square":
        return np.maximum(au, av) - s
    if shape == "diamond":
        return (au + av - s) * np.float32(1 / math.sqrt(2))
    if shape == "triangle":  # pointing up (towards -y), circumradius s, inradius s/2
        c = np.float32(math.sqrt(3) / 2)
        return np.maximum(v, c * au - 0.5 * v) - s / 2
    if shape == "cross":
        w = s * _CROSS_HALF_WIDTH
        return np.minimum(np.maximum(au - s, av - w), np.maximum(au - w, av - s))
    raise ValueError(f"unknown shape {shape!r}")


def render(spec: ClipSpec, num_frames: int, height: int = 64, width: int = 64) -> tuple[np.ndarray, list[dict]]:
    """Render ``num_frames`` frames: a uint8 array (F, H, W, 3) and one ground-truth dict per frame:
    ``{"frame", "motion", "background": {"kind", "colour", "rgb"}, "objects": [{"shape", "colour", "rgb",
    "x", "y", "size", "angle", "visible", "area_px"}]}`` with x, y the centre in pixels (column, row),
    size the shape radius in pixels, angle in degrees, area_px the pixels at least half covered by the
    object after occlusion (the second object is drawn on top) and visible = area_px > 0."""
    if num_frames < 0 or height < 1 or width < 1:
        raise ValueError(f"bad clip size: {num_frames} frames of {height}x{width}")
    t_all = np.arange(num_frames, dtype=np.float64)
    traj = [_trajectory(o, spec.motion, t_all, height, width) for o in spec.objects]
    bg = render_background(spec.background_kind, spec.background_colour, height, width)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    areas = np.zeros((len(spec.objects), num_frames), np.int64)
    xs = np.arange(width, dtype=np.float32)[None, None, :]
    ys = np.arange(height, dtype=np.float32)[None, :, None]
    for a in range(0, num_frames, _CHUNK):
        b = min(a + _CHUNK, num_frames)
        img = np.broadcast_to(bg, (b - a, height, width, 3)).astype(np.float32)
        alphas = []
        for o, (x, y, s, ang) in zip(spec.objects, traj):
            cx = x[a:b, None, None].astype(np.float32)
            cy = y[a:b, None, None].astype(np.float32)
            dx, dy = xs - cx, ys - cy
            if spec.motion == "sliding":  # torus distance
                dx = np.mod(dx + width / 2, width) - width / 2
                dy = np.mod(dy + height / 2, height) - height / 2
            th = np.deg2rad(ang[a:b]).astype(np.float32)[:, None, None]
            cos, sin = np.cos(th), np.sin(th)
            u, v = cos * dx + sin * dy, -sin * dx + cos * dy
            alpha = np.clip(0.5 - _sdf(o.shape, u, v, s[a:b, None, None].astype(np.float32)), 0.0, 1.0)
            img += alpha[..., None] * (np.asarray(o.rgb, np.float32) - img)
            alphas.append(alpha)
        for k, alpha in enumerate(alphas):
            eff = alpha.copy()
            for later in alphas[k + 1:]:
                eff *= 1 - later
            areas[k, a:b] = (eff >= 0.5).sum(axis=(1, 2))
        frames[a:b] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    background = {"kind": spec.background_kind, "colour": spec.background_colour, "rgb": list(spec.background_rgb)}
    attributes = []
    for f in range(num_frames):
        objs = []
        for k, (o, (x, y, s, ang)) in enumerate(zip(spec.objects, traj)):
            objs.append({"shape": o.shape, "colour": o.colour, "rgb": list(o.rgb), "x": float(x[f]), "y": float(y[f]),
                         "size": float(s[f]), "angle": float(ang[f]), "visible": bool(areas[k, f] > 0),
                         "area_px": int(areas[k, f])})
        attributes.append({"frame": f, "motion": spec.motion, "background": dict(background), "objects": objs})
    return frames, attributes


def to_pixels(clips: np.ndarray):
    """Rendered clips (N, F, H, W, 3) uint8 -> a float32 torch tensor (N, 3, F, H, W) in [-1, 1], what a video
    codec encodes (torch is imported here only: the world itself is numpy)."""
    import torch

    return torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1)
