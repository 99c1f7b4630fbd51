"""A `digitnet serve` under test in a subprocess, optionally from another source tree (a baseline),
with the RSS of its whole process tree (every worker) sampled every 100 ms."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

from digitnet.bench.common import free_port, wait_ready

HOST = "127.0.0.1"


class ServerUnderTest:
    """`digitnet serve` in a subprocess (optionally another source tree), RSS sampled meanwhile."""

    def __init__(self, *, model: str, workers: int, backend: str, src: str | None = None) -> None:
        self.port = free_port()
        env = dict(os.environ)
        if src is not None:
            env["PYTHONPATH"] = str(Path(src).resolve() / "src")
        cmd = [sys.executable, "-m", "digitnet", "serve", "--host", HOST, "--port", str(self.port),
               "--model", model, "--workers", str(workers), "--backend", backend,
               "--log-level", "warning"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env)  # fmt: skip
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> ServerUnderTest:
        wait_ready(self.port, self.proc, timeout=180)
        self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sampler.join(timeout=5)
        self.proc.terminate()
        try:
            self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            for child in self.tree()[1:]:
                child.kill()
            self.proc.kill()
            self.proc.communicate()

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def workers(self) -> list[int]:
        """The live worker processes (not the supervisor, not multiprocessing's resource tracker)."""
        out = []
        for p in self.tree()[1:]:
            with contextlib.suppress(psutil.Error):  # gone, or a zombie not yet reaped
                if p.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(p.cmdline()):
                    out.append(p.pid)
        return sorted(out)

    def rss(self) -> int:
        total = 0
        for p in self.tree():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def _sample(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(0.1):
            self.samples.append((time.monotonic() - t0, self.rss()))

    def mark(self) -> int:
        return len(self.samples)

    def peak_mb(self, since: int = 0) -> float:
        window = [r for _, r in self.samples[since:]] or [self.rss()]
        return round(max(window) / 2**20, 1)

    def healthy(self) -> bool:
        try:
            return httpx.get(f"http://{HOST}:{self.port}/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False
