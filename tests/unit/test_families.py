"""The family registry (gigatron/config/families.py): built-in names, in-process registration,
entry points, and errors that name what is valid."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gigatron.config import ConfigError, config_from_dict
from gigatron.config.families import BUILTIN_FAMILIES, Family, family_names, get_family, register_family
from gigatron.models.registry import get_model_spec


def test_every_built_in_family_resolves_to_its_own_config_and_spec():
    for name in BUILTIN_FAMILIES:
        spec = get_model_spec(name)
        assert spec.family == name and spec.config_cls.family == name
        assert type(config_from_dict({"model": {"family": name}}).model) is spec.config_cls


def test_an_unknown_family_names_the_nearest_and_a_non_name_is_refused():
    with pytest.raises(ConfigError, match=r"unknown family 'hybird'.*did you mean 'hybrid'"):
        config_from_dict({"model": {"family": "hybird"}})
    with pytest.raises(ConfigError, match=r"model.family must be a family name.*registered: .*gpt"):
        config_from_dict({"model": {"family": ["gpt"]}})


def test_register_family_adds_a_family_in_process_but_never_replaces_a_built_in_one(monkeypatch):
    from gigatron.config import families

    monkeypatch.setattr(families, "_registered", {})
    register_family("gpt_alias", Family("gigatron.models.gpt.config:GPTConfig", "gigatron.models.gpt.model:SPEC"))
    assert "gpt_alias" in family_names() and get_family("gpt_alias").spec.endswith(":SPEC")
    with pytest.raises(ValueError, match="built in"):
        register_family("gpt", Family("x:Y", "x:Z"))


def test_a_broken_entry_names_its_module_path(monkeypatch):
    from gigatron.config import families

    monkeypatch.setattr(families, "_registered", {})
    register_family("broken", Family("no_such_module.config:Cfg", "no_such_module.model:SPEC"))
    with pytest.raises(ConfigError, match=r"'no_such_module.config:Cfg' cannot be loaded"):
        config_from_dict({"model": {"family": "broken"}})


def test_an_entry_point_that_is_not_a_family_is_refused(tmp_path):
    dist = tmp_path / "bad-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bad\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[gigatron.families]\nbad = bad_family:FAMILY\n")
    (tmp_path / "bad_family.py").write_text("FAMILY = 'not a Family'\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from gigatron.config import ConfigError, config_from_dict\n"
            "try:\n    config_from_dict({'model': {'family': 'bad'}})\n"
            "except ConfigError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert "must name a gigatron.config.families.Family, not str" in out.stdout
