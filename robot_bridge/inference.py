"""Background inference: keeps the bridge's action queue filled from the policy.

The worker thread polls `BridgeCore.inference_request` a few times per control period; when the core
hands out a request it runs `policy.predict_action_chunk` and delivers the chunk. Decoding runs off
the control thread, so the control timer keeps its rate however long a chunk takes.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import torch

from ceed_vla.scheduler import decoded_bins, policy_accepts_init_guess, predict_chunk

from .core import BridgeCore

log = logging.getLogger(__name__)


def decode_iterations(policy) -> float:
    """Mean Jacobi/AR iterations of the policy's last decode, NaN for policies that do not decode."""
    stats = getattr(policy, "last_decode_stats", None)
    iterations = getattr(stats, "iterations", None)
    if iterations is None:
        return float("nan")
    return float(torch.as_tensor(iterations, dtype=torch.float32).mean())


class InferenceWorker:
    def __init__(
        self,
        policy,
        core: BridgeCore,
        poll_s: float,
        on_error=None,
        clock=time.monotonic,
        predict_kwargs=None,
    ):
        self.policy = policy
        self.predict_kwargs = predict_kwargs or {}  # e.g. {"decoding": DecodeConfig(...)} for the VLA
        self.clock = clock  # the clock the core's observations are stamped with
        self.core = core
        self.warm_start = policy_accepts_init_guess(policy)
        self.poll_s = poll_s
        self.on_error = on_error or (lambda exc: log.exception("inference failed", exc_info=exc))
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ceed-inference", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._thread = None

    def wake(self) -> None:
        """Ask for an immediate check (the control timer calls this every tick)."""
        self._wake.set()

    def step(self) -> bool:
        """Serve one request if the core has one; returns whether a chunk was predicted."""
        try:
            request = self.core.inference_request(self.clock())
        except Exception as exc:  # the forward model failed (planning ahead): as a policy failure
            self.core.inference_failed()
            self.on_error(exc)
            return False
        if request is None:
            return False
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                if request.reset_policy:
                    self.policy.reset()
                chunk, _ = predict_chunk(
                    self.policy, request.observation, self.predict_kwargs, request.chunk, self.warm_start
                )  # [1, K, D]
            chunk = np.asarray(torch.as_tensor(chunk, dtype=torch.float64).cpu())[0]  # [K, D]
            bins = decoded_bins(self.policy)
        except Exception as exc:  # a policy bug must not take the control loop down: hold and report
            self.core.inference_failed()
            self.on_error(exc)
            return False
        latency = time.perf_counter() - start
        try:
            self.core.deliver(request, chunk, latency, decode_iterations(self.policy), bins)
        except ValueError as exc:  # a chunk of the wrong shape: the policy does not fit this bridge
            self.core.inference_failed()
            self.on_error(exc)
            return False
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.step():
                self._wake.wait(self.poll_s)
                self._wake.clear()
