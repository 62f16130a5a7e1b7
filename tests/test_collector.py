from pipeline.collector import Collector


def _rec(fid, verdict="OK"):
    return {"frame_id": fid, "verdict": verdict}


def test_releases_in_frame_order():
    c = Collector(timeout_ns=10**12)
    for i in range(3):
        c.register(i, f"f{i}", 100 + i)
    c.add(2, _rec(2))
    c.add(1, _rec(1))
    assert c.release() == []
    c.add(0, _rec(0))
    assert [r["frame_id"] for r in c.release()] == [0, 1, 2]
    c.end(3)
    assert c.finished


def test_crash_fails_pending_once_and_ignores_late_results():
    c = Collector(timeout_ns=10**12)
    for i in range(3):
        c.register(i, f"f{i}", 100 + i)
    c.add(0, _rec(0))
    assert c.fail_pending("infer0 stage crashed", before_ns=101) == 1  # frame 1; frame 2 came later
    c.add(1, _rec(1, "NG"))  # late duplicate from a queue: ignored
    out = c.release()
    assert [(r["frame_id"], r["verdict"]) for r in out] == [(0, "OK"), (1, "ERROR")]
    assert c.ignored_late == 1


def test_timeout_expires_lost_frames():
    c = Collector(timeout_ns=1000)
    c.register(0, "f0", 0)
    assert c.expire(500) == 0
    assert c.expire(2000) == 1
    assert c.release()[0]["reason"].startswith("no result within")


def test_source_gone_ends_after_the_frames_it_registered():
    c = Collector(timeout_ns=10**12)
    for i in range(3):
        c.register(i, f"f{i}", 100 + i)
    c.add(0, _rec(0))
    assert [r["frame_id"] for r in c.release()] == [0]
    c.source_gone()  # killed without announcing its count: frames 1 and 2 are still in flight
    assert not c.finished
    c.add(1, _rec(1))
    c.add(2, _rec(2))
    assert [r["frame_id"] for r in c.release()] == [1, 2] and c.finished
    announced = Collector(timeout_ns=10**12)
    announced.register(0, "f0", 100)
    announced.end(5)
    announced.source_gone()  # a count the source announced stands
    assert announced.expected == 5
    empty = Collector(timeout_ns=10**12)
    empty.source_gone()
    assert empty.finished


def test_resumed_collector_closes_frames_only_the_crashed_stage_knew():
    c = Collector(timeout_ns=10**12, gap_timeout_ns=1000)
    c.resume(5)  # frames 0-4 were released by the stage before
    c.register(3, "f3", 100)  # a late repeat from before: ignored
    c.add(4, _rec(4))
    assert c.release() == [] and c.registered == {} and c.done == {}
    c.register(7, "f7", 107)  # 5 and 6 were registered with the crashed stage only
    c.add(7, _rec(7))
    assert c.expire(now_ns=10_000) == 0  # a gap is seen...
    assert c.expire(now_ns=10_500) == 0  # ...and given its time, in case a registration is only late
    assert c.expire(now_ns=11_001) == 2
    out = c.release()
    assert [r["frame_id"] for r in out] == [5, 6, 7]
    assert all(r["verdict"] == "ERROR" and "stitch stage crashed" in r["reason"] for r in out[:2])
    c.register(8, "f8", 108)
    c.add(8, _rec(8))
    assert [r["frame_id"] for r in c.release()] == [8] and c.expire(now_ns=10**9) == 0  # no gap, nothing closed


def test_frames_lost_with_a_crashed_stitch_stage_keep_their_names(tmp_path):
    """The crashed stage's journal names the frames it alone had registered; a frame it never wrote
    down (or a torn last line) still gets its record, without a name."""
    from pipeline.stages.stitch import FrameJournal

    journal = FrameJournal(tmp_path / "stitch.frames", resume=False, lines=3)
    for fid in range(7):  # rotated twice: frames 0-2 dropped, 3-5 in stitch.frames.1, 6 in the journal
        journal.add(fid, 100 + fid, f"cam0#{fid:06d}")
    # read while still open, as a killed stage leaves it, after half a line, as a crash mid-write would
    with (tmp_path / "stitch.frames").open("a") as torn:
        torn.write('[7, 107, "cam')
    names = FrameJournal.read(tmp_path / "stitch.frames")
    journal.close()
    assert sorted(names) == [3, 4, 5, 6] and names[6] == {"source_name": "cam0#000006", "capture_ns": 106}
    c = Collector(timeout_ns=10**12, gap_timeout_ns=1000)
    c.resume(4, names)  # frame 3 was released before the crash
    c.register(8, "cam0#000008", 108)
    c.add(8, _rec(8))
    c.expire(now_ns=0)
    assert c.expire(now_ns=2000) == 4  # 4, 5, 6, 7
    out = c.release()
    assert [(r["frame_id"], r["source_name"]) for r in out[:4]] == [
        (4, "cam0#000004"), (5, "cam0#000005"), (6, "cam0#000006"), (7, None)]
    assert out[0]["capture_ns"] == 104 and all("stitch stage crashed" in r["reason"] for r in out[:4])
    assert c.recalled == {}
    FrameJournal(tmp_path / "stitch.frames", resume=False).close()  # the run folder used for a new run
    assert FrameJournal.read(tmp_path / "stitch.frames") == {}
