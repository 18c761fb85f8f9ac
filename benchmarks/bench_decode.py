#!/usr/bin/env python3
"""Decode benchmark: a thin wrapper over `ceed bench decode` (same options; see `--help`).

python benchmarks/bench_decode.py                              # fresh tiny policy, synthetic observations
python benchmarks/bench_decode.py --checkpoint runs/teacher --dataset data/metaworld
python benchmarks/bench_decode.py --device cuda --dtype bf16 --out benchmarks/results/decode_cuda.json
"""

import sys

from ceed_vla import cli

if __name__ == "__main__":
    sys.exit(cli.main(["bench", "decode", *sys.argv[1:]]))
