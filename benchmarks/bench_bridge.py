"""Bridge control rate, period jitter and camera-to-command latency over DDS (see ceed_vla.robot_bridge.bench).

    python benchmarks/bench_bridge.py [--rates 20,50,100] [--seconds 6] [--policy checkpoint:DIR]
    python benchmarks/bench_bridge.py --faults [--modes trajectory,forward,twist]

Same as `ceed bench bridge ...`; writes benchmarks/results/bench_bridge.json, or with --faults the
fault-injection record benchmarks/results/bench_bridge_faults.json.
"""

import sys

from ceed_vla.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "bridge", *sys.argv[1:]]))
