"""BatchNorm folded into the convolution before it: the same function with fewer passes over
memory, for the torch predictor and the ONNX export (the checkpoint keeps the training form)."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from digitnet.networks import ConvBN

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # the module imports torch.jit helpers
    from torch.fx.experimental.optimization import fuse


class FoldedConvBN(nn.Module):
    """Inference form of a `ConvBN`: BN folded into the conv, then ReLU, then pool.

    Valid when every BN scale γ/√(σ²+ε) is positive: a positive per-channel affine map commutes
    with max-pooling, and so does ReLU, so conv→pool→BN→ReLU = (conv·s + b)→ReLU→pool exactly.
    ONNX Runtime then fuses Conv+ReLU and no elementwise pass over the feature map is left.
    """

    def __init__(self, block: ConvBN) -> None:
        super().__init__()
        bn, conv = block.bn, block.conv
        if bn.running_var is None or bn.running_mean is None:  # can_fold() rules this out
            raise ValueError("BatchNorm without running statistics cannot be folded")
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)  # (C,)
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=1, bias=True)
        with torch.no_grad():
            self.conv.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            self.conv.bias.copy_(bn.bias - bn.running_mean * scale)  # type: ignore[union-attr]
        self.pool = block.pool

    @staticmethod
    def can_fold(block: nn.Module) -> bool:
        if not isinstance(block, ConvBN) or block.bn.training or not block.bn.track_running_stats:
            return False
        return bool((block.bn.weight.detach() > 0).all())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.conv(x)))


def fold_for_inference(model: nn.Module) -> nn.Module:
    """A copy of eval-mode `model` with every foldable `ConvBN` replaced by a `FoldedConvBN`:
    the same function (up to float rounding), fewer passes over memory. Used by the torch
    predictor and the ONNX export; the checkpoint keeps the training form."""
    model = copy.deepcopy(model).eval()
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, ConvBN) and FoldedConvBN.can_fold(child):
                setattr(parent, name, FoldedConvBN(child))
    return model


def fast_module(model: nn.Module) -> nn.Module:
    """Every BatchNorm folded into its conv (across the pool by `fold_for_inference`, adjacent ones
    by torch.fx), weights channels_last: same function, fewer passes over memory. Falls back to
    the model as is when fx cannot trace it (correctness first)."""
    try:
        fused = fuse(fold_for_inference(model))
    except Exception:  # an architecture fx cannot trace
        fused = model
    return fused.eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch stubs lack it
