"""Consistency distillation, measured: the entry point of the study in `ceed_vla.distill.study`
(run `python benchmarks/bench_distill.py --help`; the module's docstring says what each subcommand
measures). Results go to benchmarks/results/ by default."""

from __future__ import annotations

import sys
from pathlib import Path

from ceed_vla.distill import study

RESULTS = Path(__file__).resolve().parent / "results"
variants = study.variants


def main(argv=None) -> int:
    return study.main(argv, results=RESULTS)


if __name__ == "__main__":
    sys.exit(main())
