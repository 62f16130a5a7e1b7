"""Tiny-UNet: a small U-Net with a tile-level classification head.

Plain ``nn.Module`` with no training code, so export and inference never depend on the
training loop. Width 32 is the reference (about 4.4M parameters, ~2.5 GMac per 128x128 tile).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

VALID_WIDTHS = (8, 16, 32)


def _double_conv(in_ch: int, out_ch: int, mid_ch: int | None = None) -> nn.Sequential:
    mid_ch = mid_ch or out_ch
    return nn.Sequential(
        nn.Conv2d(in_ch, mid_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(mid_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class _Down(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = _double_conv(in_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class _Up(nn.Module):
    """Bilinear upsampling (TensorRT-friendly ``Resize``) then concat with the skip."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = _double_conv(in_ch, out_ch, in_ch // 2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, x], dim=1))


class TinyUNet(nn.Module):
    """4 down / 4 up stages, skip connections, per-pixel logits and a tile logit.

    ``forward`` returns ``(map_logits (N,1,H,W), tile_logits (N,))``. An optional ``memory``
    (:class:`engines.tile_memory.TileMemory`, fitted after training) scores tiles by their
    bottleneck embedding; :func:`engines.inference_model.inference_module` uses it when present.
    An optional ``coarse_memory`` does the same for tiles of the image at a smaller scale.
    """

    def __init__(self, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        if width not in VALID_WIDTHS:
            raise ValueError(f"width must be one of {VALID_WIDTHS}, got {width}")
        self.in_channels = in_channels
        self.width = width
        w = width
        self.inc = _double_conv(in_channels, w)
        self.down1 = _Down(w, 2 * w)
        self.down2 = _Down(2 * w, 4 * w)
        self.down3 = _Down(4 * w, 8 * w)
        self.down4 = _Down(8 * w, 8 * w)  # bottleneck, halved as in bilinear U-Nets
        self.up1 = _Up(16 * w, 4 * w)
        self.up2 = _Up(8 * w, 2 * w)
        self.up3 = _Up(4 * w, w)
        self.up4 = _Up(2 * w, w)
        self.out_conv = nn.Conv2d(w, 1, 1)
        # Tile head on the bottleneck embedding (global average and max pooling), a small MLP.
        self.head = nn.Sequential(nn.Linear(16 * w, 64), nn.ReLU(inplace=True), nn.Linear(64, 1))
        self.memory: nn.Module | None = None
        self.coarse_memory: nn.Module | None = None
        # Per-position memory of one line's grids (engines.tile_memory.PositionMemory), on top of both.
        self.position_memory: nn.Module | None = None

    @property
    def embedding_dim(self) -> int:
        return 16 * self.width

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        map_logits, tile_logits, _ = self.forward_with_embedding(x)
        return map_logits, tile_logits

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        return x1, x2, x3, x4, self.down4(x4)

    @staticmethod
    def _pool(x5: torch.Tensor) -> torch.Tensor:
        """Global average and max pooling of the bottleneck, concatenated: ``(N, 2 * channels)``."""
        return torch.flatten(torch.cat([F.adaptive_avg_pool2d(x5, 1), F.adaptive_max_pool2d(x5, 1)], dim=1), 1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The tile embedding alone (encoder only, no decoder): what the tile memory stores."""
        return self._pool(self._encode(x)[-1])

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(map_logits, tile_logits, embedding (N, 16*width))``; the embedding is the pooled bottleneck."""
        x1, x2, x3, x4, x5 = self._encode(x)
        embedding = self._pool(x5)
        tile_logits = self.head(embedding)[:, 0]
        y = self.up1(x5, x4)
        y = self.up2(y, x3)
        y = self.up3(y, x2)
        y = self.up4(y, x1)
        return self.out_conv(y), tile_logits, embedding


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, in_channels: int, tile: int = 128) -> int:
    """Multiply-accumulates of Conv2d and Linear layers for one tile (hooks, no extra deps)."""
    macs = 0

    def conv_hook(mod: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal macs
        k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
        macs += int(out.numel() // out.shape[0]) * k

    def linear_hook(mod: nn.Linear, _inp, out: torch.Tensor) -> None:
        nonlocal macs
        macs += mod.in_features * mod.out_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, in_channels, tile, tile))
    model.train(was_training)
    for h in handles:
        h.remove()
    return macs
