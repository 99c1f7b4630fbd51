"""`digitnet bench serve`: a load generator for the HTTP service, 127.0.0.1 only.

It starts `digitnet serve` on a free local port (or targets a given loopback URL), then drives it
from `concurrency` keep-alive connections for `duration_s` seconds or `max_requests` requests,
whichever ends first, and reports requests/s, latency percentiles and errors.

The client is a minimal HTTP/1.1 writer/reader on asyncio streams, not httpx: client and server
share the same few cores, so the generator must spend as little CPU per request as possible, or it
measures itself. Each good request is a single-image JSON prediction (`{"pixels": 784 numbers}`);
in `mixed` mode a share of requests is bad input of every class, and the good ones must keep
succeeding (bad ones must get a 4xx, never a 5xx or a dropped connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import subprocess
import sys
import time
import urllib.parse
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from digitnet.bench.common import free_port, wait_ready
from digitnet.errors import ConfigError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
REQUEST_TIMEOUT_S = 10.0  # a request with no answer by then is an error (and its connection is dropped)


@dataclass(frozen=True)
class ServeBenchConfig:
    duration_s: float = 30.0
    concurrency: int = 8
    max_requests: int = 1_000_000
    mode: str = "good"  # "good" | "mixed"
    bad_fraction: float = 0.25  # mixed mode: share of requests that are bad input
    warmup_s: float = 2.0
    url: str | None = None  # an already running server on loopback; None = start one
    model: str = "default"
    workers: int = 1
    backend: str = "auto"
    max_concurrency: int = 64  # the server's cap; above `concurrency` so the bench measures, not refuses

    def __post_init__(self) -> None:
        if not 0.5 <= self.duration_s <= 600:
            raise ConfigError(f"duration must be between 0.5 and 600 s, got {self.duration_s}")
        if not 1 <= self.concurrency <= 256:
            raise ConfigError(f"concurrency must be between 1 and 256, got {self.concurrency}")
        if not 1 <= self.max_requests <= 10_000_000:
            raise ConfigError(f"max_requests must be between 1 and 10,000,000, got {self.max_requests}")
        if self.mode not in ("good", "mixed"):
            raise ConfigError(f"mode must be 'good' or 'mixed', got {self.mode!r}")
        if not 0.0 < self.bad_fraction < 1.0:
            raise ConfigError(f"bad_fraction must be between 0 and 1, got {self.bad_fraction}")
        if not 0 <= self.warmup_s <= 60:
            raise ConfigError(f"warmup must be between 0 and 60 s, got {self.warmup_s}")
        if self.backend not in ("auto", "torch", "onnx"):
            raise ConfigError(f"backend must be auto, torch or onnx, got {self.backend!r}")
        if not 1 <= self.workers <= 16:
            raise ConfigError(f"workers must be between 1 and 16, got {self.workers}")
        if self.url is not None:
            host = urllib.parse.urlsplit(self.url).hostname
            if host not in LOOPBACK:
                raise ConfigError(f"bench serve only targets this machine (127.0.0.1), not {host!r}")


def _request(path: str, body: bytes, content_type: str, host: str, extra: str = "") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


def _multipart(data: bytes, field: str = "file", filename: str = "x.png") -> tuple[bytes, str]:
    boundary = "digitnetbenchboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def good_requests(host: str, n: int = 16, seed: int = 0) -> list[bytes]:
    """`n` single-image JSON requests: synthetic strokes, uint8 0–255, MNIST polarity."""
    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[0:28, 0:28]
    for _ in range(n):
        img = np.zeros((28, 28), np.float32)
        for _stroke in range(rng.integers(1, 4)):  # a few thick line segments
            (y0, x0), (y1, x1) = rng.integers(5, 23, size=(2, 2))
            t = np.clip(
                ((yy - y0) * (y1 - y0) + (xx - x0) * (x1 - x0)) / max(1, (y1 - y0) ** 2 + (x1 - x0) ** 2),
                0,
                1,
            )
            d = np.hypot(yy - (y0 + t * (y1 - y0)), xx - (x0 + t * (x1 - x0)))
            img = np.maximum(img, np.clip(2.0 - d, 0, 1))
        pixels = (img * 255).round().astype(int).ravel().tolist()
        out.append(_request("/v1/predict", json.dumps({"pixels": pixels}).encode(), "application/json", host))
    return out


def bad_requests(host: str) -> list[tuple[str, bytes]]:
    """One request per bad-input class, each answered with a 4xx by a healthy server."""

    def png(size: tuple[int, int] = (28, 28)) -> bytes:
        buf = io.BytesIO()
        Image.new("L", size, 0).save(buf, "PNG")
        return buf.getvalue()

    tiff = b"II*\x00" + b"\x00" * 60
    cases = {
        "invalid_json": (b'{"pixels": [1, 2', "application/json"),
        "wrong_shape": (json.dumps({"pixels": [0] * 100}).encode(), "application/json"),
        "nan": (b'{"pixels": [' + b",".join([b"NaN"] * 784) + b"]}", "application/json"),
        "out_of_range": (json.dumps({"pixels": [300] * 784}).encode(), "application/json"),
        "not_an_image": _multipart(b"hello, this is text, not an image"),
        "truncated_png": _multipart(png()[:40]),
        "tiff": _multipart(tiff, filename="x.tif"),
        "bad_content_type": (b"pixels", "text/plain"),
    }
    out = [(name, _request("/v1/predict", body, ctype, host)) for name, (body, ctype) in cases.items()]
    # Declares 5 MB (over the 4 MB cap) and sends none of it: refused at the headers, connection closed.
    out.append(
        (
            "too_large",
            _request("/v1/predict", b"", "application/json", host).replace(
                b"Content-Length: 0", b"Content-Length: 5000000"
            ),
        )
    )
    return out


class _Conn:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def roundtrip(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, close = 0, False
        for line in lines[1:]:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key == "content-length":
                length = int(value)
            elif key == "connection" and value.strip().lower() == "close":
                close = True
        body = await self.reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def _drive(
    cfg: ServeBenchConfig, host: str, port: int, deadline: float, limit: int, record: bool
) -> dict[str, Any]:
    hosthdr = f"{host}:{port}"
    good = good_requests(hosthdr)
    bad = bad_requests(hosthdr) if cfg.mode == "mixed" else []
    lat: list[float] = []
    stats: dict[str, Any] = {
        "good": 0,
        "good_errors": 0,
        "bad": 0,
        "bad_4xx": 0,
        "bad_errors": 0,
        "bad_status": {},
        "error_samples": [],
    }
    issued = 0
    bad_every = max(1, round(1 / cfg.bad_fraction)) if bad else 0

    async def worker(wid: int) -> None:
        nonlocal issued
        conn = _Conn(host, port)
        i = wid
        try:
            while time.perf_counter() < deadline and issued < limit:
                issued += 1
                i += 1
                is_bad = bad_every and i % bad_every == 0
                name, raw = bad[(i // bad_every) % len(bad)] if is_bad else ("good", good[i % len(good)])
                t0 = time.perf_counter()
                try:
                    status, body = await asyncio.wait_for(conn.roundtrip(raw), REQUEST_TIMEOUT_S)
                except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as exc:
                    status, body = 0, repr(exc).encode()
                    await conn.close()
                dt = time.perf_counter() - t0
                if not record:
                    continue
                if not is_bad:
                    stats["good"] += 1
                    if status == 200 and b'"digit":' in body:
                        lat.append(dt)
                    else:
                        stats["good_errors"] += 1
                        if len(stats["error_samples"]) < 5:
                            stats["error_samples"].append(
                                f"{status}: {body[:200].decode('utf-8', 'replace')}"
                            )
                else:
                    stats["bad"] += 1
                    key = f"{name}:{status}"
                    stats["bad_status"][key] = stats["bad_status"].get(key, 0) + 1
                    if 400 <= status < 500 and body.startswith(b'{"error":'):
                        stats["bad_4xx"] += 1
                    else:
                        stats["bad_errors"] += 1
        finally:
            await conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(cfg.concurrency)))
    elapsed = time.perf_counter() - start
    stats["elapsed_s"] = round(elapsed, 3)
    stats["latencies"] = lat
    return stats


def start_server(cfg: ServeBenchConfig, port: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "digitnet",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        cfg.model,
        "--workers",
        str(cfg.workers),
        "--backend",
        cfg.backend,
        "--max-concurrency",
        str(cfg.max_concurrency),
        "--log-level",
        "warning",
    ]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def run_bench_serve(cfg: ServeBenchConfig) -> dict[str, Any]:
    """Run the benchmark; returns a JSON-able dict of the figures."""
    proc = None
    if cfg.url is None:
        port = free_port()
        proc = start_server(cfg, port)
    else:
        port = urllib.parse.urlsplit(cfg.url).port or 80
    host = "127.0.0.1"
    try:
        wait_ready(port, proc)
        if cfg.warmup_s:
            asyncio.run(_drive(cfg, host, port, time.perf_counter() + cfg.warmup_s, cfg.max_requests, False))
        load0 = os.getloadavg()[0]
        stats = asyncio.run(
            _drive(cfg, host, port, time.perf_counter() + cfg.duration_s, cfg.max_requests, True)
        )
    finally:
        stderr = ""
        if proc is not None:
            proc.terminate()
            try:
                _, err = proc.communicate(timeout=15)
                stderr = err.decode("utf-8", "replace")[-2000:]
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    lat = np.asarray(stats.pop("latencies"), dtype=np.float64) * 1000.0
    ok = int(lat.size)
    pct = (lambda q: round(float(np.percentile(lat, q)), 2)) if ok else (lambda q: None)
    result = {
        "config": asdict(cfg),
        "good_ok": ok,
        "good_per_s": round(ok / stats["elapsed_s"], 1),
        "total_per_s": round((stats["good"] + stats["bad"]) / stats["elapsed_s"], 1),
        "latency_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": pct(100)},
        **stats,
        "loadavg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
    }
    if stderr.strip() and (stats["good_errors"] or stats["bad_errors"]):
        result["server_stderr_tail"] = stderr
    return result
