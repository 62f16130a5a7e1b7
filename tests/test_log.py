"""The stages log through one logger each: its name leads the line on stderr, --log-level filters."""
import logging

from pipeline.log import get, setup
from pipeline.stages._common import stage_parser


def test_stage_messages_carry_their_name_and_follow_the_level(capsys):
    try:
        setup("warning")
        get("stitch").info("resumed from frame 3")
        get("http sink").warning("mes unreachable")
        err = capsys.readouterr().err
        assert "http sink: mes unreachable" in err and "resumed" not in err
        setup("info")
        get("stitch").info("resumed from frame 3")
        assert "stitch: resumed from frame 3" in capsys.readouterr().err
    finally:
        setup("info")


def test_every_stage_takes_a_log_level(monkeypatch):
    monkeypatch.setenv("TILEGUARD_LOG_LEVEL", "error")
    args = stage_parser("stitch").parse_args(["--config", "c.yaml", "--run-dir", "r"])
    assert args.log_level == "error"  # what run_pipeline --log-level hands down
    args = stage_parser("stitch").parse_args(["--config", "c.yaml", "--run-dir", "r", "--log-level", "debug"])
    assert args.log_level == "debug" and logging.getLevelName("DEBUG") == logging.DEBUG
