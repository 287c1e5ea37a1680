"""tokentrim: long autoregressive video generation on Wan2.1 with drift-aware pruning and bounded KV caches."""

import logging as _logging

__version__ = "0.2.0"

# With torchao installed (the ``quantize`` extra, runtime.quantize), diffusers imports it whenever diffusers loads,
# and torchao, torch's pytree and diffusers log import-time warnings about it (CUDA kernels a CPU build cannot
# load, deprecations): noise on every command, whether or not it quantizes. Their warnings only, errors still show.
for _name in ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)
