"""The configuration file the Debian package installs (packaging/flowpin.toml): left as
shipped it is refused by name (file, line, key), filled in it is a valid configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.config import ConfigError, parse

PACKAGED = Path(__file__).parents[2] / "packaging" / "flowpin.toml"


def test_the_shipped_file_names_its_placeholder() -> None:
    text = PACKAGED.read_text()
    line = next(n for n, raw in enumerate(text.splitlines(), 1)
                if raw.startswith("lan-interfaces"))
    with pytest.raises(ConfigError) as exc:
        parse(text, "/etc/flowpin/flowpin.toml")
    assert exc.value.line == line and exc.value.key == "datapath.lan-interfaces"
    assert str(exc.value).startswith(f"/etc/flowpin/flowpin.toml:{line}: "
                                     "datapath.lan-interfaces: \"CHANGE-ME-lan-interface\" is "
                                     "a placeholder"), str(exc.value)


def test_filled_in_it_is_valid() -> None:
    text = PACKAGED.read_text().replace('"CHANGE-ME-lan-interface"', '"eth1"')
    cfg = parse(text, "flowpin.toml")
    assert cfg.lan_interfaces == ("eth1",) and cfg.instance == "default"


@pytest.mark.parametrize("value", ['"CHANGE-ME"', '["eth1", "CHANGE-ME-too"]'])
def test_a_placeholder_anywhere_is_refused(value: str) -> None:
    text = '[vici]\nsocket = "/run/charon.vici"\n[datapath]\nlan-interfaces = ["eth1"]\n'
    text = text.replace('"/run/charon.vici"', value) if "[" not in value else \
        text.replace('["eth1"]', value)
    with pytest.raises(ConfigError, match="placeholder"):
        parse(text, "f.toml")
