"""`python -m export <family> --checkpoint CKPT`: publish a checkpoint as a new model version."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.core import ExportError, publish, split_batching_options, with_batching
from families.registry import REGISTRY, family


def parse_options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--option expects key=value, got {pair!r}")
        options[key.replace("-", "_")] = value
    return options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    parser.add_argument("family", choices=sorted(REGISTRY))
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--name", help="model name in the repository (default: the family name)")
    parser.add_argument("--version", type=int, help="version number (default: latest + 1)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="export option (repeatable): batching limits (max_batch_size, max_queue_delay_ms, "
                             "max_queue_size, default_timeout_ms) for every family, plus the family's own")
    parser.add_argument("--no-torchscript", dest="torchscript", action="store_false",
                        help="write the ONNX graphs without their TorchScript twins (GraphSpec.torchscript)")
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        parser.error(f"checkpoint {args.checkpoint} does not exist")
    batching, options = split_batching_options(parse_options(args.option))
    try:
        plan = family(args.family).load("export").plan_from_checkpoint(args.checkpoint, options)
        path = publish(with_batching(plan, batching), args.repository, args.name or args.family, args.version,
                       torchscript=args.torchscript)
    except ExportError as exc:
        print(f"export refused: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
