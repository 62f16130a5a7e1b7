"""train: fit a Tiny-UNet (or the AE-SSIM baseline) on OK images only."""
from __future__ import annotations

import argparse
import shlex
import sys

from tools._cli import default_of, run_cli


def get_parser() -> argparse.ArgumentParser:
    from engines.train_config import TrainConfig

    def D(name: str):
        return default_of(TrainConfig, name)

    p = argparse.ArgumentParser(prog="train", description=__doc__)
    p.add_argument("--data", required=True, help="folder of OK images, or MVTec-style folder (uses train/good)")
    p.add_argument("--out", required=True, help="run folder: last.pt, train_log.jsonl, train_config.json")
    p.add_argument("--arch", default=D("arch"), choices=["tiny_unet", "ae_ssim"],
                   help="tiny_unet (the detector) or ae_ssim (a reconstruction baseline); default %(default)s")
    p.add_argument("--width", type=int, default=D("width"), choices=[8, 16, 32],
                   help="channels of the first block (the network's size); default %(default)s")
    p.add_argument("--channels", type=int, default=D("channels"), choices=[1, 3],
                   help="1: grey tiles, 3: colour; default %(default)s")
    p.add_argument("--epochs", type=int, default=D("epochs"), help="epochs of --steps-per-epoch steps; default %(default)s")
    p.add_argument("--steps-per-epoch", type=int, default=D("steps_per_epoch"),
                   help="batches of freshly synthesised samples per epoch; default %(default)s")
    p.add_argument("--batch-size", type=int, default=D("batch_size"), help="samples per step; default %(default)s")
    p.add_argument("--lr", type=float, default=D("lr"), help="peak learning rate (cosine schedule); default %(default)s")
    p.add_argument("--generators", default=D("generators"), metavar="NAMES",
                   help="comma-separated synthetic defect generators to draw from, a name repeated to draw it "
                        "more often (see synth-gallery); default: engines.synth.DEFAULT_GENERATORS, the nine "
                        "of the shipped model with uneven drawn three times as often as each other (uneven_step "
                        "is opt-in)")
    p.add_argument("--no-curriculum", action="store_true", help="sample all defect strengths from the start")
    p.add_argument("--ema", type=float, default=D("ema"), metavar="DECAY",
                   help="keep an exponential moving average of the weights (e.g. 0.999) and export it; 0 = off")
    p.add_argument("--seed", type=int, default=D("seed"), help="seed of the weights and the synthesis; default %(default)s")
    p.add_argument("--workers", type=int, default=D("workers"), help="data-synthesis worker processes; default %(default)s")
    p.add_argument("--threads", type=int, default=D("threads"), help="torch CPU threads; default %(default)s")
    p.add_argument("--device", default=D("device"), help="auto, cpu or cuda; default %(default)s")
    p.add_argument("--precision", default=D("precision"), choices=["fp32", "bf16"],
                   help="bf16 trains under autocast (its first and last blocks in fp32): on a CPU with native "
                        "bf16 about 1.4x faster, with weaker maps")
    p.add_argument("--no-memory", action="store_true", help="skip fitting the tile memory after training")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--init", default=D("init"), metavar="WEIGHTS",
                   help="start from these weights (a last.pt checkpoint or a model folder) with a fresh optimizer and "
                        "schedule, e.g. to fine-tune the shipped model with a lower --lr")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="with --init: train the decoder and heads only; the encoder, and so the tile memories and the "
                        "image score, stay as they were")
    p.add_argument("--image-scale", type=float, default=D("image_scale"), metavar="S",
                   help="train on every image downscaled by S (e.g. 0.5), as the detector's coarse pass downscales: "
                        "a network whose tiles see 1/S more of the part")
    p.add_argument("--export", metavar="MODEL_DIR", help="export the final checkpoint to this model folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)

    def go() -> None:
        from engines.train import TrainConfig, train
        from engines.train_config import warmup_for

        command = "train " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        cfg = TrainConfig(data=args.data, out=args.out, arch=args.arch, width=args.width, channels=args.channels,
                          epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
                          lr=args.lr, generators=args.generators, curriculum=not args.no_curriculum, ema=args.ema, memory=not args.no_memory, seed=args.seed,
                          workers=args.workers,
                          threads=args.threads, device=args.device, precision=args.precision, init=args.init,
                          freeze_encoder=args.freeze_encoder,
                          image_scale=args.image_scale, command=command,
                          warmup_steps=warmup_for(args.epochs, args.steps_per_epoch))
        out = train(cfg, resume=args.resume)
        print(f"checkpoint: {out / 'last.pt'}")
        if args.export:
            from engines.export import export_model

            print(f"model: {export_model(out / 'last.pt', args.export)}")

    return run_cli(go, "train")


if __name__ == "__main__":
    sys.exit(main())
