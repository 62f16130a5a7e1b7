"""benchmark: ms per tile for each backend and batch size, and the machine's fp32 limit."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tools._cli import run_cli


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return values


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmark", description=__doc__)
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--backend", default="onnxruntime,torch,tensorrt", help="comma-separated backend names: "
                   "onnxruntime, onnxruntime-cuda, torch, tensorrt (those that cannot run here are listed as skipped)")
    p.add_argument("--batch", type=_ints, default=[1, 16, 64], help="comma-separated batch sizes")
    p.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per backend and batch")
    p.add_argument("--min-calls", type=int, default=10,
                   help="timed calls per row at least, however short --seconds; default %(default)s")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for onnxruntime/torch (0: library default)")
    p.add_argument("--device", default="auto", help="torch backend device: auto, cpu, cuda")
    p.add_argument("--engine", help="TensorRT engine file (default MODEL/model.engine)")
    p.add_argument("--cuda-graph", action="store_true", help="torch/tensorrt: capture a CUDA graph per batch size")
    p.add_argument("--no-peak", action="store_true", help="skip measuring the machine's fp32 limit")
    p.add_argument("--pipeline", metavar="SEQ", nargs="+",
                   help="also run the whole pipeline over a recorded sequence; several: one run each, and a summary "
                        "of the line's accuracy over them")
    p.add_argument("--config", help="line config for --pipeline (default: the bundled demo line)")
    p.add_argument("--realtime", action="store_true",
                   help="with --pipeline: replay at the recorded pace (latency as on the line) instead of as fast as possible")
    p.add_argument("--json", help="write the report as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)

    def go() -> None:
        from engines.benchmark import format_results, measure_fp32_peak_gflops, run_benchmark

        backends = [b for b in args.backend.split(",") if b]
        options = {"onnxruntime": {"threads": args.threads}, "torch": {"threads": args.threads, "device": args.device},
                   "tensorrt": {"engine": args.engine}}
        # The machine's limit first, while nothing else of ours has warmed up or is running.
        peak = None if args.no_peak else measure_fp32_peak_gflops(threads=args.threads)
        report = run_benchmark(args.model, backends, args.batch, args.seconds, args.min_calls, options)
        if args.cuda_graph:
            for batch in args.batch:
                graph_opts = {"torch": {**options["torch"], "cuda_graph_batch": batch},
                              "tensorrt": {**options["tensorrt"], "cuda_graph_batch": batch}}
                extra = run_benchmark(args.model, [b for b in backends if b in graph_opts], [batch], args.seconds,
                                      args.min_calls, graph_opts)
                for r in extra["results"]:
                    r["backend"] += "+cudagraph"
                report["results"] += [r for r in extra["results"] if "cuda" in r["device"]]
        if peak:
            report["fp32_peak_gflops"] = peak
            for part in [report] + ([report["coarse_map"]] if "coarse_map" in report else []):
                part["limit_ms_per_tile"] = 2.0 * part["gmac_per_tile"] / peak * 1000.0
                for r in part["results"]:
                    if r["device"] == "cpu":
                        r["x_fp32_limit"] = r["ms_per_tile_p50"] / part["limit_ms_per_tile"]
        if args.pipeline:
            from pipeline.benchmark import line_summary, pipeline_benchmark

            runs = [pipeline_benchmark(seq, args.config, args.model, args.realtime) for seq in args.pipeline]
            report["pipeline"] = runs[0]
            if len(runs) > 1:
                report["pipelines"], report["line_summary"] = runs, line_summary(runs)
        from engines.artifact import ModelMeta

        meta = ModelMeta.load(args.model)
        source = Path(str(meta.extra.get("quantized_from", "")))
        if meta.precision == "int8" and (source / "model.json").is_file():
            from engines.quantize import check_images, int8_vs_fp32

            check = int8_vs_fp32(source, args.model, check_images())
            report["int8_vs_fp32"] = check
            w = check["worst"]
            print(f"int8 vs fp32 ({source}) on {check['images']} real images: map max diff {w['map_max_diff']:.3f}, "
                  f"pixels off by > 0.1 at most {w['pixels_off_by_0.1']:.2%}, pixels flipped at the pixel threshold "
                  f"at most {w['pixels_flipped']:.2%}, score diff at most {w['score_diff']:.3f}")
        report["command"] = "benchmark " + " ".join(argv if argv is not None else sys.argv[1:])
        print(format_results(report))
        if report.get("untrained"):
            print("note: untrained weights (export_model --untrained): valid for speed, not accuracy")
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
            print(f"wrote {args.json}")

    return run_cli(go, "benchmark")


if __name__ == "__main__":
    sys.exit(main())
