"""What a training run is given: the defaults of ``train`` (the command-line tool reads them from
here). Kept apart from the training loop so that reading them needs no torch."""
from __future__ import annotations

from dataclasses import dataclass

PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainConfig:
    data: str
    out: str
    arch: str = "tiny_unet"
    width: int = 16
    channels: int = 1
    epochs: int = 21
    steps_per_epoch: int = 250
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    curriculum: bool = True  # strong defects first, widening to faint ones over the first half
    generators: str = ""  # comma-separated engines.synth names (repeats weight them); "" = engines.synth.DEFAULT_GENERATORS
    ema: float = 0.0  # decay of an exponential moving average of the weights, exported instead of them; 0 = off
    memory: bool = True  # fit the tile memories (engines/tile_memory.py) on the OK images after training
    seed: int = 0
    workers: int = 1
    threads: int = 2
    device: str = "auto"
    precision: str = "fp32"  # or bf16: autocast, faster on a CPU with native bf16 but weaker maps
    init: str = ""  # start from these weights (a checkpoint or a model folder) with a fresh optimizer and schedule
    # With init: train the decoder and the heads only. The encoder, whose bottleneck embedding the
    # tile memories hold, stays as it was (weights and BatchNorm statistics), so the memories and
    # the image score they give do not change; only the map does.
    freeze_encoder: bool = False
    # Train (and fit the memories) on every image downscaled by this factor, as the detector's coarse
    # pass downscales (pipeline.vision.tiling.downscale): a network whose tiles see 1/scale more of
    # the part. 1: the images as they are.
    image_scale: float = 1.0
    command: str = ""
    # How the --init weights were trained (their own command, and what they started from in turn):
    # the exported sidecar names a fine-tuned model's whole recipe (extra.init_training_command).
    init_command: str = ""


def warmup_for(epochs: int, steps_per_epoch: int) -> int:
    """Learning-rate warm-up steps for a run of that length: the default, or a tenth of a short run."""
    return min(TrainConfig.warmup_steps, epochs * steps_per_epoch // 10)
