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


def test_wrong_type_and_choice(tmp_path):
    with pytest.raises(ConfigError, match=r"`inference.max_batch` = 'many'"):
        load_config(_write(tmp_path, "inference:\n  max_batch: many\n"))
    with pytest.raises(ConfigError, match=r"`inference.backend` = 'cuda'; expected one of"):
        load_config(_write(tmp_path, "inference:\n  backend: cuda\n"))
    with pytest.raises(ConfigError, match="tile_overlap"):
        load_config(_write(tmp_path, "preprocess:\n  tile_overlap: 1.5\n"))
    with pytest.raises(ConfigError, match="template"):
        load_config(_write(tmp_path, "preprocess:\n  mode: template\n"))
    with pytest.raises(ConfigError, match=r"`source.stream.transport` = 'http'; expected one of \['tcp', 'udp'\]"):
        load_config(_write(tmp_path, "source:\n  stream:\n    transport: http\n"))
    with pytest.raises(ConfigError, match=r"`sinks.modbus.reject_verdicts` has \['BAD'\]"):
        load_config(_write(tmp_path, "sinks:\n  modbus:\n    reject_verdicts: [NG, BAD]\n"))
    with pytest.raises(ConfigError, match="source.reconnect_s"):
        load_config(_write(tmp_path, "source:\n  reconnect_s: -1\n"))


def test_not_yaml_and_missing(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "a: [1,\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
