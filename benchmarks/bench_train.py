"""Training throughput and AR decode latency of the VLA policy (thin wrapper over `ceed bench train`).

    python benchmarks/bench_train.py [--preset tiny] [--image-size 64] [--threads 2]

Prints a table and writes benchmarks/results/train.json.
"""

import sys

from ceed_vla import cli

if __name__ == "__main__":
    sys.exit(cli.main(["bench", "train", *sys.argv[1:]]))
