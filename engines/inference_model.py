"""The exported inference graph: normalised tiles in, defect probability maps and tile scores out.

Both architectures are wrapped to the one backend contract: input ``(N, C, 128, 128)`` float32,
outputs ``map (N, 1, 128, 128)`` in [0, 1] and ``score (N,)`` in [0, 1].
"""
from __future__ import annotations

import torch
from torch import nn

from engines.ae_ssim import AESSIM, ssim_map
from engines.tiny_unet import TinyUNet

ARCHS = ("tiny_unet", "ae_ssim")


def build_model(arch: str, in_channels: int, width: int) -> nn.Module:
    if arch == "tiny_unet":
        return TinyUNet(in_channels, width)
    if arch == "ae_ssim":
        return AESSIM(in_channels, width)
    raise ValueError(f"unknown arch {arch!r}; valid: {ARCHS}")


class SegmentationHead(nn.Module):
    def __init__(self, model: TinyUNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        map_logits, tile_logits = self.model(x)
        return torch.sigmoid(map_logits), torch.sigmoid(tile_logits)


class ReconstructionHead(nn.Module):
    def __init__(self, model: AESSIM) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        anomaly = torch.clamp((1.0 - ssim_map(x, self.model(x))) * 0.5, 0.0, 1.0)
        return anomaly, torch.amax(anomaly, dim=(1, 2, 3))


def inference_module(arch: str, model: nn.Module) -> nn.Module:
    wrapper = SegmentationHead(model) if arch == "tiny_unet" else ReconstructionHead(model)
    return wrapper.eval()
