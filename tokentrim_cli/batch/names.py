"""File names of a batch's videos: safe on every common filesystem, unique, from ``--name-template``."""

from __future__ import annotations

import re
import string
import unicodedata
from typing import Sequence

from ..config.presets import default_preset as configured_preset, preset_label
from ..errors import ConfigError
from .prompts import Item

TEMPLATE_FIELDS = ("index", "slug", "seed", "preset")
DEFAULT_TEMPLATE = "{index:04d}-{slug}-{seed}"
NAME_LIMIT = 100  # characters before .mp4; leaves room for .partial.mp4 and the hidden temporary names
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}


def slugify(text: str, limit: int = 48) -> str:
    """The prompt part of a default name: lowercase ASCII words joined by '-'."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "video"


def check_template(template: str) -> None:
    """Reject unknown or unusable fields now (exit 2) rather than at the first item."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"--name-template {template!r}: {exc}") from None
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS:
            raise ConfigError(f"--name-template {template!r}: unknown field {{{name}}}; allowed: "
                              + ", ".join("{%s}" % f for f in TEMPLATE_FIELDS))
    try:
        template.format(index=0, slug="video", seed=1, preset="tiny")
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise ConfigError(f"--name-template {template!r}: {exc}") from None


def safe_name(text: str, limit: int = NAME_LIMIT) -> str:
    """A file stem that is valid on every common filesystem: ASCII letters, digits, '.', '_' and '-' only (path
    separators, spaces, control characters, emoji become '-'), no leading dot or dash, no trailing dot, no
    Windows device name (CON, NUL, COM1, ...), at most ``limit`` characters, never empty."""
    text = unicodedata.normalize("NFKD", text)
    if text.lower().endswith(".mp4"):
        text = text[:-4]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text)
    name = re.sub(r"\.{2,}", ".", name)
    name = re.sub(r"-{2,}", "-", name)
    name = name.strip("._-")
    name = name[:limit].rstrip("._-")
    if name.lower().endswith(".partial"):  # NAME.partial.mp4 is where another item's unfinished video goes
        name = name[: -len(".partial")] + "-partial"
    if not name:
        name = "video"
    if name.split(".")[0].upper() in _RESERVED:
        name = ("_" + name)[:limit]
    return name


def item_preset_label(ref: str | None, default: str | None) -> str:
    """The preset an item runs, as named in ``{preset}`` and in records (the run's default when none is given)."""
    return preset_label(ref or default or configured_preset())


def assign_names(items: Sequence[Item], template: str = DEFAULT_TEMPLATE, default_preset: str | None = None,
                 seeds: Sequence[int] | None = None, limit: int = NAME_LIMIT) -> list[str]:
    """Safe, unique (case-insensitively) names for all items, in index order: a repeated name gets -2, -3, ..."""
    taken: set[str] = set()
    names = []
    for k, it in enumerate(items):
        seed = seeds[k] if seeds is not None else it.seed
        if it.output:
            base = safe_name(it.output, limit)
        else:
            base = safe_name(template.format(index=it.index, slug=slugify(it.prompt), seed=seed,
                                             preset=item_preset_label(it.preset, default_preset)), limit)
        name, n = base, 1
        while name.lower() in taken:
            n += 1
            suffix = f"-{n}"
            name = base[: limit - len(suffix)].rstrip("._-") + suffix
        taken.add(name.lower())
        names.append(name)
    return names
