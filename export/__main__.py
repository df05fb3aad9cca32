"""``python -m export --checkpoint CKPT --out DIR`` (or ``--preset paper --random-weights``)."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m export", description="Export an avatarcam-train checkpoint to "
                                "ONNX (and a TensorRT fp16 engine where TensorRT is installed).")
    p.add_argument("--checkpoint", metavar="PT", help="checkpoint.pt from avatarcam-train (meta or finetune)")
    p.add_argument("--out", required=True, metavar="DIR", help="model directory to write")
    p.add_argument("--preset", help="with --random-weights: tiny, small or paper")
    p.add_argument("--random-weights", action="store_true",
                   help="no checkpoint: random weights of --preset (for timing only; speed does not depend on weights)")
    p.add_argument("--no-tensorrt", action="store_true", help="skip the TensorRT engine even where TensorRT exists")
    args = p.parse_args(argv)
    try:
        from export.onnx_export import ExportError, export_model
    except ImportError as e:
        print(f"export: error: {e.name or e} is not installed; pip install \"avatarcam[train]\"", file=sys.stderr)
        return 1
    if args.random_weights and args.checkpoint:
        print("export: error: --random-weights and --checkpoint exclude each other", file=sys.stderr)
        return 2
    try:
        export_model(args.out, args.checkpoint, preset=args.preset, random_weights=args.random_weights,
                     tensorrt=not args.no_tensorrt)
    except ExportError as e:
        print(f"export: error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # an unknown preset
        print(f"export: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
