#!/usr/bin/env python3
"""The cost model's projected latency against control rate, read against success-against-delay (CPU).

    python benchmarks/bench_gpu_report.py --costmodel benchmarks/results/gpu/costmodel.json \\
        [--report reports/full/report.json] [--rates 10,30,80] [--out benchmarks/results/gpu/latency_table.md]

For each scale and decoder of the cost model: the projected ms per chunk as a delay in control ticks at
each rate and, where the report holds a success-against-delay curve for that decoder, the success read
off it and whether the decoder keeps its paused success. Without a curve the table says it is pending
and lists the real-time rows the report does have. Writes Markdown (and prints it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ceed_vla.decoding.costmodel import latency_table

DEFAULT_REPORT = Path(__file__).resolve().parent.parent / "reports" / "full" / "report.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--costmodel", type=Path, required=True, help="costmodel.json of bench_gpu.py")
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT, help="evaluation report.json")
    parser.add_argument("--rates", default="10,30,80", help="control rates in Hz, comma-separated")
    parser.add_argument("--sim-hz", type=float, default=80.0, help="the report's simulation control rate")
    parser.add_argument("--out", type=Path, default=None, help="Markdown path (default: beside --costmodel)")
    args = parser.parse_args(argv)
    if not args.costmodel.is_file():
        parser.error(f"--costmodel {args.costmodel} is not a file; run `bench_gpu.py costmodel` first")
    rates = tuple(float(r) for r in args.rates.split(",") if r.strip())
    if not rates or min(rates) <= 0:
        parser.error(f"--rates {args.rates!r} must be positive numbers")
    record = json.loads(args.costmodel.read_text())
    report = json.loads(args.report.read_text())
    text, _ = latency_table(record, report, rates, args.sim_hz)
    out = args.out or args.costmodel.with_name("latency_table.md")
    out.write_text(text)
    print(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
