"""The reader's network and how it runs: two frames per 4 strip columns (`upsample`), a stride-4
reader growing into a stride-2 one for fine-tuning, the ONNX backend (export, parity with torch,
and the same trust rules as a digit model's export), calibration on photos, and the digit
classifier's second opinion on digits that stand apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from digitnet.checkpoint import PRETRAINED_DIR, file_sha256, load_checkpoint, save_checkpoint
from digitnet.data.synth import OTHER
from digitnet.errors import ConfigError, DigitnetWarning, ModelError
from digitnet.inference.ctc import calibrated, string_log_prob
from digitnet.inference.export import export_onnx, read_metadata, verify_onnx
from digitnet.inference.lines import find_line
from digitnet.inference.predictor import Predictor
from digitnet.inference.reader import ReadDigit, Reader, second_opinion
from digitnet.inference.segment import label_masks
from digitnet.models import LATER_ARGS, network_kwargs
from digitnet.networks import NumberReader
from digitnet.serve import create_app
from digitnet.training.config import TrainConfig
from digitnet.training.loop import start_from
from digitnet.training.numbers import calibrate_reader, collate, reading_scores

SMALL = {"channels": [8, 8, 16], "hidden": 16, "dilations": [1, 2], "depth": 1}


def reader_run(folder, *, upsample: int = 2, seed: int = 0):
    """A small reader with random weights (and BatchNorm statistics from random strips), saved."""
    kwargs = network_kwargs("reader", {**SMALL, "upsample": upsample})
    torch.manual_seed(seed)
    net = NumberReader(**kwargs).train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(4, 1, 32, 96))
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        folder / "model.pt",
        net.eval(),
        model_name="reader",
        model_kwargs=kwargs,
        temperature=0.9,
        unsure_threshold=0.6,
    )
    return folder


def test_upsample_gives_two_frames_per_four_columns():
    x = torch.rand(2, 1, 32, 64)
    with torch.no_grad():
        assert NumberReader(**SMALL).eval()(x).shape == (2, 12, 16)
        assert NumberReader(**SMALL, upsample=2).eval()(x).shape == (2, 12, 32)
    assert NumberReader(**SMALL, upsample=2).stride == 2 and NumberReader(**SMALL).stride == 4
    with pytest.raises(ConfigError, match="upsample"):
        NumberReader(upsample=3)


def test_a_stride_4_reader_starts_a_stride_2_run_reading_exactly_as_before(tmp_path):
    """`--set init=` from a stride-4 reader: its weights load, the new layer starts as a copy of each
    frame, so the grown network reads every strip as the old one did; anything else is refused."""
    old_run = reader_run(tmp_path / "old", upsample=1)
    cfg = TrainConfig.for_model("reader", init=str(old_run), model_kwargs={**SMALL, "upsample": 2})
    torch.manual_seed(1)  # a different start everywhere else: only the loaded weights agree
    grown = NumberReader(**network_kwargs("reader", cfg.model_kwargs))
    start_from(grown, cfg)
    old = load_checkpoint(old_run).model
    x = torch.rand(3, 1, 32, 80)
    with torch.no_grad():
        before, after = old(x), grown.eval()(x)
    torch.testing.assert_close(after[..., 0::2], before)
    torch.testing.assert_close(after[..., 1::2], before)

    new_run = reader_run(tmp_path / "new", upsample=2)
    shrink = TrainConfig.for_model("reader", init=str(new_run), model_kwargs={**SMALL, "upsample": 1})
    with pytest.raises(ConfigError, match="no place in the run's network"):
        start_from(NumberReader(**network_kwargs("reader", shrink.model_kwargs)), shrink)
    wider = TrainConfig.for_model("reader", init=str(old_run), model_kwargs={**SMALL, "hidden": 32})
    with pytest.raises(ConfigError, match="cannot start"):
        start_from(NumberReader(**network_kwargs("reader", wider.model_kwargs)), wider)


def test_a_reader_checkpoint_from_before_upsample_reads_at_stride_4(tmp_path):
    """Readers saved before `upsample` existed stored none: they load as they were trained."""
    kwargs = {k: v for k, v in network_kwargs("reader", SMALL).items() if k != "upsample"}
    assert LATER_ARGS["reader"]["upsample"] == 1  # whatever the registry's reader becomes
    torch.manual_seed(0)
    net = NumberReader(**kwargs).eval()
    save_checkpoint(tmp_path / "model.pt", net, model_name="reader", model_kwargs=kwargs)
    loaded = load_checkpoint(tmp_path)
    assert loaded.model_kwargs["upsample"] == 1
    assert Reader.load(tmp_path, backend="torch").stride == 4


@pytest.fixture(scope="module")
def exported_reader(tmp_path_factory):
    run = reader_run(tmp_path_factory.mktemp("reader"))
    return run, export_onnx(run)


def test_a_reader_exports_to_onnx_and_reads_with_it_by_default(exported_reader):
    run, path = exported_reader
    assert path == run / "model.onnx" and verify_onnx(path)[1] is None
    meta = read_metadata(path.read_bytes())
    assert meta["model"] == "reader" and meta["stride"] == 2 and meta["temperature"] == 0.9
    fast, plain = Reader.load(run), Reader.load(run, backend="torch")
    assert (fast.backend, plain.backend) == ("onnx", "torch")
    assert (fast.stride, fast.version, fast.unsure_threshold) == (2, plain.version, 0.6)
    rng = np.random.default_rng(0)
    for width in (16, 100, 2048):  # any whole number of frames, up to the widest strip
        strip = rng.random((32, width), dtype=np.float32)
        np.testing.assert_allclose(fast.line_logits(strip), plain.line_logits(strip), atol=1e-4)


def test_a_tampered_reader_export_is_never_run(exported_reader, tmp_path):
    run, path = exported_reader
    bad = reader_run(tmp_path / "bad")
    (bad / "model.onnx").write_bytes(path.read_bytes()[:-16] + b"\0" * 16)
    (bad / "model.onnx.sha256").write_bytes((run / "model.onnx.sha256").read_bytes())
    with pytest.warns(DigitnetWarning, match="SHA-256"):
        assert Reader.load(bad).backend == "torch"
    with pytest.raises(ModelError, match="SHA-256"):
        Reader.load(bad, backend="onnx")


def test_a_reader_is_no_digit_model_and_a_digit_model_no_reader(exported_reader):
    run, _ = exported_reader
    for backend in ("torch", "onnx"):
        with pytest.raises(ModelError, match="reads whole numbers"):
            Predictor.load(run, backend=backend)
        with pytest.raises(ModelError, match="reads one digit"):
            Reader.load(PRETRAINED_DIR / "model.pt", backend=backend)
    with pytest.raises(ModelError, match="reads one digit"):
        Reader.load(PRETRAINED_DIR / "model.onnx")


def test_the_bundled_reader_runs_on_its_verified_export():
    data, problem = verify_onnx(PRETRAINED_DIR / "reader.onnx")
    assert problem is None, problem
    assert read_metadata(data)["checkpoint_sha256"] == file_sha256(PRETRAINED_DIR / "reader.pt")
    fast, plain = Reader.load("default"), Reader.load("default", backend="torch")
    assert fast.backend == "onnx" and plain.backend == "torch"
    assert (fast.precision, plain.precision) == ("int8", "float32")  # tests/test_int8.py
    assert (fast.version, fast.stride, fast.temperature) == (plain.version, plain.stride, plain.temperature)


def test_a_batch_counts_frames_at_the_readers_stride():
    """CTC runs over W / stride frames: a stride-2 reader's batch says twice as many as stride 4."""
    items = [(np.zeros((32, 40), np.float32), [1, 2]), (np.zeros((32, 24), np.float32), [3])]
    targets, frames, lengths, _ = collate(items, torch.device("cpu"), 2).target
    assert frames.tolist() == [20, 12] and lengths.tolist() == [2, 1] and targets.tolist() == [2, 3, 4]
    assert collate(items, torch.device("cpu"), 4).target[1].tolist() == [10, 6]
    with torch.no_grad():  # the network's frames are the batch's
        assert (
            NumberReader(**SMALL, upsample=2).eval()(collate(items, torch.device("cpu"), 2).x).shape[-1] == 20
        )


def test_the_reader_is_calibrated_on_photos_read_the_whole_way(mnist):
    """`reading_scores` reads photos through `find_line` as a user's photo is read; the threshold
    `calibrate_reader` picks leaves the answers not flagged unsure at least 99 % right there."""
    reader = Reader.load("default")
    scored = reading_scores(reader, mnist.x_train[:3000], mnist.y_train[:3000], n=90)
    assert len(scored) >= 85 and all(logits.shape[0] == 12 for logits, _ in scored)
    temperature, threshold = calibrate_reader(scored)
    assert 0.25 < temperature < 4 and 0.5 <= threshold <= 1
    kept = [
        (c, labels == truth)
        for (logits, truth) in scored
        for labels, _, _, c in [calibrated(logits, temperature)]
    ]
    sure = [ok for log_p, ok in kept if np.exp(log_p) >= threshold]
    assert sure and np.mean(sure) >= 0.99


def test_the_service_reads_on_the_backend_it_was_given():
    """`serve --backend` applies to the reader as to the predictor (and so does `--threads`)."""
    for backend, expected in (("auto", "onnx"), ("torch", "torch")):
        with TestClient(create_app(backend=backend, threads=1)) as client:
            reader = client.app.state.reader
            assert (reader.backend, client.app.state.predictor.backend) == (expected, expected)
            assert reader.classifier.backend == expected


class Classifier:
    """A digit model that always believes the same thing (`predict_proba` is all a reader asks)."""

    def __init__(self, probs):
        self.probs = np.asarray(probs, float)

    def predict_proba(self, x):
        assert x.shape[1:] == (28, 28)
        return np.tile(self.probs, (len(x), 1))


def frames(*beliefs) -> np.ndarray:
    """Log-probabilities (T, 12) from one dict {class: p} per frame (the rest spread evenly)."""
    out = []
    for belief in beliefs:
        p = np.full(12, (1 - sum(belief.values())) / (12 - len(belief)))
        for k, v in belief.items():
            p[k] = v
        out.append(np.log(p))
    return np.array(out)


def test_the_classifier_decides_a_digit_the_reader_hesitates_over():
    """The product of the two beliefs: a reader torn between 3 and 5 takes the classifier's 5; a
    reader sure of its 3 keeps it against a classifier that only leans to 5; marks and digits
    without a field are left alone."""
    field = np.zeros((28, 28), np.float32)
    leans_5 = Classifier([0.01] * 3 + [0.3] + [0.01] + [0.6] + [0.01] * 4)  # 3: 0.3, 5: 0.6
    sure_5 = Classifier([0.01] * 5 + [0.91] + [0.01] * 4)
    torn = frames({0: 0.9}, {4: 0.5, 6: 0.45}, {0: 0.9})  # class k + 1 is digit k
    labels, conf = second_opinion(sure_5, [3], [(1, 1)], torn, [field], [0.5])
    assert labels == [5] and conf[0] > 0.9
    sure = frames({0: 0.9}, {4: 0.995}, {0: 0.9})
    assert second_opinion(leans_5, [3], [(1, 1)], sure, [field], [0.99])[0] == [3]
    both = np.concatenate([torn, torn])
    labels, conf = second_opinion(
        sure_5, [3, OTHER, 3], [(1, 1), (3, 3), (4, 4)], both, [None, field, field], [0.5] * 3
    )
    assert labels == [3, OTHER, 5] and conf[:2] == [0.5, 0.5]


def test_only_digits_that_stand_apart_are_one_to_one():
    strip = np.zeros((32, 64), np.float32)
    strip[8:24, 6:12] = 1.0
    strip[8:24, 20:26] = 1.0  # two pieces of ink, apart
    assert label_masks(strip, 2)[1] and not label_masks(strip, 3)[1] and not label_masks(strip, 1)[1]
    strip[14:16, 12:20] = 1.0  # now joined: one piece holds both labels
    masks, one_to_one = label_masks(strip, 2)
    assert not one_to_one and len(masks) == 2 and all(m.any() for m in masks)
    assert Reader.load("default", classifier=None).classifier is None
    assert Reader.load("default").classifier is not None


class Refuses:
    def predict_proba(self, x):
        raise AssertionError("the classifier was asked about digits that do not stand apart")


def stub_logits_reader(run_logits, classifier=None) -> Reader:
    """A reader on stub logits, unsure under 0.9."""
    return Reader(
        run_logits=run_logits,
        name="stub",
        version="0",
        temperature=1.0,
        unsure_threshold=0.9,
        backend="stub",
        classifier=classifier,
    )


def stub_reader(strip: np.ndarray, torn_at: list[int], classifier) -> Reader:
    """A reader whose network is blank everywhere but at `torn_at` (strip columns), where it is torn
    between 3 (0.5) and 5 (0.45)."""
    logits = np.full((12, strip.shape[1] // 4), -4.0, np.float32)
    logits[0] = 4.0
    for c in torn_at:
        logits[:, c // 4] = np.log(np.full(12, 0.05 / 10))
        logits[4, c // 4], logits[6, c // 4] = np.log(0.5), np.log(0.45)
    return stub_logits_reader(lambda x: logits[None], classifier)


def two_digits(gap: int):
    """A line of two bars `gap` columns apart (negative: joined into one piece)."""
    page = np.full((80, 160), 255, np.uint8)
    page[20:60, 40:48] = 0
    page[20:60, 56 + gap : 64 + gap] = 0
    if gap < 0:
        page[38:42, 40:64] = 0
    return find_line(page)


def test_a_line_of_digits_apart_takes_the_classifiers_word_and_says_it_disagreed():
    line = two_digits(gap=30)
    inked = np.flatnonzero(line.strip.any(axis=0))
    cols = [int(inked[0]) + 4, int(inked[-1]) - 4]  # over the first bar and over the second
    reader = stub_reader(line.strip, cols, Classifier([0.01] * 5 + [0.91] + [0.01] * 4))
    reading = reader.read_line(line)
    assert reading.number == "55" and all(d.confidence > 0.9 for d in reading.digits)
    lp = calibrated(reader.line_logits(line.strip), 1.0)[2]
    assert reading.confidence == pytest.approx(np.exp(string_log_prob(lp, [5, 5])))
    assert reading.unsure  # the reader itself never believed "55"
    for d in reading.digits:  # the image the classifier saw is the one the page shows
        fresh = ReadDigit(d.digit, d.confidence, d.box, d.ink)
        assert np.array_equal(d.image, fresh.image) and d.image.shape == (28, 28)
    assert stub_reader(line.strip, cols, None).read_line(line).number == "33"


def test_digits_that_touch_are_left_to_the_reader():
    line = two_digits(gap=-8)  # one piece of ink: two labels cannot each have their own
    width = line.strip.shape[1]
    cols = [int(width * 0.4), int(width * 0.6)]
    assert stub_reader(line.strip, cols, Refuses()).read_line(line).number == "33"


def test_the_classifier_runs_on_the_readers_backend_and_threads():
    assert Reader.load("default", backend="torch", threads=1).classifier.backend == "torch"
    assert Reader.load("default", classifier="none").classifier is None
    with pytest.raises(ModelError, match=r"^classifier: .*reads whole numbers"):
        Reader.load("default", classifier=PRETRAINED_DIR / "reader.pt")


def frames_for(width: int, beliefs: list[tuple[float, dict[int, float]]]) -> np.ndarray:
    """(1, 12, width / 4) logits: blank everywhere but, at each (fraction of the width, {class:
    probability}), that belief over two frames."""
    t_max = width // 4
    logits = np.full((12, t_max), np.log(0.01 / 11), np.float32)
    logits[0] = np.log(0.99)
    for at, belief in beliefs:
        p = np.full(12, (1 - sum(belief.values())) / (12 - len(belief)))
        for k, v in belief.items():
            p[k] = v
        t = int(at * t_max)
        logits[:, t : t + 2] = np.log(p)[:, None]
    return logits[None]


def torn_first_look(first: int, calls: list[int] | None = None):
    """Logits for a strip `first` columns wide torn between 5 and 6 for its second digit (5 at
    0.45, 6 at 0.5: "36", unsure); for any other width (a second look) a 5 at 0.8."""

    def run_logits(x):
        if calls is not None:
            calls.append(x.shape[-1])
        second = {6: 0.8, 7: 0.1} if x.shape[-1] != first else {6: 0.45, 7: 0.5}  # class k + 1: digit k
        return frames_for(x.shape[-1], [(0.25, {4: 0.95}), (0.7, second)])

    return run_logits


def test_an_unsure_reading_gets_a_second_look_and_a_sure_one_does_not():
    """A first look that reads "36", unsure; the rescaled looks both see a 5: the looks together
    read "35", with its frames in the first look (its box over the second bar) and its
    probability there, and it stays unsure."""
    line = two_digits(gap=30)
    first = line.strip.shape[1]
    calls: list[int] = []
    run_logits = torn_first_look(first, calls)
    reader = stub_logits_reader(run_logits)
    reading = reader.read_line(line)
    assert reading.number == "35" and reading.unsure and len(calls) == 1 + len(reader.second_looks) == 3
    assert calls[1] == round(first * 1.25 / 4) * 4  # the strip 25 % wider: more frames
    lp = calibrated(run_logits(line.strip[None, None])[0], 1.0)[2]
    assert reading.confidence == pytest.approx(np.exp(string_log_prob(lp, [3, 5])))
    assert reading.digits[1].box[0] > reading.digits[0].box[2]  # each digit on its own bar
    reader.second_looks = ()
    assert reader.read_line(line).number == "36"  # one look alone
    calls.clear()
    reader.second_looks = ((1.25, 1.0), (0.85, 0.85))
    reader.unsure_threshold = 0.01  # now the first reading counts as sure: no second look
    assert reader.read_line(line).number == "36" and len(calls) == 1


class Counting(Classifier):
    """A classifier that counts the digits it was shown."""

    def __init__(self, probs):
        super().__init__(probs)
        self.asked = 0

    def predict_proba(self, x):
        self.asked += len(x)
        return super().predict_proba(x)


def test_second_looks_then_the_classifier_and_looks_that_read_no_digit():
    """After second looks, digits that stand apart still get the classifier's second opinion,
    weighed against the first look's belief: a classifier leaning to 5 keeps the looks' "35".
    Looks that read no digit at all (blank, or a mark) leave the first reading as it was, still
    unsure."""
    line = two_digits(gap=30)
    first = line.strip.shape[1]
    leans_5 = Counting([0.05] * 5 + [0.55] + [0.05] * 4)
    reading = stub_logits_reader(torn_first_look(first), leans_5).read_line(line)
    assert reading.number == "35" and reading.unsure and leans_5.asked == 2

    def blank_looks(x):  # a faint first look (blank at 0.4 over each digit), then no digit at all
        if x.shape[-1] == first:
            return frames_for(first, [(0.25, {4: 0.55, 0: 0.4}), (0.7, {7: 0.55, 0: 0.4})])
        mark = {OTHER + 1: 0.9}  # "not a digit"
        return frames_for(x.shape[-1], [(0.5, mark)] if x.shape[-1] < first else [])

    reading = stub_logits_reader(blank_looks).read_line(line)
    assert reading.number == "36" and reading.unsure and not reading.marks
