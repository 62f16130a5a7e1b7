import pytest

from pipeline.config import ConfigError, load_config


def _write(tmp_path, text):
    p = tmp_path / "line.yaml"
    p.write_text(text)
    return p


def test_defaults_and_relative_paths(tmp_path):
    cfg = load_config(_write(tmp_path, "inference:\n  model: models/m\n"))
    assert cfg.inference.model == str((tmp_path / "models" / "m").resolve())
    assert cfg.preprocess.mode == "silhouette" and cfg.inference.max_batch == 32


def test_unknown_key_names_file_and_key(tmp_path):
    p = _write(tmp_path, "inference:\n  modle: x\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert str(p) in str(exc.value) and "inference.modle" in str(exc.value) and "model" in str(exc.value)


@pytest.mark.parametrize("text, message", [
    ("inference:\n  max_batch: many\n", r"`inference.max_batch` = 'many'"),
    ("inference:\n  backend: cuda\n", r"`inference.backend` = 'cuda'; expected one of"),
    ("preprocess:\n  tile_overlap: 1.5\n", "tile_overlap"),
    ("preprocess:\n  min_object_fraction: 2\n",
     r"`preprocess.min_object_fraction`.*a fraction in \[0, 1\] of min_part_area"),
    ("preprocess:\n  max_edge_contact: 0\n",
     r"`preprocess.max_edge_contact`.*a fraction in \(0, 1\] of the part's outline"),
    ("preprocess:\n  belt:\n    shading: [0.1, 0.2]\n", r"`preprocess.belt.shading`.*5 numbers"),
    ("preprocess:\n  mode: template\n", "template"),
    ("source:\n  stream:\n    transport: http\n", r"`source.stream.transport` = 'http'; expected one of \['tcp', 'udp'\]"),
    ("sinks:\n  modbus:\n    reject_verdicts: [NG, BAD]\n", r"`sinks.modbus.reject_verdicts` has \['BAD'\]"),
    ("source:\n  reconnect_s: -1\n", "source.reconnect_s"),
    ("preprocess:\n  belt:\n    level: -3\n", r"`preprocess.belt.level`.*re-run calibrate_line"),
])
def test_wrong_type_and_choice(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, text))


def test_not_yaml_and_missing(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "a: [1,\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_line_yaml_is_written_from_the_dataclasses_and_reads_back_the_same(tmp_path):
    """calibrate_line's YAML lists every key of the config, in the dataclasses' order, with what it
    means where FIELD_HELP says, and loads back to the same config."""
    import dataclasses
    from pathlib import Path

    from calibration.line import write_commented
    from pipeline.config import FIELD_HELP, load_config, to_dict

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo_line.yaml")
    out = write_commented(cfg, tmp_path / "line.yaml", ["a note"], 6, "frames")
    text = out.read_text()
    assert to_dict(load_config(out), False) == to_dict(cfg, False)
    assert text.startswith("# Line config written by calibrate_line from 6 OK frames in frames\n# a note\n")
    for key, note in FIELD_HELP.items():
        assert f"# {note}" in text, key

    def keys(obj):
        for f in dataclasses.fields(obj):
            yield f.name
            if dataclasses.is_dataclass(getattr(obj, f.name)):
                yield from keys(getattr(obj, f.name))

    written = [line.split(":")[0].strip() for line in text.splitlines() if not line.startswith("#")]
    assert written == list(keys(cfg))  # every key and section, in the dataclasses' order
