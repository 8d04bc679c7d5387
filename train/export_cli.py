"""``swinv2-export``: any checkpoint -> one safetensors file of weights.

    swinv2-export runs/simmim_swinv2_base_window12_192 swinv2_base_simmim.safetensors
    swinv2-export runs/x/checkpoints/step_00010000 model.safetensors --layout timm

The input is a run directory (its newest checkpoint), a checkpoint directory (DCP, DeepSpeed or
fairscale, any world size, ZeRO-3 included) or a weights file in any layout ``swinv2.load_pretrained``
reads. The output loads into the fine-tuning task (``task.init_from=FILE``), ``load_pretrained``
and, with ``--layout timm``, timm.
"""

from __future__ import annotations

import argparse
import sys

from swinv2 import CheckpointError, export_weights
from swinv2.weights import read_checkpoint
from train.checkpoint import read_model_weights


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="swinv2-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="run directory, checkpoint directory or weights file")
    parser.add_argument("out", help="output .safetensors file")
    parser.add_argument("--layout", choices=["official", "timm"], default="official")
    args = parser.parse_args(argv)
    try:
        weights = read_model_weights(args.checkpoint)
        state = weights if isinstance(weights, dict) else read_checkpoint(weights)
        path = export_weights(state, args.out, layout=args.layout)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {path} ({args.layout} layout, {len(state)} tensors in the source)")


if __name__ == "__main__":
    main()
