#!/usr/bin/env python3
"""Env benchmark: a thin wrapper over `ceed bench env` (same options; see `--help`).

python benchmarks/bench_env.py                      # reach, 128x128, ours vs LeRobot's MetaworldEnv
python benchmarks/bench_env.py --task push --steps 1000 --out benchmarks/results/env_push.json
"""

import sys

from ceed_vla import cli

if __name__ == "__main__":
    sys.exit(cli.main(["bench", "env", *sys.argv[1:]]))
