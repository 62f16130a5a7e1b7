"""run_pipeline's supervisor: checks the line, starts every stage as its own process, shows a live
status line, restarts a stage that crashes (up to MAX_RESTARTS times in RESTART_WINDOW_S), and
stops cleanly (flushing results) on Ctrl-C, SIGTERM or the end of the source.

A restarted sinks or stitch stage goes on after the last record it handled (``--resume``); the
frames a crashed preprocess or infer stage held are closed with ERROR (``crash``), the others go
on. The source is never restarted: a new one would read its frames again under new ids. A source
that fails (a camera lost for longer than ``source.reconnect_s``; it reconnects on its own before
that) ends the run like the end of its stream, flushing the frames it read, and run_pipeline exits 1.

A stage that crashes once too often ends the run: the source stops, every open frame gets an ERROR
record (``abort``), and run_pipeline exits 1. Whatever happens, before it exits it gives every
frame the source read and no stage recorded an ERROR record in the results file (``flush_unrecorded``):
every frame read has exactly one record. Exit codes: 0 done, 1 failed (source lost, crash loop,
drain timed out), 2 bad config/model/paths (nothing started), 130 Ctrl-C, 143 SIGTERM."""
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

from pipeline import messages
from pipeline.config import VERDICTS, LineConfig, dump_config, load_config
from pipeline.journal import SOURCE_JOURNAL, FrameJournal
from pipeline.sinks.results_log import ResultsLog, last_frame_id, set_aside, utc_iso
from pipeline.stages._common import STOP_SIGNAL, SUPERVISOR_ENV, read_holding
from pipeline.transport import endpoint, make_socket, recv, send_within
from pipeline.wire import WireError

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
                                     env={**os.environ, **self.env, SUPERVISOR_ENV: str(os.getpid())})

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Ask the stage to stop (it finishes what it is doing and exits)."""
        if self.alive():
            self.proc.send_signal(STOP_SIGNAL)


@dataclass
class StatusBoard:
    stages: dict[str, dict] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def update(self, msg: dict) -> None:
        if "stage" in msg:  # a status message (transport.recv checked its fields)
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

        trouble = {"bad msgs": sum(x.get("bad_messages", 0) for x in self.stages.values()),
                   "undelivered": sinks.get("undelivered", 0)}
        extra = "".join(f" | {k} {v}" for k, v in trouble.items() if v)
        return (f"in {src.get('frames_in', 0)} out {out} ({' '.join(f'{k} {v}' for k, v in counts.items())}) "
                f"{out / elapsed:.1f} fps | pre {ms('preprocess')} infer {ms('infer')} stitch {ms('stitch')} ms "
                f"| latency {lat:.0f} ms | drops {src.get('dropped', 0)}{extra}")


def flush_unrecorded(results: str | Path, run_dir: Path, why: str) -> int:
    """Append an ERROR record to ``results`` for every frame the source registered (its journal)
    after the file's last record: the last resort when the stages could not record them. Returns
    how many were written."""
    frames, count = FrameJournal.read_all(run_dir / SOURCE_JOURNAL)
    last = last_frame_id(results)
    ids = [fid for fid in sorted(frames) if fid > last]
    if count is not None:  # frames read but not yet in the journal's view cannot exist: ids are dense
        ids = sorted(set(ids) | set(range(last + 1, count)))
    if not ids:
        return 0
    log = ResultsLog(results)
    now_ns, mono_ns = time.time_ns(), time.monotonic_ns()
    try:
        for fid in ids:
            info = frames.get(fid, {})
            capture_ns = info.get("capture_ns")
            log.handle({"frame_id": fid, "source_name": info.get("source_name"), "verdict": "ERROR",
                        "reason": f"not inspected: {why}", "score": None, "defects": [],
                        "captured_at": (None if capture_ns is None else
                                        utc_iso(now_ns - (mono_ns - capture_ns)))}, {}, None)
    finally:
        log.close()
    return len(ids)


def run_pipeline(config: str | Path, source: str, results: str | Path | None = None, overlays: str | None = None,
                 run_dir: str | Path | None = None, show_status: bool = True, workers: int | None = None,
                 save_masks: bool = False) -> int:
    from pipeline.preflight import check_line
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
    check_line(cfg, results)  # one clear line and exit 2, before any process starts
    tmp = None
    if run_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="pipeline-")
        run_dir = tmp.name
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (SOURCE_JOURNAL, SOURCE_JOURNAL + ".1"):  # a run folder used again
        (run_dir / stale).unlink(missing_ok=True)
    final_cfg = dump_config(cfg, run_dir / "line.yaml", "# final config of this run (written by run_pipeline)",
                            redact=False)
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
    stopping = {"at": None, "signal": None}  # Ctrl-C / SIGTERM: stop reading, flush, exit
    gave_up = {"why": None}  # a stage crashed once too often

    def tell_stitch(msg: dict) -> None:
        """Never blocks: a stitch stage that is down (and so not taking messages) must not hang the supervisor."""
        if not send_within(control, msg, 1000):
            print(f"\nrun_pipeline: could not pass {msg['kind']!r} to the stitch stage (it is not taking messages)",
                  file=sys.stderr)

    def on_signal(signum: int, _frame: object) -> None:
        if stopping["at"] is None:
            stopping["at"], stopping["signal"] = time.monotonic(), signum
            what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            print(f"\nrun_pipeline: {what}: stopping: source closed, flushing results ({what} again to abort)",
                  file=sys.stderr)
            source_stage.stop()
        else:
            raise KeyboardInterrupt

    import threading

    in_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
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
            except WireError as exc:
                print(f"\nrun_pipeline: dropped a malformed status message: {exc}", file=sys.stderr)
                msg = None
            while msg is not None:
                board.update(msg[0])
                try:
                    msg = recv(status_sock, 0)
                except WireError as exc:
                    print(f"\nrun_pipeline: dropped a malformed status message: {exc}", file=sys.stderr)
            draining = stopping["at"] is not None or gave_up["why"] is not None
            if source_stage.proc is None:
                if draining:  # stopped before any frame was read: nothing to flush
                    break
                late = board.not_ready(stages)
                if late and time.monotonic() - waiting_since > READY_TIMEOUT_S:
                    print(f"run_pipeline: {', '.join(late)} not ready after {READY_TIMEOUT_S:.0f} s; starting the source anyway",
                          file=sys.stderr)
                if not late or time.monotonic() - waiting_since > READY_TIMEOUT_S:
                    source_stage.start()
            sinks_code = by_name["sinks"].proc.poll()  # a crash is restarted below, unless stopping anyway
            if sinks_code == 0 or (sinks_code is not None and stopping["at"] is not None):
                exit_code = 0 if sinks_code == 0 else 1
                if source_failed is None and source_stage.proc is not None and not draining:
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
                if s.finite and (code == 0 or stopping["at"] is not None or gave_up["why"] is not None):
                    s.done = True
                    continue
                if not s.restartable:
                    s.done = True
                    source_failed = code
                    print(f"\nrun_pipeline: the source failed (exit {code}); flushing the frames it read, then stopping",
                          file=sys.stderr)
                    tell_stitch(messages.source_gone())
                    continue
                held = [] if s.resumes else read_holding(run_dir, s.name)
                if held:  # its frames, and only its, become ERROR unless their result still comes
                    tell_stitch(messages.crash(s.name, time.monotonic_ns(), held))
                if gave_up["why"] is not None or not s.may_restart(time.monotonic()):
                    s.done = True
                    if gave_up["why"] is None:
                        gave_up["why"] = (f"{s.name} failed {MAX_RESTARTS + 1} times within {RESTART_WINDOW_S:.0f} s "
                                          f"(last exit {code}); the line stopped")
                        gave_up["at"] = time.monotonic()
                        print(f"\nrun_pipeline: {gave_up['why']}; giving every open frame an ERROR record",
                              file=sys.stderr)
                        source_stage.stop()
                        tell_stitch(messages.abort(gave_up["why"]))
                    continue
                print(f"\nrun_pipeline: {s.name} exited with {code}; restarting ({len(s.restart_times)}/{MAX_RESTARTS} "
                      f"within {RESTART_WINDOW_S:.0f} s)", file=sys.stderr)
                s.start(*(["--resume"] if s.resumes else []))
                if s.name == "stitch" and source_stage.done:  # the end of the stream may have died with the old one
                    tell_stitch(messages.source_gone())
            if gave_up["why"] is not None and (by_name["sinks"].done or by_name["stitch"].done
                                               or time.monotonic() - gave_up["at"] > DRAIN_TIMEOUT_S):
                break  # no stage left to record the open frames: flush_unrecorded below does
            if stopping["at"] is not None and time.monotonic() - stopping["at"] > DRAIN_TIMEOUT_S:
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
        exit_code = 130 if stopping["signal"] in (None, signal.SIGINT) else 128 + int(stopping["signal"])
    finally:
        try:
            _stop_all(stages)
            if results and source_stage.proc is not None:
                why = gave_up["why"] or ("the run was aborted" if exit_code in (130, 143) else
                                         "the line stopped before its record was written")
                n = flush_unrecorded(results, run_dir, why)
                if n:
                    print(f"run_pipeline: {n} frame(s) read but not recorded by the line got an ERROR record "
                          f"({why})", file=sys.stderr)
        finally:
            if in_main:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
            status_sock.close()
            control.close()
            ctx.destroy(linger=0)
            if tmp is not None:
                tmp.cleanup()
    if gave_up["why"] is not None:
        return 1
    if stopping["at"] is not None and exit_code == 0:
        exit_code = 130 if stopping["signal"] == signal.SIGINT else 128 + int(stopping["signal"])
    if source_failed is not None and exit_code == 0:
        exit_code = 1
    return exit_code


def _stop_all(stages: list[StageProc], grace_s: float = 5.0) -> None:
    """Ask every stage still running to stop, source first; kill what has not stopped after ``grace_s``."""
    for s in reversed(stages):
        s.stop()
    end = time.monotonic() + grace_s
    for s in stages:
        if s.proc is None:
            continue
        try:
            s.proc.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait()
