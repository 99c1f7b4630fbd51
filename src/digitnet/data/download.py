"""Downloading MNIST from public mirrors: timeouts, retries, verification, atomic writes.

Mirrors are tried in order (`DIGITNET_MIRRORS` replaces the list). Only bytes whose decompressed
SHA-256 matches are written into the cache, via a unique temp file renamed into place, so a failed
download leaves nothing and two concurrent downloads both end with good files.
"""

from __future__ import annotations

import http.client
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from digitnet.data.idx import read_idx_digest
from digitnet.errors import ConfigError, DatasetError
from digitnet.utils import atomic_write_bytes, say

DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MAX_FILE_BYTES = 256 << 20  # any one MNIST-shaped file, decompressed; the real largest is 47 MB
MAX_DOWNLOAD_BYTES = 64 << 20  # any one compressed download; the real largest is 9.9 MB


def mirrors() -> list[str]:
    raw = os.environ.get("DIGITNET_MIRRORS", "")
    urls = [u.strip() for u in raw.split(",") if u.strip()] or list(DEFAULT_MIRRORS)
    return [u if u.endswith("/") else u + "/" for u in urls]


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1.0  # reported below, like a non-positive value
    if value <= 0:
        raise ConfigError(f"{name} must be a positive number, got {raw!r}")
    return value


def _fetch(url: str, timeout: float, retries: int) -> bytes:
    """The body of `url`, complete (Content-Length checked) and bounded; retries transient failures."""
    last = "not tried"
    for attempt in range(retries):
        if attempt:
            time.sleep(min(0.5 * 2 ** (attempt - 1), 4.0, timeout))  # backoff, never longer than a timeout
        try:
            req = urllib.request.Request(url, headers={"User-Agent": "digitnet"})
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                length = resp.headers.get("Content-Length")
                chunks, got = [], 0
                while chunk := resp.read(1 << 16):
                    got += len(chunk)
                    if got > MAX_DOWNLOAD_BYTES:
                        raise DatasetError(f"body over {MAX_DOWNLOAD_BYTES:,} bytes; refusing")
                    chunks.append(chunk)
            if length is not None and length.isdigit() and got != int(length):
                last = f"connection closed after {got:,} of {int(length):,} bytes (truncated)"
                continue
            return b"".join(chunks)
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code} {exc.reason}"
            if exc.code not in (408, 429) and exc.code < 500:
                break  # a 404 will not fix itself
        except (TimeoutError, urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            last = (
                f"timed out after {timeout:g} s"
                if isinstance(reason, TimeoutError)
                else str(reason) or type(exc).__name__
            )
    raise DatasetError(last)


def download(cache: Path, keys: list[str], console: Any, expected: dict[str, str]) -> str:
    """Fetch `keys` (.gz) into `cache`; returns the first mirror used. Only verified bytes are written,
    via a unique temp file renamed into place: a failed download leaves nothing, and concurrent
    downloads both end with good files."""
    timeout = _env_number("DIGITNET_TIMEOUT", 30.0)
    retries = max(1, int(_env_number("DIGITNET_RETRIES", 3)))
    used = ""
    for key in keys:
        errors = []
        for base in mirrors():
            url = base + key + ".gz"
            say(console, f"downloading {url}")
            try:
                body = _fetch(url, timeout, retries)
                _, digest = read_idx_digest(body, key + ".gz", max_bytes=MAX_FILE_BYTES)
                if digest != expected[key]:
                    raise DatasetError(f"sha256 {digest[:12]}… is not MNIST's {expected[key][:12]}…")
            except DatasetError as exc:
                errors.append(f"{url}: {exc}")
                continue
            try:
                atomic_write_bytes(cache / (key + ".gz"), body)
            except OSError as exc:
                raise DatasetError(f"cannot write the cache {cache}: {exc.strerror or exc}") from None
            used = used or base
            break
        else:
            raise DatasetError(f"download of {key}.gz failed from every mirror: {'; '.join(errors)}")
    return used
