"""The download path against a local http.server on 127.0.0.1: good files, a bad first mirror that
falls through, 404, truncated bodies, a stalled server; the cache never holds a bad or partial file."""

from __future__ import annotations

import gzip
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from digitnet.data import FILES, load_dataset
from digitnet.data.download import mirrors
from digitnet.data.idx import encode_idx
from digitnet.errors import DatasetError


class Mirrors:
    """One local server; `/m1/`, `/m2/`, … each behave as `modes[mirror]` says.

    Modes: ok, 404, wrong (a valid gzip IDX of other digits), garbage (not gzip), truncated
    (Content-Length promises more than is sent), stall (headers, then silence), flaky (500 once,
    then ok).
    """

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.modes, self.hits = files, {}, Counter()
        self.release = threading.Event()
        wrong = encode_idx(np.zeros((30, 28, 28), dtype=np.uint8))
        self.wrong = gzip.compress(wrong)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                _, mirror, fname = self.path.split("/", 2)
                outer.hits[(mirror, fname)] += 1
                mode = outer.modes.get(mirror, "404")
                key = fname.removesuffix(".gz")
                if mode == "404" or key not in outer.files:
                    self.send_error(404)
                    return
                if mode == "flaky" and outer.hits[(mirror, fname)] == 1:
                    self.send_error(500)
                    return
                body = {"wrong": outer.wrong, "garbage": b"<html>not gzip</html>" * 50}.get(
                    mode, outer.files[key]
                )
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "stall":
                    self.wfile.flush()
                    outer.release.wait(10)
                    return
                self.wfile.write(body[: len(body) // 2] if mode == "truncated" else body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def url(self, mirror: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/{mirror}/"

    def use(self, monkeypatch, **modes: str) -> None:
        """Point DIGITNET_MIRRORS at these mirrors, in order, and allow the network."""
        self.modes.update(modes)
        monkeypatch.setenv("DIGITNET_MIRRORS", ",".join(self.url(m) for m in modes))
        monkeypatch.setenv("DIGITNET_OFFLINE", "0")

    def count(self, mirror: str) -> int:
        return sum(n for (m, _), n in self.hits.items() if m == mirror)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server(tiny_mnist, clean_data_env):
    s = Mirrors(tiny_mnist.gz)
    yield s
    s.close()


def _cache_is_clean_or_good(cache, tiny) -> list[str]:
    """Every file in the cache is a complete, verified file; returns their names."""
    if not cache.exists():
        return []
    names = sorted(p.name for p in cache.iterdir())
    for name in names:
        assert name.endswith(".gz") and name.removesuffix(".gz") in tiny.gz, f"stray file in cache: {name}"
        assert (cache / name).read_bytes() == tiny.gz[name.removesuffix(".gz")]
    return names


def test_good_download_fills_cache_then_cache_is_used(server, tiny_mnist, clean_data_env, monkeypatch):
    server.use(monkeypatch, m1="ok")
    data = load_dataset("mnist")
    assert data.origin == "download" and data.name == "mnist"
    assert server.url("m1") in data.source
    assert np.array_equal(data.x_train, tiny_mnist.arrays["train-images-idx3-ubyte"])
    assert data.y_test.dtype == np.int64 and list(data.y_test) == list(
        tiny_mnist.arrays["t10k-labels-idx1-ubyte"]
    )
    assert all(v.startswith("verified sha256") for v in data.checksums.values())
    assert _cache_is_clean_or_good(clean_data_env, tiny_mnist) == sorted(f + ".gz" for f in FILES)
    assert server.count("m1") == 4

    again = load_dataset("mnist")
    assert again.origin == "cache" and server.count("m1") == 4  # no network the second time


@pytest.mark.parametrize("bad", ["wrong", "garbage", "404", "truncated"])
def test_bad_first_mirror_falls_through_to_second(server, tiny_mnist, clean_data_env, monkeypatch, bad):
    server.use(monkeypatch, m1=bad, m2="ok")
    data = load_dataset("mnist")
    assert data.origin == "download" and server.url("m2") in data.source
    assert server.count("m1") == 4 and server.count("m2") == 4
    assert len(_cache_is_clean_or_good(clean_data_env, tiny_mnist)) == 4


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("404", "HTTP 404"),
        ("wrong", "is not MNIST's"),
        ("garbage", "bad magic number"),  # an HTML page, not gzip: read as raw IDX
        ("truncated", "(truncated)"),
        ("stall", "timed out after 0.3 s"),
    ],
)
def test_failed_download_leaves_nothing(server, tiny_mnist, clean_data_env, monkeypatch, mode, message):
    server.use(monkeypatch, m1=mode)
    monkeypatch.setenv("DIGITNET_TIMEOUT", "0.3")
    t0 = time.monotonic()
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist")
    assert time.monotonic() - t0 < 5
    msg = str(info.value)
    assert message in msg and "train-images-idx3-ubyte.gz failed from every mirror" in msg
    assert "Supply it one of three ways" in msg
    assert _cache_is_clean_or_good(clean_data_env, tiny_mnist) == []


def test_transient_error_is_retried_but_404_is_not(server, tiny_mnist, clean_data_env, monkeypatch):
    monkeypatch.setenv("DIGITNET_RETRIES", "3")
    monkeypatch.setenv("DIGITNET_TIMEOUT", "0.25")  # also caps the backoff between tries
    server.use(monkeypatch, m1="404", m2="flaky")
    data = load_dataset("mnist")
    assert data.origin == "download"
    assert server.count("m1") == 4  # one try per file: a 404 does not fix itself
    assert server.count("m2") == 8  # a 500, then success, per file


def test_offline_never_touches_the_network(server, tiny_mnist, clean_data_env, monkeypatch):
    server.use(monkeypatch, m1="ok")
    with pytest.raises(DatasetError, match="offline, so no download was tried"):
        load_dataset("mnist", offline=True)
    monkeypatch.setenv("DIGITNET_OFFLINE", "1")
    with pytest.raises(DatasetError, match="offline"):
        load_dataset("mnist")
    assert sum(server.hits.values()) == 0
    assert not clean_data_env.exists()


def test_only_missing_files_are_downloaded(server, tiny_mnist, clean_data_env, monkeypatch):
    clean_data_env.mkdir(parents=True)
    for name in FILES[:2]:
        (clean_data_env / f"{name}.gz").write_bytes(tiny_mnist.gz[name])
    server.use(monkeypatch, m1="ok")
    assert load_dataset("mnist").origin == "download"
    assert sorted(f for (_, f) in server.hits) == sorted(f + ".gz" for f in FILES[2:])


def test_bad_cached_file_is_removed_and_replaced(server, tiny_mnist, clean_data_env, monkeypatch):
    tiny_mnist.write(clean_data_env)
    bad = clean_data_env / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(encode_idx(np.zeros(30, dtype=np.uint8))))  # valid IDX, wrong content
    with pytest.raises(
        DatasetError, match=r"removed bad cached file .*train-labels-idx1-ubyte\.gz \(sha256 mismatch\)"
    ):
        load_dataset("mnist", offline=True)
    assert not bad.exists()  # never kept, even offline

    bad.write_bytes(b"\x1f\x8b truncated junk")
    server.use(monkeypatch, m1="ok")
    data = load_dataset("mnist")
    assert data.origin == "download" and server.count("m1") == 1
    assert len(_cache_is_clean_or_good(clean_data_env, tiny_mnist)) == 4


def test_concurrent_downloads_do_not_corrupt_each_other(server, tiny_mnist, clean_data_env, monkeypatch):
    server.use(monkeypatch, m1="ok")
    results, errors = [], []

    def worker():
        try:
            results.append(load_dataset("mnist"))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(results) == 4
    for data in results:
        assert np.array_equal(data.x_test, tiny_mnist.arrays["t10k-images-idx3-ubyte"])
    assert len(_cache_is_clean_or_good(clean_data_env, tiny_mnist)) == 4  # no temp files left over


def test_mirror_list_from_env(monkeypatch):
    monkeypatch.setenv("DIGITNET_MIRRORS", " http://a.example/mnist , http://b.example/x/ ,")
    assert mirrors() == ["http://a.example/mnist/", "http://b.example/x/"]
    monkeypatch.delenv("DIGITNET_MIRRORS")
    assert mirrors()[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"


def test_real_mnist_through_a_local_mirror(mnist_dir, clean_data_env, monkeypatch):
    """The real files, served as a mirror would, verify against the real hashes and land in the cache."""
    files = {name: (mnist_dir / f"{name}.gz").read_bytes() for name in FILES}
    server = Mirrors(files)
    try:
        server.use(monkeypatch, m1="ok")
        data = load_dataset("mnist")
        assert data.origin == "download" and data.name == "mnist"
        assert len(data.y_train) == 60000 and len(data.y_test) == 10000
        assert sorted(p.name for p in clean_data_env.iterdir()) == sorted(f + ".gz" for f in FILES)
        assert load_dataset("mnist").origin == "cache" and server.count("m1") == 4
    finally:
        server.close()
