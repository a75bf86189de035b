"""Rule soups: averaging meta-parameters, and ``members: K`` runs whose rules are averaged."""

from __future__ import annotations

import pytest
import torch

from l2o.hub import from_pretrained
from l2o.meta import meta_train
from l2o.meta.checkpoint import load_checkpoint, save_checkpoint
from l2o.meta.metrics import read_metrics
from l2o.meta.soup import average_rules
from tests.meta.rules import MomentumRule
from tests.meta.runs import small_config, without_timing


def test_average_rules_is_the_mean_of_every_meta_parameter():
    rules = [MomentumRule(), MomentumRule()]
    with torch.no_grad():
        rules[1].log_lr.fill_(-3.0)
        rules[1].momentum_logit.fill_(2.0)
    soup = average_rules(rules)
    for name, value in soup.state_dict().items():
        expected = (rules[0].state_dict()[name] + rules[1].state_dict()[name]) / 2
        torch.testing.assert_close(value, expected, rtol=0, atol=0)
    assert soup is not rules[0] and not torch.equal(soup.state_dict()["log_lr"], rules[0].state_dict()["log_lr"])


def test_rules_of_different_architectures_are_not_averaged():
    from l2o import FFRule

    with pytest.raises(ValueError, match="different architectures"):
        average_rules([FFRule(hidden_size=8), FFRule(hidden_size=16)])
    with pytest.raises(ValueError, match="at least one rule"):
        average_rules([])


def test_members_are_the_seeded_runs_and_the_rule_is_their_average(tmp_path):
    soup = meta_train(small_config(steps=3, members=2, seed=5), tmp_path / "soup")
    for k in (0, 1):
        meta_train(small_config(steps=3, seed=5 + k), tmp_path / f"alone{k}")
        member = tmp_path / "soup" / f"member{k}"
        assert without_timing(read_metrics(member / "metrics.jsonl")) == \
            without_timing(read_metrics(tmp_path / f"alone{k}" / "metrics.jsonl"))
    members = [from_pretrained(tmp_path / "soup" / f"member{k}" / "rule") for k in (0, 1)]
    assert not torch.equal(members[0].log_lr, members[1].log_lr)
    saved = from_pretrained(tmp_path / "soup" / "rule")
    for name, value in average_rules(members).state_dict().items():
        assert torch.equal(saved.state_dict()[name], value) and torch.equal(soup.state_dict()[name], value)
    again = meta_train(small_config(steps=3, members=2, seed=5), tmp_path / "soup")  # finished members are kept
    assert torch.equal(again.log_lr, soup.log_lr)


def test_checkpoints_written_before_a_config_key_existed_resume_with_its_default(tmp_path):
    meta_train(small_config(steps=2), tmp_path / "run")
    path = tmp_path / "run" / "checkpoint.safetensors"
    state = load_checkpoint(path)
    for key in ("members", "device"):
        del state["config"][key]
    save_checkpoint(path, state)
    meta_train(small_config(steps=3), tmp_path / "run")
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]
