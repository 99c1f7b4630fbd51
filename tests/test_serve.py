"""The HTTP service: every route, every bad-input class, the limits, metrics and the CLI.

Most tests run the app in-process (FastAPI TestClient) on a real `Predictor` loaded from an
untrained CNN checkpoint (the service's behaviour does not depend on accuracy); a `FakePredictor`
stands in where a test needs control (slow inference for overload, a crash for the 500 path). The
chunked-upload and CLI tests use a real uvicorn server on 127.0.0.1.
"""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from digitnet.bench.common import free_port, wait_ready
from digitnet.serve import create_app


def digit_one(size: int = 28, dark_on_light: bool = False) -> np.ndarray:
    """A uint8 vertical bar, a plausible "1" (light on dark unless `dark_on_light`)."""
    a = np.zeros((size, size), np.uint8)
    s = size / 28
    a[int(4 * s) : int(24 * s), int(13 * s) : int(16 * s)] = 255
    return 255 - a if dark_on_light else a


def encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


def start_cli_server(model: Path | str, port: int, *extra: str) -> subprocess.Popen:
    """`digitnet serve` in a subprocess (the real CLI → uvicorn → app_from_env path)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "digitnet",
            "serve",
            "--model",
            str(model),
            "--port",
            str(port),
            "--log-level",
            "warning",
            *extra,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


class ThreadServer:
    """uvicorn serving an app object in a background thread of this process."""

    def __init__(self, app, port: int) -> None:
        import uvicorn

        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        wait_ready(self.port)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@dataclass(frozen=True)
class FakePrediction:
    digit: int | None
    confidence: float
    probabilities: list[float]
    unsure: bool
    empty: bool
    image: np.ndarray
    status: str = "digit"


class FakePredictor:
    """Stands in for `digitnet.inference.Predictor` where a test needs control (slowness, failure)."""

    name, version, temperature, unsure_threshold, backend = "fake", "0", 1.0, 0.5, "none"

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.delay, self.fail = delay, fail
        self.calls = 0

    def _one(self, image: np.ndarray) -> FakePrediction:
        probs = np.full(10, 0.01)
        probs[7] = 0.91
        return FakePrediction(7, 0.91, probs.tolist(), False, False, np.asarray(image, np.float32))

    def predict_arrays(self, images, *, empty=None):
        self.calls += 1
        if self.fail:
            raise RuntimeError("secret internal detail")
        time.sleep(self.delay)
        return [self._one(im) for im in images]

    def predict_images(self, images, *, preprocess=True):
        self.calls += 1
        time.sleep(self.delay)
        return [self._one(np.zeros((28, 28), np.float32)) for _ in images]

    # the halves the server's micro-batcher uses
    def model_outputs(self, x):
        self.calls += 1
        if self.fail:
            raise RuntimeError("secret internal detail")
        time.sleep(self.delay)
        return np.zeros((len(x), 10), np.float32)

    def predictions_from_outputs(self, images, outputs, *, empty):
        return [self._one(im) for im in images]


# --------------------------------------------------------------------------------------- fixtures


def post_file(
    client, data: bytes, name: str = "digit.png", ctype: str = "image/png", path: str = "/v1/predict"
):
    return client.post(path, files={"file": (name, data, ctype)})


def assert_error(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text[:300]
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert "Traceback" not in resp.text and '.py", line' not in resp.text
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def assert_prediction(body: dict, name: str = "cnn") -> None:
    assert set(body) == {
        "digit",
        "confidence",
        "probabilities",
        "unsure",
        "empty",
        "status",
        "model",
        "image",
    }
    assert len(body["probabilities"]) == 10
    if body["empty"]:  # reported, not classified
        assert body["digit"] is None and body["probabilities"] == [0.0] * 10 and body["unsure"] is True
    else:
        assert abs(sum(body["probabilities"]) - 1) < 1e-3
        assert body["digit"] == int(np.argmax(body["probabilities"]))
    assert np.asarray(body["image"]).shape == (28, 28)
    assert body["model"]["name"] == name and body["model"]["version"]


# ---------------------------------------------------------------------------------- health, ready


def test_healthz_and_readyz(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["model"]["name"] == "cnn"


def test_readyz_is_503_until_the_lifespan_has_loaded_the_model(ckpt):
    app = create_app(ckpt)
    cold = TestClient(app)  # no `with`: the lifespan (which loads the model) has not run
    err = assert_error(cold.get("/readyz"), 503, "not_ready")
    assert "loading" in err["message"]
    assert_error(cold.post("/v1/predict", json={"pixels": [0] * 784}), 503, "not_ready")
    assert cold.get("/healthz").status_code == 200
    with TestClient(app) as warm:  # lifespan: Predictor.load(ckpt) onto app.state
        assert warm.get("/readyz").json()["status"] == "ready"
        assert warm.post("/v1/predict", json={"pixels": [0] * 784}).status_code == 200


# -------------------------------------------------------------------------------- good predictions


def test_predict_json_pixels_nested_flat_and_both_scales_agree(client):
    one = digit_one()
    nested = client.post("/v1/predict", json={"pixels": one.tolist()})
    assert nested.status_code == 200, nested.text
    body = nested.json()
    assert_prediction(body)
    # Raw pixels (preprocess false) reach the model as sent: the echoed image is the input /255.
    np.testing.assert_allclose(np.asarray(body["image"]), one / 255.0, atol=1e-3)
    flat01 = client.post(
        "/v1/predict", json={"pixels": (one / 255.0).ravel().tolist(), "scale": "0-1"}
    ).json()
    np.testing.assert_allclose(flat01["probabilities"], body["probabilities"], atol=1e-5)
    auto01 = client.post("/v1/predict", json={"pixels": (one / 255.0).ravel().tolist()}).json()
    np.testing.assert_allclose(auto01["probabilities"], body["probabilities"], atol=1e-5)


def test_predict_pixels_with_preprocess_recentres_and_blank_is_empty(client):
    off = np.zeros((28, 28), np.uint8)
    off[2:12, 2:5] = 255  # a small bar in the corner
    raw = client.post("/v1/predict", json={"pixels": off.tolist()}).json()
    pre = client.post("/v1/predict", json={"pixels": off.tolist(), "preprocess": True}).json()
    com = lambda im: np.argwhere(np.asarray(im) > 0.5).mean(axis=0)  # noqa: E731
    assert com(raw["image"])[1] < 6 and 10 < com(pre["image"])[1] < 18  # moved to the centre
    blank = client.post("/v1/predict", json={"pixels": [0] * 784, "preprocess": True}).json()
    assert blank["empty"] is True and blank["digit"] is None


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP"])
def test_multipart_accepts_each_allowed_format(client, fmt):
    data = encode(digit_one(56, dark_on_light=True), fmt)
    r = post_file(client, data, f"photo.{fmt.lower()}", f"image/{fmt.lower()}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert_prediction(body)
    assert body["empty"] is False and np.asarray(body["image"]).max() > 0.5  # dark-on-light → MNIST form


def test_multipart_fields_other_than_the_file_are_refused(client):
    """As the schema says (additionalProperties: false): schemathesis found a form with a stray
    field accepted, where a JSON body with a stray key is a 422."""
    png = encode(digit_one(56, dark_on_light=True), "PNG")
    r = client.post("/v1/predict", files={"file": ("a.png", png, "image/png")}, data={"preprocess": "1"})
    assert_error(r, 422, "invalid_input")
    assert "fields other than 'file'" in r.json()["error"]["message"]


def test_format_is_judged_from_bytes_not_name_or_content_type(client):
    png = encode(digit_one(56, dark_on_light=True), "PNG")
    r = post_file(client, png, "holiday.jpg", "image/jpeg")
    assert r.status_code == 200 and r.json()["empty"] is False
    r2 = post_file(client, encode(digit_one(56), "TIFF"), "innocent.png", "image/png")
    assert_error(r2, 415, "unsupported_media_type")


def test_image_base64_plain_and_data_url(client):
    png = encode(digit_one(56, dark_on_light=True), "PNG")
    b64 = base64.b64encode(png).decode()
    a = client.post("/v1/predict", json={"image_base64": b64})
    b = client.post("/v1/predict", json={"image_base64": "data:image/png;base64," + b64})
    assert a.status_code == b.status_code == 200
    assert a.json()["probabilities"] == b.json()["probabilities"]
    via_file = post_file(client, png).json()
    np.testing.assert_allclose(a.json()["probabilities"], via_file["probabilities"], atol=1e-6)
    assert_error(client.post("/v1/predict", json={"image_base64": "@@not base64@@"}), 422, "invalid_input")


# ------------------------------------------------------------------------------------- bad input


def test_non_image_truncated_and_bomb_uploads_are_422(client, bad_image_files):
    assert_error(post_file(client, b"just some text, no image here"), 422, "invalid_input")
    png = encode(digit_one(56), "PNG")
    assert_error(post_file(client, png[: len(png) // 2]), 422, "invalid_input")
    bomb = bad_image_files["bomb.png"]
    assert len(bomb) < 200
    err = assert_error(post_file(client, bomb), 422, "invalid_input")
    assert "pixel" in err["message"] or "large" in err["message"]
    assert_error(post_file(client, b""), 422, "invalid_input")


@pytest.mark.parametrize(
    "payload, fragment",
    [
        ({"pixels": [[0] * 28] * 27}, "28x28"),
        ({"pixels": [0] * 783}, "784"),
        ({"pixels": [[0] * 28] * 27 + [[0] * 27]}, "28x28"),
        ({"pixels": [[[0] * 28] * 28]}, "pixels"),
        ({"pixels": ["1"] * 784}, "number"),
        ({"pixels": [True] * 784}, "number"),
        ({"pixels": [-1] + [0] * 783}, "negative"),
        ({"pixels": [256] + [0] * 783}, "255"),
        ({"pixels": [2] + [0] * 783, "scale": "0-1"}, "at most 1"),
        ({"pixels": [0] * 784, "extra": 1}, "extra"),
        ({"pixels": [0] * 784, "image_base64": "AAAA"}, "exactly one"),
        ({}, "exactly one"),
        ([1, 2, 3], "object"),
    ],
)
def test_wrong_json_is_422_with_a_useful_message(client, payload, fragment):
    err = assert_error(client.post("/v1/predict", json=payload), 422, "invalid_input")
    assert fragment.lower() in err["message"].lower(), err


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", '"NaN"', '"inf"', "1e999"])
def test_nan_and_infinity_are_refused(client, token):
    pixels = [0.0] * 784
    text = json.dumps({"pixels": pixels}).replace("0.0", token, 1)
    if token == "NaN":  # also the exact text Python writes for float("nan")
        assert json.dumps({"pixels": [float("nan"), *pixels[1:]]}, allow_nan=True) == text
    r = client.post("/v1/predict", content=text, headers={"content-type": "application/json"})
    assert_error(r, 422, "invalid_input")


def test_invalid_json_and_unsupported_content_types(client):
    r = client.post("/v1/predict", content=b'{"pixels": [1, 2', headers={"content-type": "application/json"})
    assert_error(r, 422, "invalid_input")
    png = encode(digit_one(), "PNG")
    assert_error(client.post("/v1/predict", content=png, headers={"content-type": "image/png"}), 415)
    assert_error(client.post("/v1/predict", content=b"pixels=1", headers={"content-type": "text/plain"}), 415)
    assert_error(client.post("/v1/predict", content=b"{}", headers={"content-type": ""}), 415)
    assert_error(client.post("/v1/predict", data={"file": "not a file"}), 415)  # urlencoded form
    r = client.post(
        "/v1/predict", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert_error(r, 422)
    r = client.post("/v1/predict", files={"other": ("a.png", png, "image/png")})
    assert "'file'" in assert_error(r, 422)["message"]


def test_unknown_route_and_method_have_the_error_shape(client):
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/v1/predict"), 405, "method_not_allowed")


# -------------------------------------------------------------------------------------- batches


def test_batch_json_mixed_items_keep_order_and_match_single(client):
    one = digit_one()
    png = base64.b64encode(encode(digit_one(56, dark_on_light=True), "PNG")).decode()
    items = [{"pixels": one.tolist()}, {"image_base64": png}, {"pixels": [0] * 784, "preprocess": True}]
    r = client.post("/v1/predict/batch", json={"items": items})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 3 and r.json()["model"]["name"] == "cnn"
    for item, pred in zip(items, preds, strict=True):
        assert_prediction(pred)
        single = client.post("/v1/predict", json=item).json()
        np.testing.assert_allclose(pred["probabilities"], single["probabilities"], atol=1e-5)
    assert preds[2]["empty"] is True


def test_batch_multipart_files(client):
    pngs = [encode(digit_one(56, dark_on_light=True), "PNG"), encode(np.zeros((28, 28), np.uint8), "PNG")]
    r = client.post(
        "/v1/predict/batch", files=[("files", (f"{i}.png", d, "image/png")) for i, d in enumerate(pngs)]
    )
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["empty"] for p in preds] == [False, True]


def test_batch_limits_and_a_bad_item_named(client):
    small = [0] * 784
    ok = client.post("/v1/predict/batch", json={"items": [{"pixels": small}] * 256})
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 256
    err = assert_error(client.post("/v1/predict/batch", json={"items": [{"pixels": small}] * 257}), 422)
    assert "256" in err["message"]
    assert_error(client.post("/v1/predict/batch", json={"items": []}), 422)
    tiny = encode(np.zeros((8, 8), np.uint8), "PNG")
    r = client.post(
        "/v1/predict/batch", files=[("files", (f"{i}.png", tiny, "image/png")) for i in range(257)]
    )
    assert "256" in assert_error(r, 422)["message"]
    bad = client.post("/v1/predict/batch", json={"items": [{"pixels": small}, {"pixels": [300] * 784}]})
    assert "items[1]" in assert_error(bad, 422)["message"]
    r = client.post(
        "/v1/predict/batch", files=[("files", ("a.tif", encode(digit_one(), "TIFF"), "image/tiff"))]
    )
    assert_error(r, 415)


# ------------------------------------------------------------------------------------ body limits


def test_body_cap_with_content_length_json_and_multipart(predictor):
    with TestClient(create_app(predictor=predictor, max_body_bytes=10_000)) as c:
        big = json.dumps({"pixels": [0.123456789] * 784})  # ~12 kB of JSON
        assert len(big) > 10_000
        r = c.post("/v1/predict", content=big, headers={"content-type": "application/json"})
        assert_error(r, 413, "payload_too_large")
        noise = np.random.default_rng(0).integers(0, 255, (120, 120), dtype=np.uint8)
        data = encode(noise, "PNG")
        assert len(data) > 10_000
        assert_error(post_file(c, data), 413, "payload_too_large")
        assert c.post("/v1/predict", json={"pixels": [0] * 784}).status_code == 200  # under the cap


def test_body_cap_counts_bytes_of_a_chunked_body_without_content_length(predictor):
    def chunks():
        yield b'{"pixels": ['
        for _ in range(3000):
            yield b"0.5," * 10  # 40 bytes a chunk: 120 kB in all, no Content-Length declared
        yield b"0]}"

    with TestClient(create_app(predictor=predictor, max_body_bytes=10_000)) as c:
        r = c.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"})
        assert_error(r, 413, "payload_too_large")


def test_chunked_upload_over_a_real_socket_is_cut_off(predictor):
    """Raw HTTP/1.1 chunked transfer to uvicorn: the 413 arrives though the client never stops."""
    with ThreadServer(create_app(predictor=predictor, max_body_bytes=50_000), free_port()) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        for ctype in ("application/json", "multipart/form-data; boundary=zz"):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(
                    f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n".encode()
                )
                chunk = b"a" * 8192
                sent = 0
                try:
                    while sent < 4_000_000:  # far past the cap; the server answers long before
                        s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        sent += len(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                reply = b""
                while b"}}" not in reply:  # the JSON body may follow the headers in another segment
                    try:
                        more = s.recv(65536)
                    except (ConnectionResetError, TimeoutError):
                        break  # the server closed with our upload still unread: what we have is all
                    if not more:
                        break
                    reply += more
            assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
            assert b'"payload_too_large"' in reply


def test_a_refused_body_closes_the_connection(predictor):
    """413 before the body is read: the reply says Connection: close and the server hangs up, so
    the unread body can never be parsed as a next request (nor the connection left hanging)."""
    with ThreadServer(create_app(predictor=predictor, max_body_bytes=50_000), free_port()) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(
                b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 5000000\r\n\r\n{"pixels": ['
            )
            reply = b""
            while b"}}" not in reply:
                reply += s.recv(65536)
            assert reply.startswith(b"HTTP/1.1 413") and b"connection: close" in reply.lower()
            assert s.recv(65536) == b""  # closed by the server, not waiting for 5 MB
        assert httpx.post(srv.url + "/v1/predict", json={"pixels": [0] * 784}).status_code == 200


# ------------------------------------------------------------------------------ overload, crashes


INK = [255] * 784  # not empty: reaches the model


def test_overload_is_refused_at_once_with_retry_after():
    """Real overload (every slot busy and the queue full) is refused at once, not queued."""
    from digitnet.serve.limits import Limits

    slow = FakePredictor(delay=0.8)
    with TestClient(create_app(predictor=slow, limits=Limits(max_concurrency=1, max_queue=0))) as c:
        first: dict = {}
        t = threading.Thread(target=lambda: first.update(r=c.post("/v1/predict", json={"pixels": INK})))
        t.start()
        deadline = time.monotonic() + 5
        while slow.calls == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        t0 = time.monotonic()
        r = c.post("/v1/predict", json={"pixels": INK})
        refused_in = time.monotonic() - t0
        t.join()
        assert_error(r, 503, "overloaded")
        assert r.headers["retry-after"] == "1"
        assert refused_in < 0.5  # not queued behind the slow request
        assert first["r"].status_code == 200
        assert c.get("/healthz").status_code == 200  # non-prediction routes are not capped
        assert c.post("/v1/predict", json={"pixels": INK}).status_code == 200  # slot released
        assert "digitnet_overload_rejections_total 1" in c.get("/metrics").text


def test_an_internal_failure_is_a_plain_500_without_details():
    with TestClient(create_app(predictor=FakePredictor(fail=True)), raise_server_exceptions=False) as c:
        r = c.post("/v1/predict", json={"pixels": INK})
        err = assert_error(r, 500, "internal_error")
        assert (
            "secret" not in r.text
            and "RuntimeError" not in r.text
            and err["message"] == "internal server error"
        )
        assert c.get("/healthz").status_code == 200  # the worker lives on


# ---------------------------------------------------------------------------------------- metrics


def metric(text: str, name: str, **labels) -> float:
    sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pat = re.escape(name) + (r"\{" + re.escape(sel) + r"\}" if sel else "") + r" ([0-9.e+-]+)$"
    m = re.search(pat, text, re.M)
    return float(m.group(1)) if m else 0.0


def test_metrics_counters_move(predictor):
    with TestClient(create_app(predictor=predictor, max_body_bytes=10_000)) as c:
        before = c.get("/metrics")
        assert before.headers["content-type"].startswith("text/plain")
        assert "# TYPE digitnet_http_request_duration_seconds histogram" in before.text
        one = digit_one().tolist()
        digit = c.post("/v1/predict", json={"pixels": one}).json()["digit"]
        c.post("/v1/predict", json={"pixels": [0] * 784, "preprocess": True})  # empty
        c.post("/v1/predict", json={"pixels": [0] * 783})  # 422
        c.post(
            "/v1/predict",
            content=json.dumps({"pixels": [0.123456789] * 784}),
            headers={"content-type": "application/json"},
        )  # 413
        c.get("/no/such/path")
        after = c.get("/metrics").text
        req = "digitnet_http_requests_total"
        assert metric(after, req, route="/v1/predict", method="POST", status="200") == 2
        assert metric(after, req, route="/v1/predict", method="POST", status="422") == 1
        assert metric(after, req, route="/v1/predict", method="POST", status="413") == 1
        assert metric(after, req, route="other", method="GET", status="404") == 1
        assert metric(after, "digitnet_predictions_total", digit=str(digit)) >= 1
        assert metric(after, "digitnet_predictions_total", digit="none") == 1
        assert metric(after, "digitnet_empty_images_total") == 1
        hist = "digitnet_http_request_duration_seconds"
        assert metric(after, hist + "_count", route="/v1/predict") == 4
        assert metric(after, hist + "_bucket", route="/v1/predict", le="+Inf") == 4
        assert metric(after, "digitnet_model_ready") == 1
        assert "digitnet_unsure_predictions_total" in after
        c.post("/v1/read", json={"pixels": [[0, 0], [0, 0]]})
        read = c.get("/metrics").text
        assert metric(read, req, route="/v1/read", method="POST", status="200") == 1


def test_a_client_that_leaves_mid_body_is_counted_as_gone_not_as_a_500(predictor):
    """The client hangs up halfway through its body: nobody was answered, so /metrics counts a
    499 (client closed), not a server error."""
    with ThreadServer(create_app(predictor=predictor), free_port()) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(
                b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 5000\r\n\r\n{"pixels": ['
            )
            time.sleep(0.3)
        text = ""
        for _ in range(50):  # the server notices the hang-up on its next read
            text = httpx.get(srv.url + "/metrics").text
            if 'status="499"' in text:
                break
            time.sleep(0.1)
        req = "digitnet_http_requests_total"
        assert metric(text, req, route="/v1/predict", method="POST", status="499") == 1
        assert 'status="500"' not in text


# ------------------------------------------------------------------------------- page, docs, CLI


def test_page_and_static_assets_are_served_with_no_external_urls(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset, ctype in (("/static/app.js", "javascript"), ("/static/app.css", "text/css")):
        r = client.get(asset)
        assert r.status_code == 200 and ctype in r.headers["content-type"]
        assert asset in page.text
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", page.text + r.text)  # no CDN
        assert "@import" not in r.text
    assert 'id="pad"' in page.text and "touch-action: none" in client.get("/static/app.css").text


def test_openapi_documents_both_body_types(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert "PredictRequest" in spec["components"]["schemas"]
    assert "BatchRequest" in spec["components"]["schemas"]
    assert {"413", "415", "422", "503"} <= set(spec["paths"]["/v1/predict"]["post"]["responses"])


def test_cli_serve_refuses_bad_arguments_with_exit_2(tmp_path):
    for args, fragment in (
        (["--model", str(tmp_path / "missing")], "no model"),
        (["--port", "70000"], "port"),
        (["--workers", "0"], "workers"),
        (["--max-body-bytes", "0"], "max_body_bytes"),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "digitnet", "serve", *args], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("error:") and fragment in r.stderr and "Traceback" not in r.stderr


def test_cli_serve_runs_the_service_and_bench_drives_it(ckpt):
    """`digitnet serve` in a subprocess; a short mixed bench run against it keeps good requests good."""
    from digitnet.bench.serve import ServeBenchConfig, run_bench_serve

    port = free_port()
    proc = start_cli_server(ckpt, port)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(port, proc)
        r = httpx.post(
            url + "/v1/predict", files={"file": ("d.png", encode(digit_one(56), "PNG"), "image/png")}
        )
        assert r.status_code == 200 and r.json()["model"]["name"] == "cnn"
        res = run_bench_serve(
            ServeBenchConfig(duration_s=1.5, warmup_s=0, concurrency=4, mode="mixed", url=url)
        )
        assert res["good_ok"] > 10 and res["good_errors"] == 0, res
        assert res["bad"] > 0 and res["bad_errors"] == 0 and res["bad_4xx"] == res["bad"], res
        assert res["latency_ms"]["p50"] is not None
        assert {k.split(":")[1] for k in res["bad_status"]} <= {"413", "415", "422"}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_bench_refuses_non_loopback_targets():
    from digitnet.bench.serve import ServeBenchConfig
    from digitnet.errors import ConfigError

    with pytest.raises(ConfigError, match=r"127\.0\.0\.1"):
        ServeBenchConfig(url="http://example.com:8000")
    with pytest.raises(ConfigError, match="duration"):
        ServeBenchConfig(duration_s=10_000)


def test_stalled_body_gets_408_without_holding_a_prediction_slot():
    """A client that stops sending mid-body is answered 408 and closed by the body cap, which sits
    outside the concurrency limit (so it never held a prediction slot)."""
    import asyncio

    from digitnet.serve.limits import BodyLimitMiddleware

    reached_app = []

    async def app(scope, receive, send):
        reached_app.append(True)

    sent = []
    first = [True]

    async def receive():
        if first[0]:
            first[0] = False
            return {"type": "http.request", "body": b'{"pix', "more_body": True}
        await asyncio.sleep(3600)  # the client stalls

    async def send(message):
        sent.append(message)

    mw = BodyLimitMiddleware(app, max_body_bytes=1024, read_timeout_s=0.2)
    asyncio.run(mw({"type": "http", "headers": []}, receive, send))
    assert not reached_app
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 408
    assert b"request_timeout" in b"".join(m.get("body", b"") for m in sent[1:])
