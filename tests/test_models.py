"""Test-time augmentation (`CNN(tta=r)`): the shifted views, the averaged output, and where it applies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from digitnet.errors import ConfigError
from digitnet.inference.batching import as_batch, batched_logits
from digitnet.models import build_model
from digitnet.networks import CNN, shifted_views, single_view

SMALL = dict(stem=8, blocks=[(8, True), (16, True)])


def test_shifted_views_are_every_one_pixel_shift():
    x = torch.zeros(2, 1, 28, 28)
    x[0, 0, 10, 20] = 1.0  # one lit pixel in the first image; the second stays blank
    views = shifted_views(x, 1)  # (9·2, 1, 28, 28), view-major
    assert views.shape == (18, 1, 28, 28)
    lit = {tuple(int(i) for i in torch.nonzero(views[2 * v, 0])[0]) for v in range(9)}
    assert lit == {(10 + dy, 20 + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    assert torch.equal(views[8], x[0]) and torch.equal(views[9], x[1])  # view 4 is the input itself
    assert views[1::2].abs().sum() == 0  # the blank image stays blank in every view
    assert shifted_views(x, 2).shape == (50, 1, 28, 28)


def test_tta_output_is_the_log_of_the_mean_view_probability():
    torch.manual_seed(0)
    model = CNN(**SMALL, tta=1).eval()
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        out = model(x)
        with single_view(model):
            views = model(shifted_views(x, 1))  # (45, 10) plain logits
            plain = model(x)
        assert model.tta == 1  # restored after the block
        expected = torch.softmax(views, 1).reshape(9, 5, 10).mean(0).log()
        torch.testing.assert_close(out, expected)
        assert torch.allclose(
            out.exp().sum(1), torch.ones(5)
        )  # softmax(out) gives the averaged probabilities
        assert not torch.allclose(
            out.softmax(1), plain.softmax(1), atol=1e-4
        )  # the averaging changed something


def test_training_forward_ignores_tta():
    torch.manual_seed(0)
    a, b = CNN(**SMALL, tta=1), CNN(**SMALL, tta=0)
    b.load_state_dict(a.state_dict())
    x = torch.rand(8, 1, 28, 28)
    torch.testing.assert_close(a.train()(x), b.train()(x))


@pytest.mark.parametrize("bad", [3, -1, 0.5, "1"])
def test_tta_radius_is_validated(bad):
    with pytest.raises(ConfigError, match="tta must be 0, 1 or 2"):
        CNN(**SMALL, tta=bad)


def test_best_predicts_with_tta_and_fit_selects_on_single_view():
    """`best` averages 9 views when it predicts; `fit` scores validation on one view (9× cheaper),
    so the val accuracy it reports is the chosen weights' single-view accuracy."""
    from digitnet.training.config import TrainConfig
    from digitnet.training.loop import fit

    assert build_model("best").tta == 1 and build_model("cnn").tta == 0
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 400)
    x = rng.integers(0, 40, (400, 28, 28)).astype(np.uint8)
    for i, c in enumerate(y):
        x[i, 4 + (c // 5) * 12 : 10 + (c // 5) * 12, 2 + (c % 5) * 5 : 8 + (c % 5) * 5] = 255
    cfg = TrainConfig.for_model(
        "cnn",
        epochs=2,
        batch_size=50,
        lr=0.05,
        threads=1,
        augment=0.0,
        bf16=False,
        model_kwargs={**SMALL, "tta": 1},
    )
    res = fit(cfg, x[:300], y[:300], x[300:], y[300:])
    assert res.model.tta == 1
    yv = torch.as_tensor(y[300:])
    with single_view(res.model):
        single = batched_logits(res.model, x[300:])
    averaged = batched_logits(res.model, x[300:])
    row = res.history[res.best_epoch - 1]  # the epoch whose weights fit returned
    assert (
        row["val_accuracy"]
        == res.val_accuracy
        == pytest.approx((single.argmax(1) == yv).float().mean().item())
    )
    loss = torch.nn.functional.cross_entropy
    assert row["val_loss"] == pytest.approx(loss(single, yv).item(), rel=1e-4)
    assert row["val_loss"] != pytest.approx(loss(averaged, yv).item(), rel=1e-3)


def test_views_per_image_counts_tta_copies_also_inside_an_ensemble():
    from digitnet.models import Ensemble
    from digitnet.networks import views_per_image

    assert views_per_image(build_model("cnn")) == 1 and views_per_image(build_model("best")) == 9
    both = Ensemble([{"model": "cnn", "kwargs": SMALL}, {"model": "cnn", "kwargs": {**SMALL, "tta": 2}}])
    assert views_per_image(both) == 25


def test_tta_models_run_as_many_images_per_pass_as_one_view_models(tmp_path):
    """batched_logits and Predictor divide their batch by the 9 views, so memory stays bounded."""
    from digitnet.api import DigitClassifier
    from digitnet.checkpoint import save_checkpoint
    from digitnet.inference.predictor import CHUNK, Predictor

    torch.manual_seed(0)
    model = CNN(**SMALL, tta=1).eval()
    passes: list[int] = []
    model.features.register_forward_hook(lambda mod, inp, out: passes.append(len(inp[0])))
    x = as_batch(np.random.default_rng(0).integers(0, 255, (20, 28, 28)).astype(np.uint8))
    small = batched_logits(model, x, batch_size=18)  # 18 views a pass: 2 images at a time
    assert max(passes) <= 18 and len(passes) == 10
    torch.testing.assert_close(small, batched_logits(model, x, batch_size=4096))
    save_checkpoint(tmp_path / "model.pt", model, model_name="cnn", model_kwargs={**SMALL, "tta": 1})
    assert Predictor.load(tmp_path, backend="torch")._chunk == CHUNK // 9
    assert DigitClassifier.load(tmp_path).predictor()._chunk == CHUNK // 9


def test_checkpoints_from_before_tta_still_mean_one_view(tmp_path):
    """A session-3 `best` checkpoint stored no kwargs; the registry's `best` now has tta=1, but the
    old file keeps meaning what it meant when it was calibrated: one view. So do its ensembles."""
    from digitnet.checkpoint import load_checkpoint, save_checkpoint
    from digitnet.models import Ensemble

    save_checkpoint(
        tmp_path / "old" / "model.pt", build_model("best", tta=0), model_name="best", model_kwargs={}
    )
    old = load_checkpoint(tmp_path / "old")
    assert (
        old.model.tta == 0 and old.model_kwargs["tta"] == 0 and old.model_kwargs["blocks"][0] == (32, False)
    )
    ens = Ensemble([{"model": "best", "kwargs": {}}, {"model": "best", "kwargs": {"tta": 1}}])
    assert [m.tta for m in ens.members] == [0, 1]


def test_distillation_teacher_predicts_from_one_view(tmp_path):
    from digitnet.checkpoint import save_checkpoint
    from digitnet.training.recipe import Teacher

    torch.manual_seed(0)
    model = CNN(**SMALL, tta=1).eval()
    save_checkpoint(tmp_path / "model.pt", model, model_name="cnn", model_kwargs={**SMALL, "tta": 1})
    teacher = Teacher(str(tmp_path), torch.device("cpu"), weight=1.0)
    x = torch.rand(6, 1, 28, 28)
    student = torch.zeros(6, 10)
    with torch.no_grad(), single_view(model):
        one_view = model(x)
    expected = (
        torch.nn.functional.kl_div(
            torch.log_softmax(student / 2, 1),
            torch.log_softmax(one_view / 2, 1),
            log_target=True,
            reduction="batchmean",
        )
        * 4
    )
    torch.testing.assert_close(teacher.loss(student, x, torch.tensor(0.0)), expected)
    assert teacher.model.tta == 1  # restored after each step


@pytest.mark.parametrize("views", ["0", "-3", "26", "1e9", "nine"])
def test_onnx_views_metadata_is_checked(tmp_path, views):
    import onnx

    from digitnet.errors import ModelError
    from digitnet.inference.export import read_metadata

    proto = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    for k, v in {
        "digitnet.format": "digitnet-onnx/1",
        "digitnet.model": "cnn",
        "digitnet.temperature": "1.0",
        "digitnet.unsure_threshold": "0.5",
        "digitnet.views": views,
    }.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    with pytest.raises(ModelError, match=r"digitnet\.views must be 1 to 25"):
        read_metadata(proto.SerializeToString(), "crafted.onnx")


def test_onnx_export_carries_tta(tmp_path):
    """The exported graph averages the same 9 views: ONNX Runtime matches torch."""
    from digitnet.checkpoint import save_checkpoint
    from digitnet.inference.export import export_onnx, read_metadata
    from digitnet.inference.predictor import Predictor

    torch.manual_seed(0)
    model = build_model("cnn", **SMALL, tta=1)
    x = as_batch(np.random.default_rng(1).integers(0, 255, (64, 28, 28)).astype(np.uint8))
    model.train()
    with torch.no_grad():
        model(x)  # running statistics from data
    save_checkpoint(tmp_path / "model.pt", model.eval(), model_name="cnn", model_kwargs={**SMALL, "tta": 1})
    export_onnx(tmp_path)
    assert read_metadata((tmp_path / "model.onnx").read_bytes())["views"] == 9
    onnx_p = Predictor.load(tmp_path / "model.onnx", backend="onnx").predict_proba(x)
    torch_p = torch.softmax(batched_logits(model, x), 1).numpy()
    assert np.abs(onnx_p - torch_p).max() < 1e-4
    with single_view(model):
        plain = torch.softmax(batched_logits(model, x), 1).numpy()
    assert np.abs(onnx_p - plain).max() > 1e-3  # the export did not drop the averaging
