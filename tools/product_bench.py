"""product_bench: train with the defaults on a second product (Fashion-MNIST, one class as the OK
part, the other nine as defective; Debian package dataset-fashion-mnist, nothing downloaded), export,
and report image AUROC per seed and per class. On 2 CPU cores one seed takes about 45 minutes."""
from __future__ import annotations

import argparse
import sys

from tools._cli import default_of, run_cli


def get_parser() -> argparse.ArgumentParser:
    from engines.fashion_mnist import CLASSES, DEFAULT_ROOT, ProductSpec

    p = argparse.ArgumentParser(prog="product_bench", description=__doc__)
    p.add_argument("--out", required=True, help="folder for the product's images, each seed's run and product_bench.json")
    p.add_argument("--fashion-mnist", default=str(DEFAULT_ROOT), metavar="DIR",
                   help="folder with the four *-ubyte.gz files; default %(default)s")
    p.add_argument("--ok-class", default=default_of(ProductSpec, "ok_class"), choices=CLASSES,
                   help="the class that is the OK part; default %(default)s")
    p.add_argument("--train-images", type=int, default=default_of(ProductSpec, "n_train"),
                   help="OK images to train on; default %(default)s")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds; default 0")
    p.add_argument("--epochs", type=int, default=None, help="override the training default (only for a quick check)")
    p.add_argument("--steps-per-epoch", type=int, default=None,
                   help="override the training default (only for a quick check)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads; default %(default)s")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)

    def go() -> None:
        from engines.fashion_mnist import ProductSpec
        from engines.product_bench import bench, format_table

        spec = ProductSpec(ok_class=args.ok_class, n_train=args.train_images)
        r = bench(args.out, spec, tuple(args.seeds), args.epochs, args.steps_per_epoch, args.threads,
                  root=args.fashion_mnist)
        print(format_table(r))
        print(f"wrote {args.out}/product_bench.json")

    return run_cli(go, "product_bench")


if __name__ == "__main__":
    sys.exit(main())
