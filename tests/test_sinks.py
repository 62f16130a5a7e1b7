import json
import time

import numpy as np
import pytest

from pipeline.sinks.http import HttpSink
from pipeline.sinks.modbus import ModbusSink
from pipeline.sinks.overlays import OverlaySink
from pipeline.sinks.results_log import ResultsLog
from tests.servers import MesServer, free_port


def _record(i, verdict="NG", n_defects=2):
    defects = [{"bbox": [10, 10, 5, 5], "area_px": 25.0, "score": 0.9, "polygon": [[10, 10], [15, 10], [15, 15]]}] * n_defects
    return {"frame_id": i, "source_name": f"f{i}.png", "verdict": verdict, "reason": "", "score": 0.8,
            "defects": defects if verdict == "NG" else [], "latency_ms": 12.0}


def _wait(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_modbus_sink_against_real_server(plc):
    port, reader = plc
    sink = ModbusSink("127.0.0.1", port, 1, verdict_coil=3, result_register=10, heartbeat_register=14, heartbeat_s=0.0)
    sink.handle(_record(0, "NG", 2), {}, None)
    assert reader.read_coils(3, count=1, device_id=1).bits[0] is True
    # the block: verdict code, defect count, missed results, sequence
    assert reader.read_holding_registers(10, count=4, device_id=1).registers == [2, 2, 0, 1]
    sink.handle(_record(1, "OK"), {}, None)
    assert reader.read_coils(3, count=1, device_id=1).bits[0] is False
    assert reader.read_holding_registers(10, count=4, device_id=1).registers == [1, 0, 0, 2]
    sink.tick()
    sink.tick()
    assert reader.read_holding_registers(14, count=1, device_id=1).registers[0] == 2
    sink.close()


def test_modbus_rejects_parts_not_inspected_and_says_why(plc):
    """Fail-safe by default: ERROR and DROPPED set the reject coil like NG (a part nobody inspected
    must not pass as good); NO_PART does not. The verdict register tells the PLC which it was."""
    from pipeline.config import LineConfig
    from pipeline.sinks.base import build_sinks

    port, reader = plc
    cfg = LineConfig()
    cfg.sinks.modbus.enabled, cfg.sinks.modbus.port, cfg.sinks.modbus.verdict_coil = True, port, 5
    (queued,) = build_sinks(cfg)  # the config's defaults: block at 0, reject NG, ERROR, DROPPED
    sink = queued.sink  # on its own thread in the line; called directly here
    strict = ModbusSink("127.0.0.1", port, 1, verdict_coil=6, result_register=20, heartbeat_register=24,
                        reject_verdicts=["NG"])
    seen = {}
    for verdict in ("OK", "NG", "NO_PART", "ERROR", "DROPPED"):
        for s in (sink, strict):
            s.handle(_record(0, verdict), {}, None)
        seen[verdict] = (reader.read_coils(5, count=2, device_id=1).bits[:2],
                         reader.read_holding_registers(0, count=1, device_id=1).registers[0],
                         reader.read_holding_registers(20, count=1, device_id=1).registers[0])
    assert seen == {"OK": ([False, False], 1, 1), "NG": ([True, True], 2, 2), "NO_PART": ([False, False], 3, 3),
                    "ERROR": ([True, False], 4, 4), "DROPPED": ([True, False], 5, 5)}
    queued.close()
    strict.close()


def test_modbus_sink_survives_plc_down():
    sink = ModbusSink("127.0.0.1", free_port(), 1, 0, 0, 4, timeout_s=0.2)
    t0 = time.monotonic()
    sink.handle(_record(0), {}, None)  # nobody listening: counted, not raised
    assert sink.failures >= 1 and time.monotonic() - t0 < 3.0
    sink.close()


def test_http_sink_delivers_in_order(tmp_path):
    port = free_port()
    mes = MesServer(port)
    try:
        sink = HttpSink(f"http://127.0.0.1:{port}/parts", tmp_path / "spool", backoff_s=0.05)
        for i in range(5):
            sink.handle({**_record(i), "run_id": "20261127T180000Z-line1"} if i else _record(i), {}, None)
        assert _wait(lambda: len(mes.received) == 5)
        assert [r["frame_id"] for r in mes.received] == list(range(5))
        # the key the MES can recognise a repeated POST by; none for a record without a run
        assert mes.idempotency_keys == [None] + [f"20261127T180000Z-line1/{i}" for i in range(1, 5)]
        sink.close()
        assert sink.pending() == 0
    finally:
        mes.stop()


def test_http_sink_spools_while_mes_down_then_sends_in_order(tmp_path):
    port = free_port()
    spool = tmp_path / "spool"
    sink = HttpSink(f"http://127.0.0.1:{port}/parts", spool, timeout_s=0.5, retries=1, backoff_s=0.05, max_backoff_s=0.2)
    t0 = time.monotonic()
    for i in range(4):
        sink.handle(_record(i), {}, None)
    assert time.monotonic() - t0 < 0.5  # the line never waits for the MES
    time.sleep(0.3)
    assert sink.pending() == 4
    sink.close(drain_s=0)
    # A restarted line finds the spool and delivers it once the MES is back, oldest first.
    mes = MesServer(port)
    try:
        sink2 = HttpSink(f"http://127.0.0.1:{port}/parts", spool, backoff_s=0.05)
        sink2.handle(_record(4), {}, None)
        assert _wait(lambda: len(mes.received) == 5)
        assert [r["frame_id"] for r in mes.received] == [0, 1, 2, 3, 4]
        sink2.close()
    finally:
        mes.stop()


def test_http_sink_rejects_bad_url(tmp_path):
    with pytest.raises(ValueError, match="sinks.http.url"):
        HttpSink("ftp://x", tmp_path)


def test_results_log_and_overlays(tmp_path):
    log = ResultsLog(tmp_path / "r.jsonl")
    log.handle(_record(0), {}, None)
    log.close()
    rec = json.loads((tmp_path / "r.jsonl").read_text())
    assert rec["verdict"] == "NG" and rec["defects"][0]["bbox"] == [10, 10, 5, 5]
    sink = OverlaySink(tmp_path / "ov", save_masks=True)
    frame = np.zeros((60, 80, 3), np.uint8)
    sink.handle(_record(0), {"frame": frame, "anomaly_map": np.ones((32, 32), np.float16)}, np.eye(3))
    assert (tmp_path / "ov" / "000000_f0_overlay.png").is_file() and (tmp_path / "ov" / "000000_f0_mask.png").is_file()


def test_overlay_draws_a_weak_outline_in_its_own_colour():
    """A defect below the pixel threshold (an NG part's strongest region) is drawn orange, the others red."""
    from pipeline.sinks.overlays import DEFECT_BGR, WEAK_BGR, draw_overlay

    square = [[10.0, 10.0], [30.0, 10.0], [30.0, 30.0], [10.0, 30.0]]
    frame = np.zeros((60, 80, 3), np.uint8)
    record = {"verdict": "NG", "score": 0.5, "source_name": "f.png",
              "defects": [{"bbox": [10, 10, 20, 20], "score": 0.4, "polygon": square}]}
    assert tuple(draw_overlay(frame, record, None, None)[20, 10]) == DEFECT_BGR
    record["defects"][0]["below_pixel_threshold"] = True
    assert tuple(draw_overlay(frame, record, None, None)[20, 10]) == WEAK_BGR


def test_overlay_legend_states_the_score_against_the_threshold():
    """Under the frame, a legend strip: the verdict line in red for NG, and the outline colours."""
    from pipeline.sinks.overlays import DEFECT_BGR, LEGEND_BG, WEAK_BGR, draw_overlay

    frame = np.full((120, 640, 3), 90, np.uint8)
    record = {"verdict": "NG", "score": 0.74, "source_name": "f.png", "defects": []}
    out = draw_overlay(frame, record, None, None, image_threshold=0.4)
    assert out.shape[1:] == frame.shape[1:] and out.shape[0] > frame.shape[0]
    assert np.array_equal(out[:120], frame)  # nothing drawn on a part without defects
    strip = out[120:]
    colours = {tuple(int(c) for c in px) for px in strip.reshape(-1, 3)}
    assert {DEFECT_BGR, WEAK_BGR, LEGEND_BG} <= colours
    ok = draw_overlay(frame, {**record, "verdict": "OK"}, None, None, image_threshold=0.4)[120:145]
    assert not (ok == np.array(DEFECT_BGR, np.uint8)).all(axis=2).any()  # the verdict line is red only for NG


def test_results_set_aside_not_overwritten(tmp_path):
    import os

    from pipeline.sinks.results_log import set_aside, utc_iso

    results = tmp_path / "r.jsonl"
    assert set_aside(results) == []  # nothing there yet
    results.write_text("")
    assert set_aside(results) == []  # an empty file is not worth keeping
    results.write_text('{"frame_id": 0}\n')
    (tmp_path / "r.jsonl.config.yaml").write_text("name: x\n")
    os.utime(results, (1_700_000_000, 1_700_000_000))
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(1_700_000_000))
    assert set_aside(results) == [tmp_path / f"r.{stamp}.jsonl", tmp_path / f"r.{stamp}.jsonl.config.yaml"]
    results.write_text('{"frame_id": 0}\n')
    os.utime(results, (1_700_000_000, 1_700_000_000))
    assert set_aside(results) == [tmp_path / f"r.{stamp}-2.jsonl"]  # same second: numbered, nothing replaced
    assert not results.exists() and len(list(tmp_path.glob("r.*.jsonl"))) == 2
    assert utc_iso(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123Z"


def test_overlay_that_cannot_be_written_is_counted_not_raised(tmp_path, capsys):
    import numpy as np

    from pipeline.sinks.overlays import OverlaySink

    sink = OverlaySink(tmp_path / "ov")
    frame = {"frame": np.zeros((48, 64, 3), np.uint8)}
    sink.handle(_record(0, "NG"), frame, None)
    assert (tmp_path / "ov" / "000000_f0_overlay.png").is_file()
    (tmp_path / "ov" / "000000_f0_overlay.png").unlink()
    (tmp_path / "ov").rmdir()
    (tmp_path / "ov").write_text("not a folder any more")  # as a full or vanished disk does
    sink.handle(_record(1, "NG"), frame, None)
    assert sink.failures == 1 and "cannot write" in capsys.readouterr().err


def test_modbus_heartbeat_pauses_while_the_camera_is_lost(plc):
    """The line runs but sees nothing: a PLC that watches the heartbeat can stop the belt."""
    port, reader = plc
    sink = ModbusSink("127.0.0.1", port, 1, verdict_coil=0, result_register=28, heartbeat_register=32, heartbeat_s=0.0)

    def beat():
        sink.tick()
        return reader.read_holding_registers(32, count=1, device_id=1).registers[0]

    assert beat() == 1
    sink.handle({**_record(0, "ERROR"), "camera_lost": True}, {}, None)
    assert beat() == 1 and beat() == 1  # paused
    sink.handle(_record(1, "OK"), {}, None)  # a frame again
    assert beat() == 2
    sink.close()


def test_overlay_labels_of_neighbouring_defects_do_not_cover_each_other():
    from pipeline.sinks.overlays import LEGEND_BG, draw_overlay

    square = [[100.0, 100.0], [110.0, 100.0], [110.0, 110.0], [100.0, 110.0]]
    record = {"verdict": "NG", "score": 0.7, "source_name": "f.png",
              "defects": [{"bbox": [100, 100, 10, 10], "score": 0.9, "part_score": 0.7, "polygon": square},
                          {"bbox": [102, 101, 10, 10], "score": 0.8, "part_score": 0.6, "polygon": square}]}
    out = draw_overlay(np.zeros((200, 300, 3), np.uint8), record, None, None)[:200]
    rows = np.where((out[:, 100:140] == np.array(LEGEND_BG, np.uint8)).all(axis=2).any(axis=1))[0]
    assert rows.max() - rows.min() > 20  # two label boxes, one below the other, not one on top of the other
