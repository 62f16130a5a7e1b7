"""Training loop for the Tiny-UNet (synthetic defects, Dice + BCE) and the AE-SSIM baseline.

Step-based: an "epoch" is ``steps_per_epoch`` batches of freshly synthesised samples, so training
length does not depend on how many OK images there are. A checkpoint is written after every epoch
(``last.pt``), and ``resume`` continues from it with identical optimizer and schedule state.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from engines.ae_ssim import ssim_map
from engines.artifact import ALL_MEMORY_NAMES, ModelMeta
from engines.data import files_hash, training_images
from engines.inference_model import build_model, load_weights
from engines.synth import DEFAULT_GENERATORS, GENERATORS
from engines.tile_memory import attach_memories
from engines.train_config import PRECISIONS, TrainConfig  # noqa: F401  (TrainConfig re-exported)
from engines.train_data import SampleConfig, load_images, make_sample

CHECKPOINT = "last.pt"


# The faintest defect strength the curriculum reaches: the very faintest synthetic defects are
# hardly visible on this texture and mostly teach the model to hedge.
STRENGTH_FLOOR = 0.1


# CPU flags of native bf16 arithmetic (Linux /proc/cpuinfo names). Without them oneDNN emulates bf16,
# which is no faster than fp32.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively (``cpuinfo``: the text of /proc/cpuinfo, read if None)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: do not guess
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def precision_note(precision: str, device_type: str, cpuinfo: str | None = None) -> str | None:
    """Refuses an unknown precision; returns a line to print when bf16 will not be faster (a CPU
    without native bf16), else None. bf16 is opt-in: on a 2-vCPU AMD EPYC with native bf16 a
    default step took 0.33 s instead of 0.48 s, but its two runs outlined worse than fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and device_type == "cpu" and not cpu_has_native_bf16(cpuinfo):
        return ("train: this CPU has no native bf16 (flags " + ", ".join(NATIVE_BF16_FLAGS) + "): --precision bf16 "
                "is emulated here and likely slower than fp32")
    return None


# Blocks that stay fp32 under bf16 autocast: the first block is a high-gain texture detector (its
# BatchNorm multiplies a convolution output of standard deviation 0.07 by up to 16 in the shipped
# weights), which amplifies the rounding of its input and weights; the last is the logits' 1x1
# convolution. Together a few per cent of the network's multiply-adds.
FP32_BLOCKS = ("inc", "out_conv")


def keep_blocks_fp32(model: torch.nn.Module, device_type: str, names: tuple[str, ...] = FP32_BLOCKS) -> None:
    """Run the named child blocks of ``model`` in fp32 under autocast (their forward is wrapped on
    this instance only: the weights, the state dict and the export are untouched)."""
    for name in names:
        block = getattr(model, name, None)
        if block is None:
            continue
        forward = block.forward

        def fp32_forward(*args, _forward=forward):
            with torch.autocast(device_type, enabled=False):
                return _forward(*(a.float() if torch.is_tensor(a) else a for a in args))

        block.forward = fp32_forward


class SyntheticDefects(IterableDataset):
    def __init__(self, images: list[np.ndarray], cfg: SampleConfig, seed: int, total_steps: int,
                 batch_size: int, start_step: int, curriculum: bool, with_defects: bool) -> None:
        self.images, self.cfg, self.seed = images, cfg, seed
        self.total_steps, self.batch_size, self.start_step = total_steps, batch_size, start_step
        self.curriculum, self.with_defects = curriculum, with_defects

    def strength_range(self, step: int) -> tuple[float, float]:
        if not self.curriculum:
            return 0.0, 1.0
        progress = min(1.0, step / max(1.0, 0.5 * self.total_steps))
        return STRENGTH_FLOOR + (0.7 - STRENGTH_FLOOR) * (1.0 - progress), 1.0

    def __iter__(self) -> Iterator:
        info = torch.utils.data.get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info else (0, 1)
        # Each worker takes every n-th batch, seeded by batch index: a resumed run continues the stream.
        for step in range(self.start_step + wid, self.total_steps, nworkers):
            rng = np.random.default_rng([self.seed, step])
            lo_hi = self.strength_range(step)
            for _ in range(self.batch_size):
                x, mask, label, _name = make_sample(rng, self.images, self.cfg, lo_hi, self.with_defects)
                yield torch.from_numpy(x), torch.from_numpy(mask), torch.tensor(label)


def parse_generators(text: str) -> tuple[str, ...]:
    """``"a,b,b"`` -> ``("a", "b", "b")``, checked against ``engines.synth.GENERATORS``."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = sorted(set(names) - set(GENERATORS))
    if unknown:
        raise ValueError(f"--generators: unknown defect generator(s) {', '.join(unknown)}; "
                         f"valid: {', '.join(GENERATORS)}")
    return names


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum()
    return 1.0 - (2.0 * inter + eps) / (prob.sum() + target.sum() + eps)


def segmentation_loss(model: torch.nn.Module, x, mask, label) -> tuple[torch.Tensor, dict]:
    map_logits, tile_logits = model(x)
    map_logits, tile_logits = map_logits.float(), tile_logits.float()  # losses in fp32 under bf16 autocast
    bce = F.binary_cross_entropy_with_logits(map_logits, mask)
    dice = dice_loss(map_logits, mask)
    tile = F.binary_cross_entropy_with_logits(tile_logits, label)
    return bce + dice + 0.5 * tile, {"bce": bce.item(), "dice": dice.item(), "tile": tile.item()}


def reconstruction_loss(model: torch.nn.Module, x, _mask, _label) -> tuple[torch.Tensor, dict]:
    recon = model(x).float()
    ssim = (1.0 - ssim_map(x, recon)).mean()
    l1 = (recon - x).abs().mean()
    return ssim + l1, {"ssim": ssim.item(), "l1": l1.item()}


def lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class WeightAverage:
    """Exponential moving average of a model's weights and BatchNorm statistics.

    The decay ramps up as ``(1 + step) / (10 + step)`` so early steps, far from the final weights,
    fade quickly. Integer buffers (BatchNorm's batch counter) are copied, not averaged."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"--ema: the decay must lie between 0 and 1 (e.g. 0.999), got {decay}")
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        keep = min(self.decay, (1.0 + step) / (10.0 + step))
        for name, value in model.state_dict().items():
            avg = self.state[name]
            if avg.is_floating_point():
                avg.lerp_(value.detach(), 1.0 - keep)
            else:
                avg.copy_(value)

    def load(self, state: dict) -> None:
        for name, value in state.items():
            self.state[name].copy_(value)


# The defaults are sized to train a useful model, tile memories included, within this on 2 CPU
# cores (42.4 minutes on a 2-vCPU AMD EPYC at 21 epochs; 22 took 44.4 and 45.2). The memory
# fit took 40-49 s for 703 images.
CPU_DEFAULT_BUDGET_S = 45 * 60
MEMORY_S_PER_IMAGE = 0.06
# When the run projects its length: at the end of epoch PROJECT_AT_EPOCH (about 8 minutes in), from
# the pace since the end of the first epoch (the first carries the start-up: its pace was 0.480 and
# 0.524 s per step in two default runs on that machine that averaged 0.476 and 0.484 over the
# run). Projected so, those runs came to 43.9 and 43.1 minutes against 44.3 and 45.2 measured: the
# projection errs low, so a projection over the budget is worth reporting.
PROJECT_AT_EPOCH = 4


def uses_default_schedule(cfg: TrainConfig) -> bool:
    """Whether ``cfg`` trains the default's schedule (the one sized for the 45-minute CPU budget)."""
    return all(getattr(cfg, k) == getattr(TrainConfig, k) for k in ("arch", "width", "epochs", "steps_per_epoch",
                                                                      "batch_size"))


def budget_warning(seconds_per_step: float, steps_left: int, elapsed_s: float, memory_s: float,
                   steps_per_epoch: int, budget_s: float = CPU_DEFAULT_BUDGET_S) -> str | None:
    """A line saying the run is likely to overshoot ``budget_s`` and which ``--epochs`` would fit, or
    None. The projection is what has passed, the steps left at the measured pace, and the memory fit."""
    projected = elapsed_s + seconds_per_step * steps_left + memory_s
    if projected <= budget_s:
        return None
    fits = int((budget_s - memory_s) // (seconds_per_step * steps_per_epoch))
    advice = (f"--epochs {fits} would fit (fewer epochs, a weaker model)" if fits >= 1
              else "not even one epoch fits; use a faster machine or a GPU")
    return (f"train: at {seconds_per_step:.2f} s per step this run is likely to take about {projected / 60:.0f} minutes with "
            f"its memories, more than the {budget_s / 60:.0f} minutes the defaults are sized for on 2 CPU cores; "
            f"{advice}")


def initial_weights(path: str | Path) -> tuple[dict, str]:
    """The network weights to start a run from (``train --init``): those ``export_model`` would read
    from a ``last.pt`` checkpoint (the average once an ``--ema`` run has finished, the raw weights of
    one still running) or a model folder's ``model.pt``. The tile memories are left out: a run fits
    its own after training. Also how those weights were trained: their training command, followed
    by what they started from in turn (a model folder's sidecar, or a checkpoint's run config)."""
    path = Path(path)
    file = path / "model.pt" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path}: --init needs a checkpoint (last.pt) or a model folder with model.pt")
    state = torch.load(file, map_location="cpu", weights_only=True)
    checkpoint = isinstance(state.get("model"), dict)  # else a bare state dict, as a model folder's model.pt
    weights = state["model"] if checkpoint else state
    if path.is_dir():  # the sidecar says how it was trained
        meta = ModelMeta.load(path)
        command, before = meta.training_command, meta.extra.get("init_training_command", "")
    else:
        run = state.get("config", {}) if checkpoint else {}
        command, before = run.get("command", ""), run.get("init_command", "")
    weights = {k: v for k, v in weights.items() if k.split(".", 1)[0] not in ALL_MEMORY_NAMES}
    return weights, command + (f" (started from: {before})" if before else "")


ENCODER = ("inc", "down1", "down2", "down3", "down4")  # a tiny_unet's encoder, the bottleneck last


def frozen_encoder(model: torch.nn.Module, cfg: TrainConfig, resume: bool = False) -> list[torch.nn.Module]:
    """The encoder's modules, made untrainable, when ``cfg.freeze_encoder``; else nothing."""
    if not cfg.freeze_encoder:
        return []
    if not (cfg.init or resume):
        raise ValueError("--freeze-encoder keeps the encoder of the weights --init starts from: give --init WEIGHTS")
    if cfg.arch != "tiny_unet":
        raise ValueError(f"--freeze-encoder: only a tiny_unet's encoder can be kept, not a {cfg.arch}'s")
    modules = [getattr(model, name) for name in ENCODER]
    for module in modules:
        module.requires_grad_(False)
    return modules


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train and return the output folder holding ``last.pt`` and ``train_config.json``."""
    generators = parse_generators(cfg.generators) or DEFAULT_GENERATORS
    if not 0.0 < cfg.image_scale <= 1.0:
        raise ValueError(f"--image-scale: expected a factor in (0, 1], e.g. 0.5 for half-size images; got {cfg.image_scale}")
    device = pick_device(cfg.device)
    cfg = replace(cfg, generators=",".join(generators))  # the mix as drawn, the default spelled out
    note = precision_note(cfg.precision, device.type)
    if note:
        tqdm.write(note)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    files = training_images(cfg.data)
    sample_cfg = SampleConfig(channels=cfg.channels, generators=generators)
    images = load_images(files, cfg.channels, sample_cfg.tile, cfg.image_scale)
    model = build_model(cfg.arch, cfg.channels, cfg.width).to(device)
    model = model.to(memory_format=torch.channels_last)
    frozen = frozen_encoder(model, cfg, resume)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    total = cfg.epochs * cfg.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, cfg.warmup_steps))
    step = 0
    data_hash = files_hash(files)
    ckpt_path = out / CHECKPOINT
    if cfg.init and resume:
        raise ValueError(f"--init {cfg.init} and --resume both given: --resume continues {ckpt_path} as it is; drop --init")
    if cfg.init:
        weights, init_command = initial_weights(cfg.init)  # an unreadable path: the error naming the fix
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:  # another architecture, width or channel count: other names or shapes
            raise ValueError(f"{cfg.init}: its weights do not fit --arch {cfg.arch} --width {cfg.width} "
                             f"--channels {cfg.channels} ({(str(e).splitlines()[1:] or [str(e)])[0].strip()})") from None
        cfg = replace(cfg, init_command=init_command)
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"{ckpt_path}: nothing to resume; start without --resume")
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        if state["config"]["arch"] != cfg.arch or state["config"]["width"] != cfg.width:
            raise ValueError(f"{ckpt_path}: checkpoint is {state['config']['arch']} width "
                             f"{state['config']['width']}, but --arch {cfg.arch} --width {cfg.width} was asked")
        if state["config"].get("image_scale", 1.0) != cfg.image_scale:
            raise ValueError(f"{ckpt_path}: checkpoint was trained with --image-scale "
                             f"{state['config'].get('image_scale', 1.0)}, but {cfg.image_scale} was asked; resume with that")
        if state["config"].get("freeze_encoder", False) != cfg.freeze_encoder:
            flag = "with" if state["config"].get("freeze_encoder") else "without"
            raise ValueError(f"{ckpt_path}: checkpoint was trained {flag} --freeze-encoder; resume {flag} --freeze-encoder")
        saved = state["config"].get("generators")
        if saved and saved != cfg.generators:
            raise ValueError(f"{ckpt_path}: checkpoint was trained with --generators {saved}, but "
                             f"{cfg.generators} was asked; resume with --generators {saved}")
        # A finished EMA run stores the average as "model" and the raw weights as "raw_model".
        load_weights(model, state.get("raw_model", state["model"]))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
    start_step = step
    if cfg.precision == "bf16":
        keep_blocks_fp32(model, device.type)
    ema = WeightAverage(model, cfg.ema) if cfg.ema else None
    if resume and ema is not None and "ema" in state:
        ema.load(state["ema"])
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")

    loss_fn = segmentation_loss if cfg.arch == "tiny_unet" else reconstruction_loss
    dataset = SyntheticDefects(images, sample_cfg, cfg.seed, total, cfg.batch_size, step, cfg.curriculum,
                               with_defects=cfg.arch == "tiny_unet")
    loader = DataLoader(dataset, batch_size=cfg.batch_size, num_workers=cfg.workers,
                        persistent_workers=False, prefetch_factor=4 if cfg.workers else None)
    model.train()
    for module in frozen:  # BatchNorm keeps the statistics it was trained with
        module.eval()
    bar = tqdm(total=total, initial=step, disable=not progress, desc=f"train {cfg.arch} w{cfg.width} {cfg.precision}",
               unit="step", dynamic_ncols=True)
    log = (out / "train_log.jsonl").open("a")
    started, first_epoch_s = time.monotonic(), 0.0
    project = not resume and device.type == "cpu" and uses_default_schedule(cfg)  # the length projection
    for x, mask, label in loader:
        x = x.to(device, memory_format=torch.channels_last)
        mask, label = mask.to(device), label.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            loss, parts = loss_fn(model, x, mask, label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(model, step)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.1e}")
        if step % 25 == 0:
            log.write(json.dumps({"step": step, "loss": loss.item(), **parts,
                                  "elapsed_s": round(time.monotonic() - started, 1)}) + "\n")
            log.flush()
        if step % cfg.steps_per_epoch == 0 or step == total:
            save_checkpoint(ckpt_path, model, optimizer, scheduler, step, cfg, data_hash, files, ema)
        if project:
            if step == cfg.steps_per_epoch:
                first_epoch_s = time.monotonic() - started
            elif step == PROJECT_AT_EPOCH * cfg.steps_per_epoch:
                elapsed = time.monotonic() - started
                pace = (elapsed - first_epoch_s) / ((PROJECT_AT_EPOCH - 1) * cfg.steps_per_epoch)
                memory_s = MEMORY_S_PER_IMAGE * len(images) if cfg.memory else 0.0
                warning = budget_warning(pace, total - step, elapsed, memory_s, cfg.steps_per_epoch,
                                         CPU_DEFAULT_BUDGET_S)
                if warning:
                    tqdm.write(warning)
        if step >= total:
            break
    bar.close()
    raw_weights = None
    if ema is not None:  # from here on the model is the average: the memories are fitted on it, and it is exported
        raw_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(ema.state)
        save_checkpoint(ckpt_path, model, optimizer, scheduler, step, cfg, data_hash, files, ema, raw_weights)
    # Fitted once training is over, on the final weights: a resumed run that trained on refits the
    # memories its checkpoint held (they were fitted on the weights before), one that had nothing
    # left to train keeps them.
    stale = step > start_step or getattr(model, "memory", None) is None
    if cfg.memory and cfg.arch == "tiny_unet" and stale:
        t0 = time.monotonic()
        meta = ModelMeta(arch=cfg.arch, width=cfg.width, in_channels=cfg.channels, tile_size=sample_cfg.tile,
                         mean=sample_cfg.mean, std=sample_cfg.std)
        attach_memories(model, images, meta, progress=progress)
        log.write(json.dumps({"step": step, "memory_tiles": int(model.memory.bank.shape[0]),
                              "coarse_memory_tiles": int(model.coarse_memory.bank.shape[0]),
                              "memory_s": round(time.monotonic() - t0, 1),
                              "elapsed_s": round(time.monotonic() - started, 1)}) + "\n")
        save_checkpoint(ckpt_path, model, optimizer, scheduler, step, cfg, data_hash, files, ema, raw_weights)
    log.close()
    return out


def save_checkpoint(path: Path, model, optimizer, scheduler, step: int, cfg: TrainConfig, data_hash: str,
                    files: list[Path], ema: WeightAverage | None = None, raw_weights: dict | None = None) -> None:
    """``model`` is what export reads. With ``ema``, the average is kept beside it under "ema"; once
    training is over ``model`` holds the average and "raw_model" the last weights the optimizer made."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "config": asdict(cfg),
        "training_data_hash": data_hash,
        "training_files": len(files),
    }
    if ema is not None:
        state["ema"] = ema.state
    if raw_weights is not None:
        state["raw_model"] = raw_weights
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # a crash mid-write never leaves a truncated checkpoint
