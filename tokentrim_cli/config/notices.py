"""What a run says once, on stderr and in its sidecar's ``warnings``, about its preset before it starts: a checkpoint
whose license does not allow commercial use, and an ``absolute``-position cache whose video outgrows the RoPE table
(its documented fallback, ``engine/cache.py``). Known from the settings and the plan alone, before anything loads."""

from __future__ import annotations

from .settings import Config

DEFAULT_ROPE_LEN = 1024  # diffusers' WanTransformer3DModel rope_max_seq_len


def license_label(cfg: Config) -> str:
    """Short form for listings: "Apache-2.0", "academic use only (non-commercial)", "license not stated"."""
    lic = cfg.license
    if lic.name is None:
        return "license not stated"
    return f"{lic.name} (non-commercial)" if lic.commercial is False else lic.name


def license_notice(preset: str, cfg: Config) -> str | None:
    """The line a run prints when its checkpoint may not be used commercially (None otherwise)."""
    lic = cfg.license
    if lic.commercial is not False:
        return None
    return (f"preset {preset}: its checkpoint is licensed {lic.name}, NOT for commercial use; this video is bound by "
            f"that license (source: {lic.source or 'not stated'})")


def positions_notice(cfg: Config, last_frame: int) -> str | None:
    """The line a run prints when ``cache.positions: absolute`` meets the end of the RoPE table at ``last_frame``
    (the run's last latent frame), None otherwise."""
    table = int(cfg.model.transformer.config.get("rope_max_seq_len", DEFAULT_ROPE_LEN))
    if cfg.cache.positions != "absolute" or last_frame < table:
        return None
    return (f"this video reaches latent frame {last_frame}, past the model's {table}-frame RoPE table: from the first "
            f"block that does not fit on, cached keys are positioned packed (the sink right before the window, as "
            f"LongLive's long-video variant does) instead of at their absolute frames")


def run_notices(preset: str, cfg: Config, last_frame: int) -> list[str]:
    """Every notice for a run of ``preset`` whose latent frames end at ``last_frame``."""
    return [n for n in (license_notice(preset, cfg), positions_notice(cfg, last_frame)) if n]
