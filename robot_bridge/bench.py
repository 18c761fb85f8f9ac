"""`ceed bench bridge`: sustained control rate, period jitter and camera-to-command latency over DDS.

One process, real DDS on loopback: a camera node publishes 30 Hz images and joint states, the policy
bridge runs at each requested control rate, and a listener timestamps every command it receives.

    rate    commands received per second (sustained over the window)
    jitter  |period - 1/rate| between received commands, p50 and p99 (ms)
    latency camera frame stamp -> first command computed from that frame (ms, p50 / p99), as the
            bridge publishes it; one value per chunk
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np

from ceed_vla.atomic import atomic_write_json
from ceed_vla.stats import percentile

from .policies import load_policy

DEFAULT_OUT = Path("benchmarks/results/bench_bridge.json")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rates", default="20,50,100", help="control rates to measure, Hz (comma separated)")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured window per rate")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--camera-hz", type=float, default=30.0)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--policy", default="sine", help="sine[:AMPLITUDE] or checkpoint:DIR")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the policy")
    parser.add_argument("--out", type=Path, default=None, help="JSON result file")
    parser.add_argument(
        "--faults",
        action="store_true",
        help="instead: replay fault attacks against the node in every output mode (robot_bridge/faults.py)",
    )
    parser.add_argument(
        "--modes",
        default="trajectory,forward,twist",
        help="--faults: output modes to attack (comma separated)",
    )


def _percentiles(values_ms: list[float]) -> dict[str, float]:
    return {f"p{q}": percentile(values_ms, q) if values_ms else float("nan") for q in (50, 99)}


def measure(rate_hz: float, args: argparse.Namespace, context, policy) -> dict:
    """Run camera + bridge + listener at one control rate; returns the measured numbers."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float64MultiArray

    from . import conversions as conv
    from .node import RELIABLE, PolicyBridgeNode

    size = args.image_size
    params = {
        "instruction": "reach the red goal",
        "control_rate_hz": float(rate_hz),
        "image_width": size,
        "image_height": size,
        "stale_timeout_s": max(2.0 / args.camera_hz, 1.0 / rate_hz),
        "torch_threads": args.threads,
        "dry_run": False,  # the listener plays the controller on the live topic
        "initial_command": [0.0] * 4,  # where the (absent) arm starts
    }
    overrides = [Parameter(k, value=v) for k, v in params.items()]
    name = f"policy_bridge_{rate_hz:g}hz".replace(
        ".", "_"
    )  # one name per run: rosout keeps old names a while
    bridge = PolicyBridgeNode(name, context=context, policy=policy, parameter_overrides=overrides)
    if not bridge.start():
        raise RuntimeError("the bridge failed to configure; see the log")
    peer = Node(f"bench_peer_{name}", context=context)
    arrivals: list[float] = []
    peer.create_subscription(
        Float64MultiArray,
        bridge.config.command_topic,
        lambda _: arrivals.append(time.perf_counter()),
        RELIABLE,
    )
    camera = peer.create_publisher(Image, bridge.config.camera_topic, qos_profile_sensor_data)
    state = peer.create_publisher(JointState, bridge.config.state_topic, qos_profile_sensor_data)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)

    def publish_frame():
        stamp = peer.get_clock().now().to_msg()
        camera.publish(conv.array_to_image(image, stamp))
        state.publish(conv.vector_to_joint_state(np.zeros(4), ["ee_x", "ee_y", "ee_z", "gripper"], stamp))

    camera_timer = peer.create_timer(1.0 / args.camera_hz, publish_frame)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(bridge)
    executor.add_node(peer)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        time.sleep(args.warmup)
        bridge.camera_to_command_s.clear()
        start = time.perf_counter()
        time.sleep(args.seconds)
        end = time.perf_counter()
        status = bridge.core.status(time.monotonic())
        latencies = [s * 1e3 for s in bridge.camera_to_command_s]
    finally:
        peer.destroy_timer(camera_timer)
        bridge.trigger_deactivate()  # stop the control timer and inference before the executor goes
        executor.shutdown()
        spinner.join(5)
        bridge.destroy_node()
        peer.destroy_node()
    window = np.asarray([t for t in arrivals if start <= t <= end])
    periods_ms = np.diff(window) * 1e3
    jitter = np.abs(periods_ms - 1e3 / rate_hz)
    return {
        "target_hz": rate_hz,
        "achieved_hz": float((len(window) - 1) / (window[-1] - window[0])) if len(window) > 1 else 0.0,
        "commands": int(len(window)),
        "jitter_ms": _percentiles(jitter.tolist()),
        "camera_to_command_ms": _percentiles(latencies),
        "inference_ms": status["inference_latency_ema_ms"],
        "hold_ticks": status["hold_ticks"],
        "late_chunks": status["late_chunks"],
        "missed_ticks": status["missed_ticks"],
    }


def _table(rows: list[dict]) -> str:
    head = f"{'target Hz':>9} {'achieved':>9} {'jitter p50':>10} {'p99':>7} {'cam->cmd p50':>12} {'p99':>7} {'infer ms':>8} {'holds':>5}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['target_hz']:>9.0f} {r['achieved_hz']:>9.2f} {r['jitter_ms']['p50']:>10.2f} {r['jitter_ms']['p99']:>7.2f} "
            f"{r['camera_to_command_ms']['p50']:>12.1f} {r['camera_to_command_ms']['p99']:>7.1f} "
            f"{r['inference_ms']:>8.2f} {r['hold_ticks']:>5}"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    if args.faults:
        from . import faults

        args.out = args.out or faults.DEFAULT_OUT
        return faults.main(args)
    args.out = args.out or DEFAULT_OUT
    import rclpy
    import torch
    from rclpy.context import Context

    torch.set_num_threads(args.threads)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    if not rates or min(rates) <= 0:
        raise ValueError(f"--rates {args.rates!r}: give positive rates in Hz, e.g. 20,50,100")
    context = Context()
    rclpy.init(context=context, domain_id=int(os.environ.get("ROS_DOMAIN_ID", 0)) or 40 + os.getpid() % 60)
    rows = []
    try:
        for rate in rates:
            policy = load_policy(args.policy, 4, rate)
            rows.append(measure(rate, args, context, policy))
            print(f"  {rate:.0f} Hz: {rows[-1]['achieved_hz']:.2f} Hz achieved", flush=True)
    finally:
        rclpy.try_shutdown(context=context)
    print(_table(rows))
    record = {
        "benchmark": "bridge",
        "policy": args.policy,
        "camera_hz": args.camera_hz,
        "image_size": args.image_size,
        "seconds_per_rate": args.seconds,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_1m": os.getloadavg()[0],
        },
        "results": rows,
    }
    atomic_write_json(args.out, record)
    print(f"wrote {args.out}")
    return 0
