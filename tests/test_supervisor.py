"""The supervisor's start-up gate and the infer worker's warm-up, without processes. The whole line
passes the gate in every end-to-end test (tests/test_pipeline_e2e.py); what it buys in latency is
measured by `benchmark --pipeline --realtime`."""
import numpy as np

from pipeline.supervisor import StageProc, StatusBoard


def test_source_waits_for_every_other_stage_to_report_in():
    stages = [StageProc(n, []) for n in ("sinks", "stitch", "infer0", "infer1", "preprocess", "source")]
    board = StatusBoard()
    assert board.not_ready(stages) == ["sinks", "stitch", "infer0", "infer1", "preprocess"]
    for name in ("sinks", "stitch", "infer0", "preprocess"):
        board.update({"stage": name, "processed": 0})
    assert board.not_ready(stages) == ["infer1"]  # one worker still loading its model
    board.update({"stage": "infer1", "processed": 0})
    assert board.not_ready(stages) == []  # the source itself is never waited for


def test_infer_worker_warms_its_model_and_coarse_map_network_on_a_full_batch():
    from types import SimpleNamespace

    from pipeline.stages.infer import warm_up

    calls = []

    class Fake:
        def __init__(self, coarse=None):
            self.meta = SimpleNamespace(tile_size=128, in_channels=1)
            self.coarse_map = coarse

        def infer(self, x):
            calls.append((self, x.shape, float(np.abs(x).max())))
            return np.zeros((len(x), 1, 128, 128), np.float32), np.zeros(len(x), np.float32)

    coarse = Fake()
    model = Fake(coarse)
    warm_up(model, 32)
    assert [(c[0], c[1]) for c in calls] == [(model, (32, 1, 128, 128)), (coarse, (32, 1, 128, 128))]
    calls.clear()
    warm_up(Fake(), 0)  # a config's max_batch of 0 still warms with one tile
    assert calls[0][1] == (1, 1, 128, 128)


def test_restarts_are_limited_within_a_window_not_for_the_whole_run():
    from pipeline.supervisor import MAX_RESTARTS, RESTART_WINDOW_S

    s = StageProc("infer0", [])
    assert all(s.may_restart(float(i)) for i in range(MAX_RESTARTS))  # a burst of crashes...
    assert not s.may_restart(float(MAX_RESTARTS))  # ...one too many within the window: give up
    later = RESTART_WINDOW_S + MAX_RESTARTS  # a week-long line with a crash now and then keeps going
    assert s.may_restart(later) and s.may_restart(later + RESTART_WINDOW_S) and s.restarts == MAX_RESTARTS + 2
