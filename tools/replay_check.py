"""replay_check: replay a recorded sequence through the pipeline and compare with a golden results file."""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from tools._cli import run_cli


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="replay_check", description=__doc__)
    p.add_argument("sequence", help="recorded sequence folder")
    p.add_argument("--config", required=True, help="line YAML")
    p.add_argument("--golden", required=True, help="golden results .jsonl")
    p.add_argument("--update-golden", action="store_true", help="rewrite the golden file from this run")
    p.add_argument("--iou", type=float, default=0.5, help="defect boxes match at this IoU or more")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)

    def go() -> int:
        from pipeline.regression import compare, read_results
        from pipeline.supervisor import run_pipeline

        with tempfile.TemporaryDirectory(prefix="replay-") as tmp:
            results = Path(tmp) / "results.jsonl"
            code = run_pipeline(args.config, f"replay:{args.sequence}", results, show_status=False)
            if code != 0:
                print(f"replay_check: pipeline exited with {code}", file=sys.stderr)
                return 1
            if args.update_golden:
                Path(args.golden).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(results, args.golden)
                print(f"updated {args.golden} ({len(read_results(results))} frames)")
                return 0
            diffs = compare(read_results(args.golden), read_results(results), args.iou)
        for d in diffs:
            print(d)
        if diffs:
            print(f"replay_check: REGRESSION: {len(diffs)} difference(s)", file=sys.stderr)
            return 1
        print("replay_check: no differences")
        return 0

    return run_cli(go, "replay_check")


if __name__ == "__main__":
    sys.exit(main())
