"""What every benchmark shares: timing, the machine it ran on, and a server on a free local port."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import onnxruntime
import torch

from digitnet.errors import DigitnetError
from digitnet.utils import cpu_name


def ms(times: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(times) * 1e3, q)), 4)


def timed(fn: Callable[[], Any], repeats: int, warmup: int) -> list[float]:
    """Seconds per call of `fn()`, after `warmup` untimed calls (allocator, thread pools, ORT)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def environment(threads: int | None) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "threads_requested": threads,
    }
    env["onnxruntime"] = onnxruntime.__version__
    if hasattr(os, "getloadavg"):
        env["load_average_1m"] = round(os.getloadavg()[0], 2)
    return env


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the tests start servers the same way)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    """Poll /readyz until the server on `port` answers 200; fail early if `proc` exits."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip()[-500:] if proc.stderr else ""
            raise DigitnetError(
                f"the server exited with code {proc.returncode} before it was ready"
                + (f": {err}" if err else "")
            )
        with contextlib.suppress(httpx.HTTPError):  # not listening yet
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2.0).status_code == 200:
                return
        time.sleep(0.2)
    raise DigitnetError(f"the server on port {port} was not ready after {timeout:.0f} s")
