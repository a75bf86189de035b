"""Checkpoint selection on validation tasks (l2o.meta.validation) and its place in a run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from l2o.hub import from_pretrained
from l2o.meta import ConfigError, MetaTrainer, meta_train
from l2o.meta.config import config_from_dict
from l2o.meta.metrics import read_metrics
from l2o.meta.validation import RuleSelector, geomean_ratio, validation_tasks
from tests.meta.rules import MomentumRule
from tests.meta.runs import small_config

MLP = [{"family": "mlp", "dataset": "digits", "widths": [8], "depths": [1]}]


class Killed(Exception):
    """Stands in for SIGKILL."""


def test_validation_tasks_are_the_families_own_tasks_without_reparameterization():
    config = config_from_dict(small_config(tasks=MLP))
    tasks = validation_tasks(config, 3)
    assert [t.name for t in tasks] == [t.name for t in validation_tasks(config, 3)]  # fixed draws
    assert all(t.loss_id is not None and not t.loss_id.endswith("+reparam") for t in tasks)


def test_geomean_ratio():
    assert geomean_ratio([2.0, 0.5], [1.0, 1.0]) == pytest.approx(1.0)
    assert geomean_ratio([4.0, 1.0], [1.0, 1.0]) == pytest.approx(2.0)
    assert geomean_ratio([math.inf, 1.0], [1.0, 1.0]) == math.inf


def test_selector_keeps_the_initial_rule_until_a_rule_scores_better_and_resumes(tmp_path):
    tasks = validation_tasks(config_from_dict(small_config(tasks=MLP)), 2)
    slow, fast = MomentumRule(lr=1e-4), MomentumRule(lr=0.05)
    selector = RuleSelector(tmp_path, tasks, steps=20)
    selector.start(slow, 0)
    assert selector.score(slow, 5) == 1.0  # runs are deterministic: the initial rule scores exactly 1
    assert (tmp_path / "rule_best").is_dir()
    assert selector.score(fast, 10) < 1
    assert selector.score(slow, 15) == 1.0
    record = json.loads((tmp_path / "validation.json").read_text())
    assert record["best_step"] == 10 and [h[0] for h in record["history"]] == [0, 5, 10, 15]
    best = from_pretrained(tmp_path / "rule_best")
    for name, value in fast.state_dict().items():
        assert torch.equal(best.state_dict()[name], value), name

    resumed = RuleSelector(tmp_path, tasks, steps=20)  # a run resumed from its checkpoint at meta-step 10
    resumed.start(slow, 10)
    assert resumed.record["best_step"] == 10 and [h[0] for h in resumed.record["history"]] == [0, 5, 10]


def test_a_run_with_validation_scores_every_few_steps_and_resumes_exactly(tmp_path, monkeypatch):
    config = small_config(tasks=MLP, validation={"every": 2, "n_tasks": 2, "steps": 10})
    meta_train(config, tmp_path / "reference")
    record = json.loads((tmp_path / "reference" / "validation.json").read_text())
    assert [h[0] for h in record["history"]] == [0, 2, 4, 6, 8]
    scored = [r["step"] for r in read_metrics(tmp_path / "reference" / "metrics.jsonl") if "validation" in r]
    assert scored == [2, 4, 6, 8]
    assert from_pretrained(tmp_path / "reference" / "rule_best") is not None

    original_step = MetaTrainer.step

    def dies_after_five(self, *args, **kwargs):
        if self.meta_step == 5:  # checkpoint at 3, validation scored at 2 and 4
            raise Killed
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(MetaTrainer, "step", dies_after_five)
    with pytest.raises(Killed):
        meta_train(config, tmp_path / "killed")
    monkeypatch.setattr(MetaTrainer, "step", original_step)
    meta_train(config, tmp_path / "killed")
    assert json.loads((tmp_path / "killed" / "validation.json").read_text()) == record


def test_bad_validation_settings_are_named():
    with pytest.raises(ConfigError, match="validation.every"):
        config_from_dict(small_config(validation={"every": 0}))
    with pytest.raises(ConfigError, match="validation.steps"):
        config_from_dict(small_config(validation={"steps": 0}))
