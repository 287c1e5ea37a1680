"""``tokentrim batch``: many videos from a prompts file, resumable, shardable, spread over GPUs and nodes.

Flow: read and validate the whole prompts file (``prompts.py``; plus --set, --preset, every item's preset
(``presets.py``) and the name template) before any model loads; give every item a deterministic seed and a
unique, filesystem-safe name (``names.py``); keep this shard's and this process's items (``shards.py``); then
run each through :func:`tokentrim_cli.run.job.run_job`, reusing loaded models, and append one line per finished
item to ``OUT_DIR/manifest.jsonl`` (``manifest.py``). :class:`~.run.BatchRun` (``run.py``) ties them together.

The helpers of the first four modules load nothing and are tested directly.
"""

from .manifest import append_line, read_manifest, settings_hash
from .names import NAME_LIMIT, assign_names, check_template, safe_name, slugify
from .prompts import Item, item_seed, read_prompts
from .run import BatchRun, Options, run_batch
from .shards import parse_shard, select

__all__ = ["BatchRun", "Item", "NAME_LIMIT", "Options", "append_line", "assign_names", "check_template", "item_seed",
           "parse_shard", "read_manifest", "read_prompts", "run_batch", "safe_name", "select", "settings_hash",
           "slugify"]
