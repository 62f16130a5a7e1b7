"""AE-SSIM baseline: a convolutional autoencoder trained to reconstruct OK tiles.

The anomaly map is the local structural dissimilarity ``(1 - SSIM) / 2`` between a tile and its
reconstruction, so a defect the autoencoder cannot reproduce lights up. Kept as a plain
``nn.Module`` like the Tiny-UNet, and exported behind the same inference interface.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

SSIM_WINDOW = 7


def _block(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch),
                         nn.LeakyReLU(0.2, inplace=True))


class AESSIM(nn.Module):
    """Encoder 128 -> 8 (x16 down), a narrow bottleneck, and a mirrored bilinear decoder."""

    def __init__(self, in_channels: int = 1, width: int = 32, latent: int = 64) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.width = width
        w = width
        self.encoder = nn.Sequential(
            _block(in_channels, w, 2), _block(w, w, 1), _block(w, 2 * w, 2), _block(2 * w, 2 * w, 1),
            _block(2 * w, 4 * w, 2), _block(4 * w, 4 * w, 1), _block(4 * w, 4 * w, 2),
            nn.Conv2d(4 * w, latent, 1),
        )
        ups = []
        chans = [latent, 4 * w, 2 * w, w, w]
        for i in range(4):
            ups += [nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False),
                    _block(chans[i], chans[i + 1], 1), _block(chans[i + 1], chans[i + 1], 1)]
        self.decoder = nn.Sequential(*ups, nn.Conv2d(w, in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float = 8.0) -> torch.Tensor:
    """Per-pixel SSIM with a uniform window, averaged over channels: ``(N, 1, H, W)``.

    ``data_range`` is the span of the normalised input ((1 - 0) / std with std 0.25 gives 4;
    a margin for over/undershoot makes it 8).
    """
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    pad = SSIM_WINDOW // 2

    def pool(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(t, (pad, pad, pad, pad), mode="reflect"), SSIM_WINDOW, 1)

    mu_x, mu_y = pool(x), pool(y)
    var_x = pool(x * x) - mu_x * mu_x
    var_y = pool(y * y) - mu_y * mu_y
    cov = pool(x * y) - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim.mean(dim=1, keepdim=True)
