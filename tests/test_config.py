"""Configuration: YAML file, environment and flag precedence, errors that name key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetwatch.config import ConfigError, load_config, parse_duration, parse_simulate


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    p = tmp_path / "fw.yml"
    p.write_text("listen: 127.0.0.1:9500\nseed: 3\ncollector:\n  gpu:\n    interval: 2s\n    timeout: 500ms\n")
    cfg = load_config(p, environ={})
    assert cfg.listen == "127.0.0.1:9500" and cfg.seed == 3
    assert cfg.source("gpu").interval == 2.0 and cfg.source("gpu").timeout == 0.5
    cfg = load_config(p, environ={"FLEETWATCH_SEED": "7", "FLEETWATCH_COLLECTOR__GPU__INTERVAL": "1m"})
    assert cfg.seed == 7 and cfg.source("gpu").interval == 60.0
    cfg = load_config(p, {"seed": 9}, environ={"FLEETWATCH_SEED": "7"})
    assert cfg.seed == 9


@pytest.mark.parametrize(("yaml_text", "needles"), [
    ("listen: nowhere\n", ["listen", "'nowhere'", "HOST:PORT"]),
    ("simulate: 4by8\n", ["simulate", "'4by8'", "NODESxGPUS"]),
    ("collector:\n  gpu:\n    interval: fast\n", ["collector.gpu.interval", "'fast'"]),
    ("names: prometheus\n", ["names", "'prometheus'"]),
    ("lisen: :9400\n", ["unknown key 'lisen'"]),
    ("record:\n  rotate_size: huge\n", ["record.rotate_size", "'huge'"]),
    ("- just\n- a list\n", ["top level must be a mapping"]),
    ("listen: [\n", ["not valid YAML"]),
], ids=["listen", "simulate", "duration", "names", "typo", "size", "list", "yaml"])
def test_errors_name_key_and_value(tmp_path: Path, yaml_text: str, needles: list[str]) -> None:
    p = tmp_path / "bad.yml"
    p.write_text(yaml_text)
    with pytest.raises(ConfigError) as exc:
        load_config(p, environ={})
    for n in needles:
        assert n in str(exc.value)
    assert str(p) in str(exc.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yml", environ={})


def test_parsers() -> None:
    assert parse_duration("250ms") == 0.25 and parse_duration("1h") == 3600 and parse_duration(5) == 5.0
    assert parse_simulate("4x8") == (4, 8)
    with pytest.raises(ValueError):
        parse_simulate("0x8")
