"""`digitnet bench serve --hostile`: the service under hostile load, server and load on one machine.

Five scenarios, each against a fresh `digitnet serve` on 127.0.0.1 whose memory (RSS of the whole
process tree, all workers) is sampled every 100 ms, with `/healthz` probed on its own connection
(from a thread of its own, so the load generator's event loop cannot delay it):

- `big`: 8 concurrent uploads of a 6300×6300 RGBA PNG (≈ 190 KB each, 159 MB decoded);
- `slow`: 100 connections that each send 4 MB of a body quickly, then one byte every 2.5 s;
- `burst`: 200 single-photo uploads (1200×900 JPEG) at once, one connection each;
- `steady`: 16 keep-alive connections for 60 s, 70 % good requests (photos as multipart, photos
  as base64, 28×28 pixels, a third each; the photos are JPEGs of a handwritten 7, half 1200×900
  and half 3024×4032 as a phone takes them) and 30 % bad ones of every class;
- `kill` (with `--workers N` ≥ 2): steady load while one worker is killed with SIGKILL.

`--baseline-src DIR` runs every scenario a second time against the server of another source tree
(`PYTHONPATH=DIR/src`, e.g. the commit before a change), so a figure and its baseline come from the
same run on the same machine. The client is raw asyncio HTTP/1.1 (see `bench.serve`), cheap enough
to share the cores with the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from digitnet.bench.payloads import big_rgba_png, good_mix, photo_jpeg
from digitnet.bench.serve import _Conn, _multipart, _request, bad_requests
from digitnet.bench.server_process import HOST, ServerUnderTest
from digitnet.errors import ConfigError
from digitnet.utils import cpu_name, first_line

SCENARIOS = ("big", "slow", "burst", "steady", "kill")


@dataclass(frozen=True)
class HostileConfig:
    scenarios: tuple[str, ...] = ("big", "slow", "burst", "steady")
    workers: int = 1
    model: str = "default"
    backend: str = "auto"
    baseline_src: str | None = None
    scale: float = 1.0  # < 1 for a quick check: fewer connections, shorter runs
    steady_s: float = 60.0

    def __post_init__(self) -> None:
        unknown = set(self.scenarios) - set(SCENARIOS)
        if unknown or not self.scenarios:
            raise ConfigError(f"scenarios must be among {', '.join(SCENARIOS)}, got {sorted(unknown)}")
        if "kill" in self.scenarios and self.workers < 2:
            raise ConfigError("the kill scenario needs --workers 2 or more")
        if not 1 <= self.workers <= 16:
            raise ConfigError(f"workers must be between 1 and 16, got {self.workers}")
        if not 0.05 <= self.scale <= 1.0:
            raise ConfigError(f"scale must be between 0.05 and 1, got {self.scale}")
        if not 5 <= self.steady_s <= 600:
            raise ConfigError(f"steady duration must be between 5 and 600 s, got {self.steady_s}")
        if self.baseline_src is not None and not (Path(self.baseline_src) / "src" / "digitnet").is_dir():
            raise ConfigError(f"{self.baseline_src}: no src/digitnet there to run as the baseline")

    def n(self, full: int) -> int:
        return max(2, round(full * self.scale))


class HealthProbe:
    """GET /healthz every 250 ms on its own keep-alive connection, from a thread of its own: the
    load generator's event loop (which pushes 400 MB in the `slow` scenario) must not delay the
    probe and be counted as the server's latency. Latencies in seconds; 10 s for no answer."""

    def __init__(self, port: int) -> None:
        self.port, self.latencies = port, list[float]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="healthz-probe", daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                conn = conn or http.client.HTTPConnection(HOST, self.port, timeout=10)
                conn.request("GET", "/healthz")
                reply = conn.getresponse()
                reply.read()
                self.latencies.append(time.perf_counter() - t0 if reply.status == 200 else 10.0)
            except (OSError, http.client.HTTPException):
                self.latencies.append(10.0)
                if conn is not None:
                    conn.close()
                conn = None
            self._stop.wait(0.25)
        if conn is not None:
            conn.close()


async def _one_shot(port: int, raw: bytes, timeout: float) -> tuple[int, float]:
    """One request on a connection of its own: (status or 0, seconds)."""
    t0 = time.perf_counter()
    conn = _Conn(HOST, port)
    try:
        status, _ = await asyncio.wait_for(conn.roundtrip(raw), timeout)
    except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError):
        status = 0
    finally:
        await conn.close()
    return status, time.perf_counter() - t0


def _statuses(codes: list[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in codes:
        out[str(c)] = out.get(str(c), 0) + 1
    return dict(sorted(out.items()))


def _health(lat: list[float]) -> dict[str, Any]:
    a = np.asarray(lat or [0.0]) * 1000
    return {
        "healthz_max_ms": round(float(a.max()), 1),
        "healthz_p99_ms": round(float(np.percentile(a, 99)), 1),
    }


# ------------------------------------------------------------------------------- scenarios


async def _big(srv: ServerUnderTest, cfg: HostileConfig) -> dict[str, Any]:
    body, ctype = _multipart(big_rgba_png(), filename="big.png")
    raw = _request("/v1/predict", body, ctype, f"{HOST}:{srv.port}")
    n, mark = cfg.n(8), srv.mark()
    with HealthProbe(srv.port) as probe:
        res = await asyncio.gather(*(_one_shot(srv.port, raw, 120) for _ in range(n)))
    lat = probe.latencies
    await asyncio.sleep(3.0)  # then: is the memory given back, or does RSS stay at its peak?
    after = round(srv.rss() / 2**20, 1)
    return {"uploads": n, "upload_bytes": len(body), "statuses": _statuses([s for s, _ in res]),
            "max_s": round(max(t for _, t in res), 2), "peak_rss_mb": srv.peak_mb(mark),
            "rss_mb_3s_after": after, "alive_after": srv.healthy(), **_health(lat)}  # fmt: skip


async def _slow_one(port: int, size: int, drip_s: float, limit_s: float) -> tuple[int, float]:
    """Send `size - 64` bytes of a `size`-byte body, then one byte per `drip_s`: (status, seconds
    until the server closed the connection); status 0 / limit_s when it never did."""
    t0 = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return -1, 0.0
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()  # fmt: skip
    chunk = b" " * 65536
    status = 0
    try:
        writer.write(head)
        left = size - 64
        while left > 0:
            writer.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
            await writer.drain()
        while time.perf_counter() - t0 < limit_s:
            try:
                data = await asyncio.wait_for(reader.read(65536), drip_s)
            except TimeoutError:
                writer.write(b" ")
                await writer.drain()
                continue
            if not data:
                break
            if data.startswith(b"HTTP/1.1 "):
                status = int(data[9:12])
    except (OSError, ValueError):  # refused mid-upload: the answer may still be in our buffer
        with contextlib.suppress(OSError, ValueError, TimeoutError):
            data = await asyncio.wait_for(reader.read(65536), 1.0)
            status = int(data[9:12]) if data.startswith(b"HTTP/1.1 ") else status
    finally:
        writer.close()
    return status, time.perf_counter() - t0


async def _slow(srv: ServerUnderTest, cfg: HostileConfig) -> dict[str, Any]:
    n, mark, limit = cfg.n(100), srv.mark(), 40.0
    with HealthProbe(srv.port) as probe:
        res = await asyncio.gather(*(_slow_one(srv.port, 4_000_000, 2.5, limit) for _ in range(n)))
    lat = probe.latencies
    closed = [t for s, t in res if t < limit - 0.5]
    return {"connections": n, "statuses": _statuses([s for s, _ in res]), "closed_by_server": len(closed),
            "closed_within_s": round(max(closed), 1) if closed else None, "peak_rss_mb": srv.peak_mb(mark),
            "alive_after": srv.healthy(), **_health(lat)}  # fmt: skip


async def _burst(srv: ServerUnderTest, cfg: HostileConfig) -> dict[str, Any]:
    body, ctype = _multipart(photo_jpeg(7), filename="photo.jpg")
    raw = _request("/v1/predict", body, ctype, f"{HOST}:{srv.port}")
    n, mark = cfg.n(200), srv.mark()
    res = await asyncio.gather(*(_one_shot(srv.port, raw, 30) for _ in range(n)))
    ok2 = sum(1 for s, t in res if s == 200 and t <= 2.0)
    return {"requests": n, "statuses": _statuses([s for s, _ in res]), "ok_within_2s": ok2,
            "ok_within_2s_pct": round(100 * ok2 / n, 1),
            "server_errors": sum(1 for s, _ in res if s >= 500),
            "p50_s": round(float(np.median([t for _, t in res])), 3),
            "max_s": round(max(t for _, t in res), 3),
            "peak_rss_mb": srv.peak_mb(mark)}  # fmt: skip


async def _steady(srv: ServerUnderTest, cfg: HostileConfig, duration: float, kill_at: float | None = None):
    host = f"{HOST}:{srv.port}"
    good, bad = good_mix(host), bad_requests(host)
    rng = np.random.default_rng(0)
    lat: dict[str, list[float]] = {k: [] for k in ("photo", "base64", "pixels")}
    errors: list[str] = []
    counts = {"good": 0, "good_errors": 0, "bad": 0, "bad_4xx": 0, "bad_errors": 0}
    per_second: dict[int, int] = {}
    t_start = time.perf_counter()
    deadline = t_start + duration
    rss_mark, killed = srv.mark(), dict[str, Any]()

    async def worker(wid: int) -> None:
        conn, local = _Conn(HOST, srv.port), np.random.default_rng(wid)
        while time.perf_counter() < deadline:
            is_bad = local.random() < 0.3
            kind, raw = bad[int(local.integers(len(bad)))] if is_bad else good[int(local.integers(len(good)))]
            t0 = time.perf_counter()
            try:
                status, body = await asyncio.wait_for(conn.roundtrip(raw), 10)
            except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as exc:
                status, body = 0, repr(exc).encode()
                await conn.close()
            dt = time.perf_counter() - t0
            if is_bad:
                counts["bad"] += 1
                ok = 400 <= status < 500 and body.startswith(b'{"error":')
                counts["bad_4xx" if ok else "bad_errors"] += 1
            else:
                counts["good"] += 1
                if status == 200 and b'"digit":' in body:
                    lat[kind].append(dt)
                    sec = int(t0 - t_start)
                    per_second[sec] = per_second.get(sec, 0) + 1
                else:
                    counts["good_errors"] += 1
                    if len(errors) < 5:
                        errors.append(f"{kind} {status}: {body[:160].decode('utf-8', 'replace')}")
        await conn.close()

    async def killer() -> None:
        assert kill_at is not None
        await asyncio.sleep(kill_at)
        before = srv.workers()
        os.kill(before[0], signal.SIGKILL)
        killed.update(pid=before[0], before=before)
        for _ in range(120):
            await asyncio.sleep(0.5)
            now = srv.workers()
            if len(now) == len(before) and before[0] not in now:
                killed.update(replaced_after_s=round(time.perf_counter() - t_start - kill_at, 1), after=now)
                return

    tasks = [worker(w) for w in range(16)] + ([killer()] if kill_at is not None else [])
    del rng
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t_start
    rss = [r for _, r in srv.samples[rss_mark:]]
    tenth = max(1, len(rss) // 6)
    out: dict[str, Any] = {
        "duration_s": round(elapsed, 1),
        "good_photo_uploads_per_s": round((len(lat["photo"]) + len(lat["base64"])) / elapsed, 1),
        "good_per_s": round(sum(map(len, lat.values())) / elapsed, 1),
        "latency_ms": {k: {"p50": round(float(np.percentile(v, 50)) * 1000, 1),
                           "p99": round(float(np.percentile(v, 99)) * 1000, 1)} for k, v in lat.items() if v},
        **counts,
        "rss_mb_after_warmup": round(float(np.median(rss[tenth : 2 * tenth])) / 2**20, 1) if rss else None,
        "rss_mb_at_end": round(float(np.median(rss[-tenth:])) / 2**20, 1) if rss else None,
        "peak_rss_mb": srv.peak_mb(rss_mark),
        "error_samples": errors,
    }  # fmt: skip
    if kill_at is not None:
        secs = [per_second.get(s, 0) for s in range(int(elapsed))]
        out["kill"] = {**killed, "answers_per_second": secs, "seconds_without_answers": secs.count(0)}
    return out


def _run_one(cfg: HostileConfig, src: str | None, scenario: str) -> dict[str, Any]:
    with ServerUnderTest(model=cfg.model, workers=cfg.workers, backend=cfg.backend, src=src) as srv:
        if scenario == "big":
            return asyncio.run(_big(srv, cfg))
        if scenario == "slow":
            return asyncio.run(_slow(srv, cfg))
        if scenario == "burst":
            return asyncio.run(_burst(srv, cfg))
        if scenario == "steady":
            return asyncio.run(_steady(srv, cfg, cfg.steady_s * cfg.scale if cfg.scale < 1 else cfg.steady_s))
        return asyncio.run(_steady(srv, cfg, max(10.0, 20 * cfg.scale), kill_at=4.0))


def run_hostile(cfg: HostileConfig) -> dict[str, Any]:
    """Every scenario of `cfg` (and against the baseline tree, if any); a JSON-able dict."""
    result: dict[str, Any] = {
        "config": {**cfg.__dict__, "scenarios": list(cfg.scenarios)},
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg_1m_before": round(os.getloadavg()[0], 2),
        "results": {},
    }
    for scenario in cfg.scenarios:
        row = {}
        for side, src in (("this", None), ("baseline", cfg.baseline_src)):
            if side == "baseline" and src is None:
                continue
            try:
                row[side] = _run_one(cfg, src, scenario)
            except Exception as exc:  # one broken scenario must not lose the others' figures
                row[side] = {"error": first_line(exc)}
            print(f"{scenario} {side}: {json.dumps(row[side])[:400]}", file=sys.stderr, flush=True)
        result["results"][scenario] = row
    result["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    return result
