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
    ("preprocess:\n  mode: template\n", "template"),
    ("source:\n  stream:\n    transport: http\n", r"`source.stream.transport` = 'http'; expected one of \['tcp', 'udp'\]"),
    ("sinks:\n  modbus:\n    reject_verdicts: [NG, BAD]\n", r"`sinks.modbus.reject_verdicts` has \['BAD'\]"),
    ("source:\n  reconnect_s: -1\n", "source.reconnect_s"),
])
def test_wrong_type_and_choice(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, text))


def test_not_yaml_and_missing(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "a: [1,\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
