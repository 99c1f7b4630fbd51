"""The networks digitnet trains: layers only, no registry (that is `digitnet.models`).

Every digit network takes float32 `(B, 1, 28, 28)` in [0, 1] and returns logits `(B, 10)`; the
reader takes a text-line strip `(B, 1, 32, W)` and returns CTC logits `(B, 12, W/4)`. The MNIST
mean/std normalisation is a buffer inside the model (`Normalize`), so a checkpoint, its ONNX
export and the server all see the same function of the raw pixels.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from digitnet.errors import ConfigError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class Normalize(nn.Module):
    def __init__(self, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> None:
        super().__init__()
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SeedMLP(nn.Module):
    """The original notebook's Keras model: Dense 784→10 sigmoid → 10 sigmoid → 10 softmax.

    The softmax lives in the loss (cross-entropy on logits), as Keras' does numerically.
    No input normalisation beyond /255: the notebook fed raw [0, 1] pixels.
    """

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(784, 10), nn.Sigmoid(), nn.Linear(10, 10), nn.Sigmoid(), nn.Linear(10, 10)
        )
        # Keras initialises Dense kernels Glorot-uniform and biases to zero; torch does not.
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, 10)


class MLP(nn.Module):
    """A strong MLP: two wide hidden layers with BN, ReLU and dropout."""

    def __init__(self, hidden: int = 1024, dropout: float = 0.2) -> None:
        super().__init__()
        self.net = nn.Sequential(
            Normalize(),
            nn.Flatten(),
            nn.Linear(784, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvBN(nn.Module):
    """conv3x3 (no bias) → [maxpool 2] → BN → ReLU.

    Pooling before BN/ReLU gives the same function class with 4× less memory-bound elementwise
    work, which is what dominates a small CNN's time on a CPU.
    """

    def __init__(self, c_in: int, c_out: int, pool: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.pool(self.conv(x))))


class CNN(nn.Module):
    """A stride-2 4×4 stem (28×28 → 14×14, so nothing runs at full resolution), then `blocks`
    of `ConvBN` given as [(channels, pool), …], then [dropout and] a linear head on the flattened map.

    `tta` (test-time augmentation): in eval mode, with `tta=r`, the output is the log of the mean
    softmax over the (2r+1)² copies of the input shifted by up to r pixels each way, so evaluate,
    predict, the ONNX export and the server all see the averaged function. Training never does it.
    """

    def __init__(
        self,
        stem: int = 32,
        blocks: list | tuple = ((32, True), (64, True)),
        dropout: float = 0.0,
        tta: int = 0,
    ) -> None:
        super().__init__()
        if tta not in (0, 1, 2):
            raise ConfigError(f"tta must be 0, 1 or 2 pixels, got {tta!r}")
        self.tta = tta
        layers: list[nn.Module] = [
            Normalize(),
            nn.Conv2d(1, stem, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
        ]  # (B, stem, 14, 14)
        c, hw = stem, 14
        for c_out, pool in blocks:
            layers.append(ConvBN(c, c_out, bool(pool)))
            c, hw = c_out, hw // 2 if pool else hw
        self.features = nn.Sequential(*layers)  # (B, c, hw, hw)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.head = nn.Linear(c * hw * hw, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.tta:
            return self.head(self.dropout(self.features(x).flatten(1)))  # (B, 10)
        views = shifted_views(x, self.tta)  # (V·B, 1, 28, 28), V = (2·tta+1)²
        logits = self.head(self.features(views).flatten(1)).float()  # (V·B, 10)
        probs = torch.softmax(logits, 1).reshape((2 * self.tta + 1) ** 2, -1, 10).mean(0)  # (B, 10)
        return probs.clamp_min(1e-12).log()


def shifted_views(x: torch.Tensor, r: int) -> torch.Tensor:
    """(B, C, H, W) → ((2r+1)²·B, C, H, W): every copy of x shifted by -r…r pixels in each
    direction, zeros shifted in (MNIST digits sit inside a ~4-pixel blank border, so little is lost)."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (r, r, r, r))
    return torch.cat(
        [padded[..., dy : dy + h, dx : dx + w] for dy in range(2 * r + 1) for dx in range(2 * r + 1)]
    )


def views_per_image(model: nn.Module) -> int:
    """How many copies of each input image one forward pass of `model` runs (max over submodules,
    e.g. an ensemble's members): callers divide their batch by it to bound memory."""
    return max((2 * getattr(m, "tta", 0) + 1) ** 2 for m in model.modules())


@contextmanager
def single_view(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, `model` and every submodule with `tta` (an ensemble's members too)
    predict from the input alone: the cheap per-epoch validation during training, a distillation
    teacher. Other models pass through unchanged."""
    saved = [(m, int(getattr(m, "tta", 0))) for m in model.modules() if getattr(m, "tta", 0)]
    for m, _ in saved:
        setattr(m, "tta", 0)  # noqa: B010 - `tta` is CNN's attribute, not Module's
    try:
        yield model
    finally:
        for m, tta in saved:
            setattr(m, "tta", tta)  # noqa: B010


READER_CLASSES = 12  # CTC blank (0), digits 0-9 (1-10), a mark that is not a digit (11)
READER_STRIDE = 4  # strip columns per frame of the convolutions (the strip's width is a multiple)
UPSAMPLES = (1, 2)  # output frames per convolution frame that a reader may have


def frame_stride(upsample: int) -> int:
    """Strip columns per output frame of a reader with `upsample` output frames per 4 columns."""
    if upsample not in UPSAMPLES:
        raise ConfigError(f"reader upsample must be 1 or 2 frames per 4 columns, got {upsample}")
    return READER_STRIDE // upsample


class NumberReader(nn.Module):
    """A handwritten number, end to end: a text-line strip (B, 1, 32, W) in [0, 1], light on dark
    (`inference.lines.normalize_line`), → per-frame logits (B, 12, W/stride) for CTC.

    Convolutions only: three pooled blocks of `depth` 3×3 convolutions take the strip to 8 × W/4
    and then pool its height to 4, a (4, 1) convolution collapses it, and 1-D convolutions along
    the line, dilated by `dilations`, give each frame context on each side (with (1, 2, 4, 8): 31
    frames, ~140 px at a 28 px text height, where a digit is ~20 px wide: enough to untangle
    strokes that cross into a neighbour).

    `upsample=2` gives two output frames per 4 columns (`stride` 2): CTC needs a blank frame
    between two equal labels, and two narrow 1s side by side are only 1-2 frames of 4 columns
    apart ("1911" was read "191"). A transposed convolution turns each frame into two; it starts
    as plain duplication, so a stride-4 reader's weights load into it and read exactly as before
    (`training.loop.start_from`, `--set init=`), and fine-tuning then learns what each half of a
    frame sees.
    """

    input_size = (1, 32, 160)  # (C, H, W) of a typical input: what the precision probe times

    def __init__(
        self,
        channels: list | tuple = (32, 48, 96),
        hidden: int = 128,
        dropout: float = 0.1,
        dilations: list | tuple = (1, 2, 4),
        depth: int = 1,
        upsample: int = 1,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ConfigError(f"reader depth must be at least 1 convolution per block, got {depth}")
        self.stride = frame_stride(upsample)  # strip columns per output frame
        c1, c2, c3 = channels

        def block(c_in: int, c_out: int, pool: tuple[int, int]) -> list[nn.Module]:
            layers: list[nn.Module] = []
            for i in range(depth):  # a deeper block sees a whole digit (~20 px) before the pooling
                layers += [
                    nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                ]
            return [*layers, nn.MaxPool2d(pool)]

        self.features = nn.Sequential(
            Normalize(),
            *block(1, c1, (2, 2)),
            *block(c1, c2, (2, 2)),
            *block(c2, c3, (2, 1)),  # (B, c3, 4, W/4)
            nn.Conv2d(c3, hidden, (4, 1), bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),  # (B, h, 1, W/4)
        )
        context: list[nn.Module] = []
        for d in dilations:
            context += [
                nn.Conv1d(hidden, hidden, 3, padding=d, dilation=d, bias=False),
                nn.BatchNorm1d(hidden),
                nn.ReLU(inplace=True),
            ]
        if upsample > 1:
            split = nn.ConvTranspose1d(hidden, hidden, upsample, stride=upsample)
            with torch.no_grad():  # each frame copied `upsample` times: the stride-4 function
                split.weight.copy_(torch.eye(hidden)[:, :, None].expand(-1, -1, upsample))
                split.bias.zero_()  # type: ignore[union-attr]  # bias=True: never None
            context += [split, nn.ReLU(inplace=True)]  # the features are >= 0: ReLU keeps the copy
        self.context = nn.Sequential(
            *context,
            nn.Dropout(dropout),
        )
        self.head = nn.Conv1d(hidden, READER_CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x).squeeze(2)  # (B, hidden, W/4)
        return self.head(self.context(f))  # (B, 12, W/stride)
