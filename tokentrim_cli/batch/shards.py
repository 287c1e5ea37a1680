"""Which items this process runs: shards (``--shard I/N``, for separate jobs) and, within a shard, the
processes of ``accelerate launch`` / torchrun (one per GPU)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Sequence

from ..errors import ConfigError, TokentrimError


def parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return 0, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise ConfigError(f"--shard must look like I/N (e.g. 0/4), got {text!r}")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text}: need 0 <= I < N and N >= 1 (shards are numbered 0..N-1)")
    return i, n


def select(items: Sequence, shard: int = 0, shards: int = 1, process: int = 0, processes: int = 1) -> list:
    """This shard's items (index k belongs to shard k mod N), then this process's share of them (shard-local
    position mod num_processes). Over all shards and processes every item is taken exactly once."""
    mine = [it for k, it in enumerate(items) if k % shards == shard]
    return [it for pos, it in enumerate(mine) if pos % processes == process]


@dataclass
class Processes:
    index: int = 0
    count: int = 1
    local: int = 0
    state: object = None

    @property
    def distributed(self) -> bool:
        return self.count > 1

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def close(self) -> None:
        if self.state is None:
            return
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def detect_processes() -> Processes:
    """Process index/count under ``accelerate launch`` (or torchrun); a plain run never touches torch.distributed."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        world = 1
    if world <= 1:
        return Processes()
    import datetime as _dt

    import torch
    from accelerate import PartialState

    use_cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    # Ranks that finish early wait for the others at the end (so that one rank's exit code 1 does not make the
    # launcher kill ranks that are still working): the timeout must outlast the longest shard.
    state = PartialState(cpu=use_cpu, timeout=_dt.timedelta(days=7))
    if state.num_processes != world:
        raise TokentrimError(f"WORLD_SIZE is {world} but accelerate set up {state.num_processes} process(es); "
                             "launch with `accelerate launch -m tokentrim_cli batch ...` or torchrun")
    return Processes(state.process_index, state.num_processes, max(0, state.local_process_index), state)
