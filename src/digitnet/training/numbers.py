"""The number task: a whole handwritten number as a text line, read by CTC (the `reader`).

Every batch is composed afresh from MNIST training digits (`data.synth`): 1–10 digits, every
spacing (spaced, tight, touching), unequal sizes, wandering baselines, slant, broken strokes,
dots and ruled lines, and now and then a glyph that is not a digit (rendered from DejaVu fonts,
labelled "not a digit"). Some go the whole way a photo does (paper, JPEG, `find_ink`,
`clean_ink`), the rest straight to `normalize_line`; then blur, stroke width, noise and contrast
vary per example. The numbers come from a NumPy generator seeded by (seed, epoch, rank), so a
seed gives the same data, a resumed run continues it, and each DDP rank sees its own.
"""

from __future__ import annotations

import io
import math
import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from digitnet.data.glyphs import DASHES, LETTERS, STANDALONE_SYMBOLS, TRAIN_FONTS, glyph_set
from digitnet.data.synth import SPACINGS, number, photo
from digitnet.inference.ctc import best_path, calibrated
from digitnet.inference.lines import clean_ink, find_line, normalize_line
from digitnet.inference.preprocess import find_ink, work_gray
from digitnet.inference.reader import Reader
from digitnet.models import network_kwargs
from digitnet.networks import frame_stride
from digitnet.training.config import TrainConfig
from digitnet.training.task import Batch, TaskSetup

LENGTHS = (1, 11)  # digits per training number: 1 to 10
MARK_RATE = 0.15  # numbers with a glyph that is not a digit beside or among the digits
PHOTO_RATE = 0.06  # numbers that take the whole photo path (9 ms each, against 0.4 ms)
SPACING_MIX = (0.25, 0.25, 0.5)  # spaced, tight, touching: touching is the hard one, so half the numbers
PREFETCH = 4  # batches composed ahead, in a thread, while the model trains on the current one
VAL_NUMBERS = 1000  # the validation set: composed once from the validation digits
VAL_PHOTOS = 1200  # calibration: photos of validation numbers, read the whole way (`reading_scores`)
Scored = tuple[np.ndarray, list[int]]  # one line's logits (12, T) and its true labels


def _example(
    x: np.ndarray,
    y: np.ndarray,
    marks: list[np.ndarray],
    rng: np.random.Generator,
    length: int,
    spacing: str,
    *,
    hard: bool,
    as_photo: bool,
) -> tuple[np.ndarray, list[int]] | None:
    """One number → (strip (32, W) float32, labels); None if it lost all its ink on the way."""
    comp = number(x, y, length, rng, spacing, marks=marks, mark_rate=MARK_RATE, hard=hard)
    if as_photo:
        shot = photo(comp, rng, spacing)
        with Image.open(io.BytesIO(shot.data)) as img:
            # Not the reading path's even_light/whole_strokes steps (`lines.find_line`): the
            # bundled reader's weights were trained on strips made this way, and its documented
            # recipe must keep giving the same strips to rebuild them bit for bit (MODEL_CARD).
            # Its calibration is fitted on photos read the whole way (`reading_scores`).
            ink = find_ink(work_gray(img.convert("L"), max_side=1280))
        if ink.blank:
            return None
        line = normalize_line(ink.image, clean_ink(ink.mask))
    else:
        line = normalize_line(comp.image.astype(np.float32) / 255.0)
    return None if line is None else (line[0], comp.labels)


def collate(items: list[tuple[np.ndarray, list[int]]], device: torch.device, stride: int) -> Batch:
    """Strips of any width → one zero-padded batch (B, 1, 32, W) and CTC targets for a reader
    with `stride` strip columns per output frame."""
    width = max(s.shape[1] for s, _ in items)
    x = np.zeros((len(items), 1, items[0][0].shape[0], width), np.float32)
    for i, (strip, _) in enumerate(items):
        x[i, 0, :, : strip.shape[1]] = strip
    widths = torch.tensor([s.shape[1] // stride for s, _ in items], dtype=torch.long)  # frames per example
    labels = [torch.tensor(lab, dtype=torch.long) + 1 for _, lab in items]  # class = label + 1
    target = (
        torch.cat(labels) if labels else torch.empty(0, dtype=torch.long),
        widths,
        torch.tensor([len(lab) for lab in labels], dtype=torch.long),
        [lab for _, lab in items],
    )
    xb = torch.from_numpy(x).to(device).contiguous(memory_format=torch.channels_last)
    return Batch(xb, target, len(items))


def vary(x: torch.Tensor, gen: torch.Generator, strength: float) -> torch.Tensor:
    """Per-example blur, thicker or thinner strokes, noise and fainter ink: (B, 1, H, W) in [0, 1]."""
    b = x.shape[0]
    pick = torch.rand(b, 5, generator=gen) < torch.tensor([0.3, 0.2, 0.15, 0.3, 0.3]) * strength
    pick = pick.to(x.device).view(b, 5, 1, 1, 1)
    blur = F.avg_pool2d(x, 3, stride=1, padding=1)
    thick = F.max_pool2d(x, 3, stride=1, padding=1)
    thin = -F.max_pool2d(-x, 3, stride=1, padding=1)
    x = torch.where(pick[:, 0], blur, x)
    x = torch.where(pick[:, 1], thick, torch.where(pick[:, 2], thin, x))
    noise = torch.randn(x.shape, generator=gen).to(x.device) * 0.08
    x = torch.where(pick[:, 3], (x + noise).clamp(0, 1), x)
    faint = torch.empty(b, 1, 1, 1).uniform_(0.5, 1.0, generator=gen).to(x.device)
    return torch.where(pick[:, 4], x * faint, x).contiguous(memory_format=torch.channels_last)


def reader_stride(cfg: TrainConfig) -> int:
    """Strip columns per output frame of the reader `cfg` trains."""
    return frame_stride(int(network_kwargs(cfg.model, cfg.model_kwargs)["upsample"]))


def _decoded(log_probs: np.ndarray, frames: int) -> list[int]:
    return best_path(log_probs[:frames])[0]


def validation_numbers(
    x_val: np.ndarray, y_val: np.ndarray, device: torch.device, stride: int, n: int = VAL_NUMBERS
) -> list[Batch]:
    """The fixed validation set: `n` numbers of 1-8 digits from the validation digits, every
    spacing, a quarter of them as photos; batches of similar width. The same for every seed."""
    if not len(x_val):
        return []
    rng = np.random.default_rng(1234)
    xv = np.asarray(x_val, np.uint8).reshape(-1, 28, 28)
    items = [
        _example(
            xv,
            np.asarray(y_val),
            [],
            rng,
            int(rng.integers(1, 9)),
            SPACINGS[i % 3],
            hard=bool(i % 2),
            as_photo=i % 4 == 0,
        )
        for i in range(n)
    ]
    kept = sorted((it for it in items if it is not None), key=lambda it: it[0].shape[1])
    return [collate(kept[i : i + 100], device, stride) for i in range(0, len(kept), 100)]


def reading_scores(reader: Reader, x_val: np.ndarray, y_val: np.ndarray, n: int = VAL_PHOTOS) -> list[Scored]:
    """(logits (12, T), true labels) for `n` photos of numbers composed from the validation digits,
    each found and normalised by `lines.find_line` as a user's photo is (the strips the network
    trains on skip some of those steps): what `calibrate_reader` fits. 1-8 digits, every spacing,
    half with slant, broken strokes, dots and lines. Seeded: the same photos for every run."""
    rng = np.random.default_rng(4321)
    xv, yv = np.asarray(x_val, np.uint8).reshape(-1, 28, 28), np.asarray(y_val)
    scored = []
    for i in range(n if len(xv) else 0):
        spacing = SPACINGS[i % 3]
        comp = number(xv, yv, int(rng.integers(1, 9)), rng, spacing, hard=bool(i % 2))
        line = find_line(photo(comp, rng, spacing).data)
        if line is not None:  # a photo read as blank paper has no confidence to calibrate
            scored.append((reader.line_logits(line.strip), comp.labels))
    return scored


def calibrate_reader(scored: list[Scored], target: float = 0.99) -> tuple[float, float]:
    """(temperature, unsure threshold) for a reader from its `reading_scores`: the temperature that
    makes p(decoded string) a calibrated probability of being right (binary NLL, golden section on
    log T), and the lowest confidence whose answers stay `target` right (never below 0.5)."""
    if not scored:
        return 1.0, 0.0

    # The labels do not depend on the temperature (each frame's argmax stays), only their probability.
    labels = [best_path(logits.T)[0] for logits, _ in scored]
    right = np.asarray([lab == truth for lab, (_, truth) in zip(labels, scored, strict=True)], bool)

    def confidences(t: float) -> np.ndarray:
        log_p = [calibrated(logits, t)[3] for logits, _ in scored]
        return np.clip(np.exp(np.asarray(log_p)), 1e-9, 1 - 1e-9)

    def nll(log_t: float) -> float:
        c = confidences(math.exp(log_t))
        return float(-np.mean(np.where(right, np.log(c), np.log1p(-c))))

    a, b = math.log(0.25), math.log(4.0)
    g = (math.sqrt(5) - 1) / 2
    c1, c2 = b - g * (b - a), a + g * (b - a)
    f1, f2 = nll(c1), nll(c2)
    for _ in range(25):  # golden section: the bracket shrinks to ~1e-5 of its width, one new point a step
        if f1 < f2:
            b, c2, f2 = c2, c1, f1
            c1 = b - g * (b - a)
            f1 = nll(c1)
        else:
            a, c1, f1 = c1, c2, f2
            c2 = a + g * (b - a)
            f2 = nll(c2)
    temperature = math.exp((a + b) / 2)
    conf = confidences(temperature)
    order = np.argsort(-conf, kind="stable")
    accurate = np.cumsum(right[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(accurate >= target)
    threshold = float(conf[order][ok[-1]]) if ok.size else 1.0
    return temperature, max(0.5, threshold)


def test_numbers(
    reader: Reader, x_test: np.ndarray, y_test: np.ndarray, per_cell: int = 50
) -> dict[str, Any]:
    """Whole-number accuracy on photos of numbers composed from MNIST *test* digits: lengths 1-8
    × the three spacings × `per_cell`, seeded (the same photos for every run)."""
    rng = np.random.default_rng(20261201)
    by_spacing: dict[str, list[bool]] = {s: [] for s in SPACINGS}
    for spacing in SPACINGS:
        for length in range(1, 9):
            for _ in range(per_cell):
                shot = photo(number(x_test, y_test, length, rng, spacing, hard=False), rng, spacing)
                with Image.open(io.BytesIO(shot.data)) as img:
                    by_spacing[spacing].append(reader.read(img.convert("L")).number == shot.text)
    every = [ok for oks in by_spacing.values() for ok in oks]
    return {
        "test_accuracy": float(np.mean(every)),
        "test_errors": int(len(every) - sum(every)),
        "test_accuracy_by_spacing": {s: float(np.mean(v)) for s, v in by_spacing.items()},
        "test_numbers": len(every),
    }


class NumberTask:
    def __init__(self, setup: TaskSetup) -> None:
        cfg, x_val, y_val = setup.cfg, setup.x_val, setup.y_val
        self.cfg, self.device, self.gen = cfg, setup.device, setup.gen
        self.rank, self.world = setup.rank, setup.world
        self.x = np.asarray(setup.x_train, np.uint8).reshape(-1, 28, 28)  # (N, 28, 28)
        self.y = np.asarray(setup.y_train)  # (N,)
        # Marks at a digit's size, and none that is a 1 by another name ("/", "!", "(", "[", ":"):
        # smaller marks, and 1-like ones, had taught the first reader to call small digits and
        # narrow 1s "not a digit" (half its errors on the benchmark's spaced 8-digit numbers).
        chars = LETTERS + STANDALONE_SYMBOLS + DASHES
        self.marks = list(glyph_set(chars, TRAIN_FONTS, 2000, seed=cfg.seed, shrink=(1.0, 1.0)))
        self.stride = reader_stride(cfg)
        size = cfg.epoch_size or len(self.x)
        self.steps_per_epoch = max(1, size // cfg.batch_size)
        self.val = []
        if x_val is not None and y_val is not None:
            self.val = validation_numbers(x_val, y_val, self.device, self.stride)

    def _compose(self, epoch: int, out: queue.Queue, stop: threading.Event) -> None:
        """The epoch's numbers, batch by batch, into `out` (one producer: the order is fixed).
        A batch's numbers have about one length, so little of it is padding."""
        rng = np.random.default_rng([self.cfg.seed, epoch, self.rank])
        local_bs = self.cfg.batch_size // self.world
        try:
            for _ in range(self.steps_per_epoch):
                if stop.is_set():
                    return
                base = int(rng.integers(*LENGTHS))
                items: list[tuple[np.ndarray, list[int]]] = []
                while len(items) < local_bs:
                    length = int(np.clip(base + rng.integers(-1, 2), LENGTHS[0], LENGTHS[1] - 1))
                    item = _example(
                        self.x,
                        self.y,
                        self.marks,
                        rng,
                        length,
                        SPACINGS[int(rng.choice(3, p=SPACING_MIX))],
                        hard=bool(rng.random() < 0.75),
                        as_photo=bool(rng.random() < PHOTO_RATE),
                    )
                    if item is not None:
                        items.append(item)
                while not stop.is_set():
                    try:
                        out.put(items, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # surfaces in the training thread, not lost in this one
            out.put(exc)

    def batches(self, epoch: int) -> Iterator[Batch]:
        ready: queue.Queue = queue.Queue(maxsize=PREFETCH)
        stop = threading.Event()
        producer = threading.Thread(target=self._compose, args=(epoch, ready, stop), daemon=True)
        producer.start()
        try:
            for _ in range(self.steps_per_epoch):
                items = ready.get()
                if isinstance(items, BaseException):
                    raise items
                batch = collate(items, self.device, self.stride)
                if self.cfg.augment:
                    batch.x = vary(batch.x, self.gen, self.cfg.augment)
                yield batch
        finally:  # also when the loop stops early (an exception): the producer must not linger
            stop.set()
            producer.join()

    def loss(self, output: torch.Tensor, batch: Batch) -> torch.Tensor:
        targets, frames, lengths, _ = batch.target
        log_probs = F.log_softmax(output.float(), dim=1).permute(2, 0, 1)  # (T, B, 12)
        return F.ctc_loss(log_probs, targets.to(output.device), frames, lengths, blank=0, zero_infinity=True)

    def n_correct(self, output: torch.Tensor, batch: Batch) -> int:
        log_probs = F.log_softmax(output.detach().float(), dim=1).permute(0, 2, 1).cpu().numpy()  # (B, T, 12)
        _, frames, _, labels = batch.target
        return sum(_decoded(lp, int(f)) == lab for lp, f, lab in zip(log_probs, frames, labels, strict=True))

    @torch.no_grad()
    def validate(self, model: nn.Module) -> tuple[float, float] | None:
        if not self.val:
            return None
        model.eval()
        correct, loss, n = 0, 0.0, 0
        for batch in self.val:
            out = model(batch.x)
            loss += float(self.loss(out, batch)) * batch.n
            correct += self.n_correct(out, batch)
            n += batch.n
        model.train()
        return correct / n, loss / n
