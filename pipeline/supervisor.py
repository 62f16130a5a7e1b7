"""run_pipeline's supervisor: starts every stage as its own process, shows a live status line,
restarts a stage that crashes (up to MAX_RESTARTS times in RESTART_WINDOW_S), and stops cleanly
(flushing results) on Ctrl-C or end of source.

A restarted sinks or stitch stage goes on after the last record it handled (``--resume``). The
source is never restarted: a new one would read its frames again under new ids. A source that fails
(a camera lost for longer than ``source.reconnect_s``; it reconnects on its own before that) ends
the run like the end of its stream, flushing the frames it read, and run_pipeline exits 1."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from pipeline.config import VERDICTS, LineConfig, dump_config, load_config
from pipeline.sinks.results_log import set_aside
from pipeline.transport import endpoint, make_socket, recv, send

# A stage is restarted up to MAX_RESTARTS times within any RESTART_WINDOW_S; one more crash in that
# window ends the run. A line that runs for weeks may see a rare crash now and then without giving up.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 600.0
DRAIN_TIMEOUT_S = 60.0
# The source starts once every other stage has reported in (an infer worker reports after loading
# and warming its model), so the first parts do not wait behind start-up; after this long it starts
# anyway, with a line naming the stages that have not reported.
READY_TIMEOUT_S = 120.0


@dataclass
class StageProc:
    name: str
    args: list[str]
    # Ends on its own when the stream does (the source, its input exhausted), so exiting 0 is
    # finishing, not a crash. The others run until told to stop; the stitch stage too, since the end
    # of the stream, so that it can still send records again to a restarted sinks stage.
    finite: bool = False
    # Restarted after a crash with --resume: it goes on after what it had finished (sinks, stitch).
    # Otherwise the collector closes the frames it had in flight with ERROR records (infer, preprocess).
    resumes: bool = False
    # False for the source: a new one would read its frames again, under new ids.
    restartable: bool = True
    env: dict[str, str] = field(default_factory=dict)  # added to the supervisor's environment
    proc: subprocess.Popen | None = None
    restarts: int = 0
    restart_times: list[float] = field(default_factory=list)
    done: bool = False

    def may_restart(self, now: float) -> bool:
        """Fewer than MAX_RESTARTS restarts within the last RESTART_WINDOW_S; counts this one if so."""
        self.restart_times = [t for t in self.restart_times if now - t < RESTART_WINDOW_S]
        if len(self.restart_times) >= MAX_RESTARTS:
            return False
        self.restart_times.append(now)
        self.restarts += 1
        return True

    def start(self, *extra: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", *self.args, *extra],
                                     env={**os.environ, **self.env} if self.env else None)


@dataclass
class StatusBoard:
    stages: dict[str, dict] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def update(self, msg: dict) -> None:
        self.stages[msg["stage"]] = msg

    def not_ready(self, stages: "list[StageProc]") -> list[str]:
        """The stages, other than the source, that have not reported in yet (a stage's first status
        message comes once it has set up: an infer worker's after loading and warming its model)."""
        return [s.name for s in stages if s.name != "source" and s.name not in self.stages]

    def counts(self) -> dict:
        sinks = self.stages.get("sinks", {})
        return {v: int(sinks.get(f"v_{v}", 0)) for v in VERDICTS}

    def line(self) -> str:
        src = self.stages.get("source", {})
        counts = self.counts()
        out = sum(counts.values())
        elapsed = max(1e-6, time.monotonic() - self.started)
        sinks = self.stages.get("sinks", {})
        lat = sinks.get("latency_ms_sum", 0.0) / max(1, out)

        def ms(stage: str) -> str:
            s = [v for k, v in self.stages.items() if k.startswith(stage)]
            busy = sum(x.get("busy_ms", 0.0) for x in s)
            n = sum(x.get("processed", 0) for x in s)
            return f"{busy / n:.1f}" if n else "-"

        return (f"in {src.get('frames_in', 0)} out {out} ({' '.join(f'{k} {v}' for k, v in counts.items())}) "
                f"{out / elapsed:.1f} fps | pre {ms('preprocess')} infer {ms('infer')} stitch {ms('stitch')} ms "
                f"| latency {lat:.0f} ms | drops {src.get('dropped', 0)}")


def run_pipeline(config: str | Path, source: str, results: str | Path | None = None, overlays: str | None = None,
                 run_dir: str | Path | None = None, show_status: bool = True, workers: int | None = None,
                 save_masks: bool = False) -> int:
    from pipeline.sources import SOURCE_ENV, check_uri, expand_env, without_credentials

    cfg: LineConfig = load_config(config)
    source = expand_env(source)
    check_uri(source)
    cfg.source.uri = without_credentials(source)  # the config is written next to the results
    if overlays:
        cfg.sinks.overlays_dir = str(Path(overlays).resolve())
        cfg.sinks.save_masks = save_masks
    if workers:
        cfg.inference.workers = workers
    tmp = None
    if run_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="pipeline-")
        run_dir = tmp.name
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final_cfg = dump_config(cfg, run_dir / "line.yaml", "# final config of this run (written by run_pipeline)")
    if results:
        Path(results).parent.mkdir(parents=True, exist_ok=True)
        for kept in set_aside(results):
            print(f"run_pipeline: kept the previous results as {kept}", file=sys.stderr)
        dump_config(cfg, Path(str(results) + ".config.yaml"), f"# config that produced {Path(results).name}")
    common = ["--config", str(final_cfg), "--run-dir", str(run_dir)]
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + socket.gethostname()
    stages = [StageProc("sinks", ["pipeline.stages.sinks", *common, "--run-id", run_id]
                        + (["--results", str(results)] if results else []), resumes=True),
              StageProc("stitch", ["pipeline.stages.stitch", *common], resumes=True)]
    stages += [StageProc(f"infer{i}", ["pipeline.stages.infer", *common, "--worker", str(i)])
               for i in range(cfg.inference.workers)]
    stages += [StageProc("preprocess", ["pipeline.stages.preprocess", *common]),
               StageProc("source", ["pipeline.stages.source", *common], finite=True, restartable=False,
                         env={SOURCE_ENV: source})]  # not in argv, where ps shows a camera's password
    by_name = {s.name: s for s in stages}
    source_stage = by_name["source"]

    ctx = zmq.Context()
    status_sock = make_socket(ctx, zmq.PULL, endpoint(cfg.endpoints.status, run_dir), bind=True, hwm=1000)
    control = make_socket(ctx, zmq.PUSH, endpoint(cfg.endpoints.verdict, run_dir), bind=False, hwm=100)
    board = StatusBoard()
    interrupted = {"at": None}

    def on_sigint(*_: object) -> None:
        if interrupted["at"] is None:
            interrupted["at"] = time.monotonic()
            print("\nrun_pipeline: stopping: source closed, flushing results (Ctrl-C again to abort)", file=sys.stderr)
            src = by_name["source"]
            if src.proc and src.proc.poll() is None:
                src.proc.terminate()
        else:
            raise KeyboardInterrupt

    import threading

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if in_main else None
    exit_code = 0
    source_failed = None
    last_print = 0.0
    try:
        for s in stages:
            if s is not source_stage:
                s.start()
        waiting_since = time.monotonic()
        while True:
            try:
                msg = recv(status_sock, 100)
            except Exception:
                msg = None
            while msg is not None:
                board.update(msg[0])
                msg = recv(status_sock, 0)
            if source_stage.proc is None:
                if interrupted["at"] is not None:  # Ctrl-C before any frame was read: nothing to flush
                    break
                late = board.not_ready(stages)
                if late and time.monotonic() - waiting_since > READY_TIMEOUT_S:
                    print(f"run_pipeline: {', '.join(late)} not ready after {READY_TIMEOUT_S:.0f} s; starting the source anyway",
                          file=sys.stderr)
                if not late or time.monotonic() - waiting_since > READY_TIMEOUT_S:
                    source_stage.start()
            sinks_code = by_name["sinks"].proc.poll()  # a crash is restarted below, unless stopping anyway
            if sinks_code == 0 or (sinks_code is not None and interrupted["at"] is not None):
                exit_code = 0 if sinks_code == 0 else 1
                if source_failed is None and source_stage.proc is not None and interrupted["at"] is None:
                    try:  # it announced its end before exiting, so the sinks may finish first
                        code = source_stage.proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        code = 0
                    if code != 0:
                        source_failed = code
                        print(f"\nrun_pipeline: the source failed (exit {code}); its frames were flushed",
                              file=sys.stderr)
                break
            for s in stages:
                code = None if s.proc is None else s.proc.poll()  # the source has no process until the line is ready
                if code is None or s.done:
                    continue
                if s.finite and (code == 0 or interrupted["at"] is not None):
                    s.done = True
                    continue
                if not s.restartable:
                    s.done = True
                    source_failed = code
                    print(f"\nrun_pipeline: the source failed (exit {code}); flushing the frames it read, then stopping",
                          file=sys.stderr)
                    send(control, {"kind": "source_gone"})
                    continue
                if not s.may_restart(time.monotonic()):
                    print(f"\nrun_pipeline: {s.name} failed {MAX_RESTARTS + 1} times within {RESTART_WINDOW_S:.0f} s "
                          f"(exit {code}); giving up", file=sys.stderr)
                    return 1
                print(f"\nrun_pipeline: {s.name} exited with {code}; restarting ({len(s.restart_times)}/{MAX_RESTARTS} "
                      f"within {RESTART_WINDOW_S:.0f} s)", file=sys.stderr)
                if not s.resumes:
                    send(control, {"kind": "crash", "stage": s.name, "at_ns": time.monotonic_ns()})
                s.start(*(["--resume"] if s.resumes else []))
                if s.name == "stitch" and source_stage.done:  # the end of the stream may have died with the old one
                    send(control, {"kind": "source_gone"})
            if interrupted["at"] is not None and time.monotonic() - interrupted["at"] > DRAIN_TIMEOUT_S:
                print("run_pipeline: results did not drain in time; stopping anyway", file=sys.stderr)
                exit_code = 1
                break
            if show_status and time.monotonic() - last_print > 0.5:
                last_print = time.monotonic()
                waiting = board.not_ready(stages) if source_stage.proc is None else []
                text = f"starting: waiting for {', '.join(waiting)}" if waiting else board.line()
                print("\r" + text + "   ", end="", file=sys.stderr, flush=True)
        if show_status:
            print("\r" + board.line(), file=sys.stderr)
    except KeyboardInterrupt:
        exit_code = 130
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
        for s in reversed(stages):
            if s.proc and s.proc.poll() is None:
                s.proc.terminate()
        for s in stages:
            if s.proc:
                try:
                    s.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    s.proc.kill()
        status_sock.close()
        control.close()
        ctx.destroy(linger=0)
        if tmp is not None:
            tmp.cleanup()
    if interrupted["at"] is not None and exit_code == 0:
        exit_code = 130
    if source_failed is not None and exit_code == 0:
        exit_code = 1
    return exit_code
