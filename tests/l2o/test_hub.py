"""Saving and loading rules (l2o.hub): safetensors + JSON, registry, clear errors, no pickles."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from torch import nn

from l2o import FFRule, NeuralGraphOpt, UpdateRule, from_pretrained, register_rule, save_pretrained
from l2o.hub import RULES, load_rule


def _trained_rule() -> FFRule:
    rule = FFRule(hidden_size=8, learn_decays=True, momentum_decays=(0.5, 0.9, 0.99))
    torch.manual_seed(0)
    for p in rule.parameters():
        nn.init.normal_(p)
    return rule


def test_save_load_round_trip(tmp_path, monkeypatch):
    rule = _trained_rule()
    save_pretrained(rule, tmp_path / "rule")
    assert sorted(f.name for f in (tmp_path / "rule").iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "rule" / "config.json").read_text())
    assert config == {"rule_class": "FFRule", "config": rule.config(), "format": 1}

    def no_pickles(*args, **kwargs):
        raise AssertionError("loading must not unpickle")

    monkeypatch.setattr(pickle, "load", no_pickles)
    monkeypatch.setattr(pickle, "loads", no_pickles)
    monkeypatch.setattr(torch, "load", no_pickles)
    loaded = from_pretrained(tmp_path / "rule")
    assert type(loaded) is FFRule and loaded.config() == rule.config()
    assert loaded.state_dict().keys() == rule.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), rule.state_dict().values()))
    opt = NeuralGraphOpt(nn.Linear(2, 2).parameters(), rule=str(tmp_path / "rule"))
    assert torch.equal(opt.rule.decay_logits, rule.decay_logits)


def test_registry_and_rule_names():
    assert RULES["ff"] is FFRule and RULES["FFRule"] is FFRule
    assert isinstance(load_rule("ff"), FFRule)
    rule = FFRule()
    assert load_rule(rule) is rule
    with pytest.raises(ValueError, match="already registered"):
        register_rule("ff")(type("FFRule", (UpdateRule,), {}))

    class Unregistered(FFRule):
        pass

    with pytest.raises(ValueError, match="not registered"):
        save_pretrained(Unregistered(), "unused")


def _saved(tmp_path) -> tuple:
    folder = save_pretrained(_trained_rule(), tmp_path / "rule")
    return folder, folder / "config.json", folder / "model.safetensors"


def test_corrupt_weights_name_the_file(tmp_path):
    folder, _, weights = _saved(tmp_path)
    weights.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match=f"{weights}.*corrupt"):
        from_pretrained(folder)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=str(weights)):
        from_pretrained(folder)


def test_mismatched_weights_name_the_file(tmp_path):
    folder, config_path, weights = _saved(tmp_path)
    config = json.loads(config_path.read_text())
    config["config"]["hidden_size"] = 16
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"{weights}.*does not match"):
        from_pretrained(folder)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"rule_class": "FFRule"}', "'config' object"),
        ('{"rule_class": "NoSuchRule", "config": {}, "format": 1}', "NoSuchRule"),
        ('{"rule_class": "FFRule", "config": {}, "format": 99}', "format 99"),
        ('{"rule_class": "FFRule", "config": {"hidden": 3}, "format": 1}', "cannot build FFRule"),
    ],
)
def test_bad_config_names_the_file(tmp_path, content, message):
    folder, config_path, _ = _saved(tmp_path)
    config_path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        from_pretrained(folder)
    assert str(config_path) in str(err.value)


def test_missing_rule_offline(tmp_path):
    with pytest.raises(FileNotFoundError, match="rule folder not found"):
        from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_pretrained(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nor a loadable Hugging Face Hub repository"):
        from_pretrained("l2o-test/no-such-rule", local_files_only=True)
