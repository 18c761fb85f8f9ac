"""`ceed checkpoint convert OLD NEW`: rewrite a checkpoint of the first ceed layout (config.json without
`type`, normalizer.json) in LeRobot's layout, which `ceed` jobs and LeRobot's tools both read.

    ceed checkpoint convert runs/teacher/final runs/teacher/final-lerobot
    lerobot-eval --policy.path=runs/teacher/final-lerobot ...
"""

from __future__ import annotations

import argparse
from pathlib import Path


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="checkpoint directory to read (either layout)")
    parser.add_argument("target", help="new checkpoint directory (must not exist)")


def main(args: argparse.Namespace) -> int:
    from .modeling import VLAPolicy

    target = Path(args.target)
    if target.exists():
        raise SystemExit(f"ceed checkpoint convert: {target} already exists; choose a new directory")
    VLAPolicy.from_pretrained(args.source).save_pretrained(target)
    print(f"wrote {target} in LeRobot's layout (type 'ceed')")
    return 0
