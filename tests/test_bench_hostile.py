"""`digitnet bench serve --hostile`: its settings, its payloads, and a short real run."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from digitnet.bench.hostile import HostileConfig, run_hostile
from digitnet.bench.payloads import big_rgba_png, good_mix, photo_jpeg
from digitnet.errors import ConfigError


def test_config_refuses_what_cannot_run(tmp_path):
    with pytest.raises(ConfigError, match="scenarios"):
        HostileConfig(scenarios=("flood",))
    with pytest.raises(ConfigError, match="workers 2"):
        HostileConfig(scenarios=("kill",), workers=1)
    with pytest.raises(ConfigError, match="baseline"):
        HostileConfig(baseline_src=str(tmp_path))
    assert HostileConfig(scale=0.1).n(200) == 20


def test_payloads_are_what_the_scenarios_claim():
    png = big_rgba_png(1000)
    img = Image.open(io.BytesIO(png))
    assert img.size == (1000, 1000) and img.mode == "RGBA" and len(png) < 100_000
    photo = Image.open(io.BytesIO(photo_jpeg(0, (640, 480))))
    assert photo.format == "JPEG" and photo.size == (640, 480)
    kinds = [k for k, _ in good_mix("127.0.0.1:1")]
    assert {k: kinds.count(k) for k in set(kinds)} == {"photo": 4, "base64": 4, "pixels": 4}


@pytest.mark.slow  # starts `digitnet serve` in a subprocess: ≈ 10 s
def test_a_short_burst_run_against_a_real_server():
    report = run_hostile(HostileConfig(scenarios=("burst",), scale=0.05))
    burst = report["results"]["burst"]["this"]
    assert burst["requests"] == 10 and burst["statuses"] == {"200": 10} and burst["server_errors"] == 0
    assert burst["peak_rss_mb"] > 50 and report["cpu"]
