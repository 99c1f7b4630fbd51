"""ONNX export: file, metadata, dynamic batch, the ONNX backend, and parity with torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from digitnet.errors import DigitnetWarning, ModelError
from digitnet.inference.export import export_onnx, read_metadata, record_path
from digitnet.inference.predictor import Predictor


def make_run(folder, x_stats=None, *, temperature=1.3, threshold=0.7):
    """A cnn with random weights whose BatchNorm statistics come from `x_stats` (realistic activations)."""
    import torch

    from digitnet.checkpoint import save_checkpoint
    from digitnet.inference.batching import as_batch
    from digitnet.models import build_model

    torch.manual_seed(0)
    model = build_model("cnn")
    if x_stats is not None:
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # cumulative average over the passes below
        with torch.no_grad():
            for i in range(0, len(x_stats), 500):
                model(as_batch(x_stats[i : i + 500]))
    save_checkpoint(
        folder / "model.pt",
        model.eval(),
        model_name="cnn",
        temperature=temperature,
        unsure_threshold=threshold,
    )
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("run"))
    return run, export_onnx(run)


def test_export_writes_model_onnx_beside_checkpoint(exported):
    run, path = exported
    assert path == run / "model.onnx" and path.stat().st_size > 100_000
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # atomic: no temp left behind
    meta = read_metadata(path.read_bytes())
    assert meta["model"] == "cnn" and meta["temperature"] == 1.3 and meta["unsure_threshold"] == 0.7
    assert meta["version"] == Predictor.load(run, backend="torch").version


def test_onnx_graph_has_dynamic_batch(exported):
    import onnx

    proto = onnx.load(str(exported[1]))
    (inp,), (out,) = proto.graph.input, proto.graph.output
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "x" and out.name == "logits"
    assert isinstance(dims[0], str) and dims[1:] == [1, 28, 28]


def test_onnx_backend_reads_metadata_and_any_batch(exported):
    run, path = exported
    ort = Predictor.load(run, backend="onnx", threads=1)
    assert ort.backend == "onnx" and ort.temperature == 1.3 and ort.unsure_threshold == 0.7
    assert Predictor.load(run).backend == "onnx"  # "auto" takes the up-to-date export
    direct = Predictor.load(path, backend="onnx")
    x = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    for n in (1, 7):
        assert np.allclose(direct.predict_proba(x[:n]), ort.predict_proba(x[:n]))
    with pytest.raises(ModelError, match="only with backend 'onnx'"):
        Predictor.load(path, backend="torch")


def test_stale_export_is_ignored_by_auto(tmp_path, exported):
    run = make_run(tmp_path, temperature=2.0)  # not the exported checkpoint
    (run / "model.onnx").write_bytes(exported[1].read_bytes())
    record_path(run / "model.onnx").write_bytes(record_path(exported[1]).read_bytes())
    assert Predictor.load(run).backend == "torch"  # intact but stale: quietly not used
    (run / "model.onnx").write_bytes(b"garbage")
    with pytest.warns(DigitnetWarning, match="does not match"):
        assert Predictor.load(run).backend == "torch"


# ---------------------------------------------------- issue 15, finding 4: a tampered model.onnx


def tamper(onnx_file):
    """Zero the largest initializer in place: the metadata (and its checkpoint hash) still read fine."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(onnx_file))
    init = max(proto.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    init.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), init.name))
    onnx_file.write_bytes(proto.SerializeToString())


@pytest.fixture
def tampered(tmp_path, exported):
    run, onnx_file = exported
    copy = tmp_path / "run"
    copy.mkdir()
    for f in (run / "model.pt", onnx_file, record_path(onnx_file)):
        (copy / f.name).write_bytes(f.read_bytes())
    assert Predictor.load(copy).backend == "onnx"  # intact, the copy is trusted
    tamper(copy / "model.onnx")
    assert read_metadata((copy / "model.onnx").read_bytes())["model"] == "cnn"  # metadata still fine
    return copy


def test_export_records_the_files_own_sha256(exported):
    import hashlib

    _, onnx_file = exported
    digest, name = record_path(onnx_file).read_text().split()
    assert name == "model.onnx" and digest == hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    r = subprocess.run(
        ["sha256sum", "-c", record_path(onnx_file).name], cwd=onnx_file.parent, capture_output=True
    )
    assert r.returncode == 0


def test_tampered_onnx_auto_falls_back_to_torch_with_a_warning(tampered):
    x = np.random.default_rng(0).random((8, 28, 28)).astype(np.float32)
    with pytest.warns(DigitnetWarning, match="SHA-256 does not match") as caught:
        auto = Predictor.load(tampered)
    assert auto.backend == "torch" and len(caught) == 1 and "\n" not in str(caught[0].message)
    np.testing.assert_allclose(
        auto.predict_proba(x), Predictor.load(tampered, backend="torch").predict_proba(x)
    )


def test_tampered_or_corrupt_onnx_is_refused_by_backend_onnx(tampered):
    with pytest.raises(ModelError, match="SHA-256 does not match"):
        Predictor.load(tampered, backend="onnx")
    data = (tampered / "model.onnx").read_bytes()
    (tampered / "model.onnx").write_bytes(data[: len(data) // 2])  # truncated: an error, not a re-export
    with pytest.raises(ModelError, match=r"model\.onnx: SHA-256"):
        Predictor.load(tampered, backend="onnx")
    record_path(tampered / "model.onnx").unlink()  # an export without its record is not trusted either
    with pytest.raises(ModelError, match="no recorded SHA-256"):
        Predictor.load(tampered, backend="onnx")


def test_bundled_model_onnx_matches_its_record():
    assert Predictor.load("default").backend == "onnx"


@pytest.mark.slow  # two fresh processes that import torch: 6 s
def test_predict_cli_on_a_tampered_onnx(tampered, tmp_path):
    from PIL import Image

    img = tmp_path / "d.png"
    Image.new("L", (28, 28), 0).save(img)
    base = [sys.executable, "-m", "digitnet", "predict", "--model", str(tampered), "--json", str(img)]
    auto = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert auto.returncode == 0, auto.stderr
    lines = auto.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "torch backend" in lines[0], auto.stderr
    onnx = subprocess.run([*base, "--backend", "onnx"], capture_output=True, text=True, timeout=120)
    assert onnx.returncode == 2 and onnx.stderr.startswith("error: ") and "SHA-256" in onnx.stderr


def test_not_a_digitnet_onnx(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        Predictor.load(bad, backend="onnx")


def test_onnx_parity_on_real_digits(mnist, tmp_path):
    x = mnist.x_test[:1000]
    run = make_run(tmp_path, mnist.x_train[:2000])
    export_onnx(run, tmp_path / "m.onnx")
    torch_p = Predictor.load(run, backend="torch")
    ort_p = Predictor.load(tmp_path / "m.onnx", backend="onnx")
    a, b = torch_p.predict_proba(x), ort_p.predict_proba(x)
    assert np.abs(a - b).max() < 1e-4
    # both backends run the BN-folded network; the checkpoint's own (unfolded) network agrees too
    import torch

    from digitnet.checkpoint import load_checkpoint
    from digitnet.inference.batching import batched_logits

    raw = torch.softmax(batched_logits(load_checkpoint(run).model, x) / 1.3, 1).numpy()
    assert np.abs(raw - b).max() < 1e-4
    assert np.array_equal(a.argmax(1), b.argmax(1))
    assert len(np.unique(a.argmax(1))) > 1  # a real spread of outputs, not a constant


@pytest.mark.slow  # a fresh process that imports torch and runs the exporter: 8 s
def test_export_cli(exported, tmp_path):
    run, _ = exported
    out = tmp_path / "sub" / "cli.onnx"
    cmd = [sys.executable, "-m", "digitnet", "export", str(run), "--format", "onnx", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert out.is_file() and "wrote" in res.stdout
    bad = subprocess.run([*cmd[:5], "--format", "tflite"], capture_output=True, text=True, timeout=120)
    assert (
        bad.returncode == 2 and bad.stderr.strip() == "error: unknown export format 'tflite'; supported: onnx"
    )
    missing = subprocess.run(
        [sys.executable, "-m", "digitnet", "export", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and missing.stderr.startswith("error: no model at")
    assert len(missing.stderr.strip().splitlines()) == 1


def test_fold_for_inference_is_exact_and_only_folds_what_it_may(mnist):
    """conv→pool→BN→ReLU becomes (conv·s+b)→ReLU→pool only where every BN scale is positive."""
    import torch

    from digitnet.inference.batching import as_batch
    from digitnet.inference.folding import FoldedConvBN, fold_for_inference
    from digitnet.models import build_model
    from digitnet.networks import ConvBN

    torch.manual_seed(0)
    model = build_model("cnn")
    model.train()
    with torch.no_grad():
        model(as_batch(mnist.x_train[:1000]))  # realistic running statistics
    model.eval()
    blocks = [m for m in model.modules() if isinstance(m, ConvBN)]
    with torch.no_grad():
        blocks[1].bn.weight[3] = -0.5  # one negative scale: max-pool no longer commutes, keep it
    folded = fold_for_inference(model)
    kinds = [type(m).__name__ for m in folded.features]
    assert kinds.count("FoldedConvBN") == 1 and kinds.count("ConvBN") == 1
    assert all(isinstance(m, ConvBN) for m in model.features[4:])  # the original is untouched
    x = as_batch(mnist.x_test[:500])
    with torch.no_grad():
        assert (model(x) - folded(x)).abs().max() < 1e-4
    assert any(isinstance(m, FoldedConvBN) for m in folded.modules())
