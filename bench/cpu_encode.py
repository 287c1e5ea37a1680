"""How long one prompt takes to encode on the CPU (``runtime.text_encoder_device: cpu``): UMT5-XXL's shapes with
random weights built as a run builds them (``components.build_text_encoder``: drawn and cast in bfloat16 as on a
GPU run, UMT5's ``wo`` kept in float32; and all float32), a 512-token prompt (Wan pads every prompt to 512), on the
threads this process may use.

Only ``--layers`` of the encoder's 24 are built (all 24 take 12.5 GiB in bf16); each layer costs the same, so the
table extrapolates the median time per layer (over ``--repeats`` encodes, after one warm-up) to 24 layers.

    python bench/cpu_encode.py [--layers 2] [--repeats 3]

JSON: bench/results/cpu_encode.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tokentrim_cli.config.settings import Weights  # noqa: E402
from tokentrim_cli.engine.components import build_text_encoder  # noqa: E402

XXL_LAYERS = 24
XXL = {"vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_heads": 64,
       "feed_forward_proj": "gated-gelu"}


def seconds_per_layer(layers: int, dtype: torch.dtype, repeats: int) -> float:
    """Median seconds of one 512-token encode, divided by ``layers``."""
    model = build_text_encoder(Weights(config={**XXL, "num_layers": layers}, weights="random:0"), None, dtype, "cpu")
    ids = torch.randint(0, XXL["vocab_size"], (1, 512))
    mask = torch.ones_like(ids)
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            t = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            if i:  # the first is a warm-up
                times.append(time.perf_counter() - t)
    return statistics.median(times) / layers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu_encode.json"))
    args = ap.parse_args()
    rows = {}
    for name, dtype in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        per_layer = seconds_per_layer(args.layers, dtype, args.repeats)
        rows[name] = {"seconds_per_layer": per_layer, "seconds_24_layers": per_layer * XXL_LAYERS}
    result = {"threads": torch.get_num_threads(), "layers_built": args.layers, "repeats": args.repeats,
              "tokens": 512, "torch": torch.__version__, "dtypes": rows}
    print(f"UMT5-XXL prompt encode on the CPU ({result['threads']} threads; {args.layers} of 24 layers built)")
    print(f"{'dtype':10s} {'s/layer':>8s} {'s, 24 layers':>13s}")
    for name, r in rows.items():
        print(f"{name:10s} {r['seconds_per_layer']:8.3f} {r['seconds_24_layers']:13.1f}")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
