"""``reslab <verb>``: parse arguments, call the library, print. No logic of its own.

Errors a user can cause (``ReslabError``) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Sequence

from . import __version__
from .errors import ReslabError


def cmd_models(args: argparse.Namespace) -> None:
    from .models.pretrained import available_pretrained
    from .models.registry import MODELS
    from .summary import summarize
    from .tables import format_table, human_count

    bundled = set(available_pretrained())
    rows, records = [], []
    for info in MODELS.values():
        if args.family and info.family != args.family:
            continue
        s = summarize(info.name)
        record = {"name": info.name, "family": info.family, "depth": info.depth, "residual": info.residual,
                  "params": s.params, "flops": s.flops, "input_size": s.input_shape[-1],
                  "paper_error": info.paper_error, "paper_source": info.paper_source,
                  "pretrained": info.name in bundled}
        records.append(record)
        rows.append([info.name, info.family, info.depth, f"{s.params:,}", human_count(s.flops),
                     s.input_shape[-1], "" if info.paper_error is None else f"{info.paper_error:.2f}",
                     "yes" if record["pretrained"] else ""])
    if args.json:
        print(json.dumps(records, indent=2))
        return
    print(format_table(["name", "family", "depth", "params", "FLOPs", "input", "paper err %", "weights"], rows))
    print("\nFLOPs are multiply-adds at the input size shown. Paper errors: CIFAR-10 test (Table 6), "
          "ImageNet top-1 10-crop (Table 2).\nAlso: create_model('resnet', depth=6n+2) / 'plain', "
          "or a .yaml/.json spec (see `reslab summary --help`).")


def cmd_summary(args: argparse.Namespace) -> None:
    from .summary import summarize
    from .tables import format_table, human_count

    overrides = {}
    if args.shortcut:
        overrides["shortcut"] = args.shortcut
    if args.num_classes:
        overrides["num_classes"] = args.num_classes
    if args.in_channels:
        overrides["in_channels"] = args.in_channels
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = summarize(args.model, input_size=args.input_size, **overrides)
    if args.json:
        print(json.dumps(s.to_dict(), indent=2))
        return
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    rows = [[r.name, "x".join(map(str, r.output_shape)), f"{r.params:,}", human_count(r.flops)] for r in s.rows]
    rows.append(["total", "", f"{s.params:,}", human_count(s.flops)])
    print(f"{s.model}, input {'x'.join(map(str, s.input_shape))}")
    print(format_table(["part", "output (CxHxW)", "params", "FLOPs (mult-adds)"], rows))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reslab", description="Deep residual networks: build, train, study, use.")
    parser.add_argument("--version", action="version", version=f"reslab {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("models", help="list the registered models")
    p.add_argument("--family", choices=["cifar", "imagenet"], help="only this family")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_models)

    p = verbs.add_parser("summary", help="per-stage shapes, parameters and FLOPs of a model or spec file")
    p.add_argument("model", help="a model name (e.g. resnet56) or a .yaml/.json spec file")
    p.add_argument("--input-size", type=int, help="square input side (default: 32, or 224 for ImageNet models)")
    p.add_argument("--shortcut", choices=["A", "B", "C"], help="override the shortcut option")
    p.add_argument("--num-classes", type=int, help="override the number of classes")
    p.add_argument("--in-channels", type=int, help="override the input channels (1 for grayscale)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except ReslabError as exc:
        print(f"reslab {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"reslab {args.verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
