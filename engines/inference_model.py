"""The exported inference graph: normalised tiles in, defect probability maps and tile scores out.

Both architectures are wrapped to the one backend contract: input ``(N, C, 128, 128)`` float32,
outputs ``map (N, 1, 128, 128)`` in [0, 1] and ``score (N,)`` in [0, 1]; a model with a coarse tile
memory gives ``score (N, 2)``: novelty against the fine and against the coarse memory, and one with
a per-position memory ``(N, 2 + P)``: then the novelty against each of its P positions' OK tiles.
"""
from __future__ import annotations

import torch
from torch import nn

from engines.ae_ssim import AESSIM, ssim_map
from engines.tile_memory import attach_memory_from_state
from engines.tiny_unet import TinyUNet

ARCHS = ("tiny_unet", "ae_ssim")


def load_weights(model: nn.Module, state: dict, source: str = "state") -> nn.Module:
    """``load_state_dict`` that also restores the tile memories (their shape comes from the state).
    ``source`` names the file in messages."""
    model.load_state_dict(attach_memory_from_state(model, state, source))
    return model


def build_model(arch: str, in_channels: int, width: int) -> nn.Module:
    if arch == "tiny_unet":
        return TinyUNet(in_channels, width)
    if arch == "ae_ssim":
        return AESSIM(in_channels, width)
    raise ValueError(f"unknown arch {arch!r}; valid: {ARCHS}")


class SegmentationHead(nn.Module):
    """Defect probability map and tile score. With a tile memory the score is the tile's novelty and
    the map carries a small share of it (:meth:`TileMemory.blend`); without, the score is the head's.
    With a coarse memory as well, the score has a second column, the novelty against that memory,
    which the caller reads for tiles of its coarse pass (their map and first column go unused); a
    per-position memory adds one column per position of its line's grids after those two."""

    def __init__(self, model: TinyUNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        map_logits, tile_logits, embedding = self.model.forward_with_embedding(x)
        memory = self.model.memory
        if memory is not None:
            positions = getattr(self.model, "position_memory", None)
            coarse = self.model.coarse_memory
            if positions is not None and coarse is not None:  # it reads the same distances to the shared banks
                novelty, z, d2 = memory(embedding, distances=True)
                coarse_novelty, coarse_z, coarse_d2 = coarse(embedding, distances=True)
                prob = memory.blend(torch.sigmoid(map_logits), novelty)
                return prob, torch.cat([torch.stack([novelty, coarse_novelty], dim=1),
                                        positions(z, d2, coarse_z, coarse_d2)], dim=1)
            novelty = memory(embedding)
            prob = memory.blend(torch.sigmoid(map_logits), novelty)
            if coarse is not None:
                return prob, torch.stack([novelty, coarse(embedding)], dim=1)
            return prob, novelty
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
