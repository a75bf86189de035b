"""Config loading: YAML round trip and clear errors for unknown keys, names and options."""

from __future__ import annotations

import argparse

import pytest
import yaml

from l2o.meta import ConfigError, MetaTrainConfig, config_from_dict, load_config
from l2o.meta.cli import add_parser

EXAMPLE = """
rule: {name: ff, hidden_size: 16}  # or just `rule: ff`
tasks:
  - {family: mlp, dataset: digits, widths: [16, 32], weight: 2}
  - cnn
  - {family: transformer, d_models: [16]}
reparam_scale: [0.1, 10]
estimator: {name: es, sigma: 0.02}
truncation: {schedule: log_uniform, min_length: 50, max_length: 500, unroll_length: 25, initial_offset: 50}
inner: {meta_loss: heldout_last}
outer: {lr: 1.0e-3, clip_norm: null, lr_schedule: cosine}
n_tasks: 4
steps: 20
"""


def test_yaml_config_loads_and_round_trips(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(EXAMPLE)
    config = load_config(path)
    assert config.rule.name == "ff" and config.rule.options == {"hidden_size": 16}
    assert [t.family for t in config.tasks] == ["mlp", "cnn", "transformer"]
    assert config.tasks[0].weight == 2.0 and config.tasks[0].options == {"dataset": "digits", "widths": [16, 32]}
    assert config.reparam_scale == (0.1, 10.0)
    assert config.estimator.sigma == 0.02 and config.truncation.schedule == "log_uniform"
    assert config.outer.clip_norm is None and config.outer.lr == 1e-3
    assert config.checkpoint_every == MetaTrainConfig().checkpoint_every  # defaults fill the rest
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict())))
    assert again == config


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"stepz": 3}, r"unknown key\(s\) \['stepz'\] in config; valid keys: .*'steps'"),
        ({"truncation": {"unroll": 3}}, r"unknown key\(s\) \['unroll'\] in truncation; valid keys: .*'unroll_length'"),
        (
            {"estimator": {"name": "reinforce"}},
            r"unknown estimator.name 'reinforce'; choose one of \['es', 'pes', 'tbptt'\]",
        ),
        ({"truncation": {"schedule": "linear"}}, r"choose one of \['constant', 'log_uniform'\]"),
        ({"inner": {"meta_loss": "final"}}, r"choose one of \['heldout_last', 'log_train_mean', 'train_mean'\]"),
        ({"tasks": [{"family": "vit"}]}, r"unknown tasks\[0\].family 'vit'; choose one of \['autoencoder', 'cnn'"),
        (
            {"tasks": [{"family": "mlp", "width": 3}]},
            r"unknown option\(s\) \['width'\] for tasks\[0\] \(mlp\); valid options: .*'widths'",
        ),
        (
            {"tasks": [{"family": "cnn", "depths": [1], "dataset": "digits", "batch": 3}]},
            r"valid options: .*'batch_size'",
        ),
        ({"rule": {"name": "lstm"}}, r"unknown rule 'lstm'; choose one of .*'ff'"),
        ({"rule": {"name": "ff", "hidden": 3}}, r"unknown option\(s\) \['hidden'\] for rule \(ff\)"),
        ({"rule": {"name": "no.such.module:Rule"}}, r"cannot import rule"),
        ({"steps": "many"}, r"steps must be int, got 'many'"),
        ({"outer": {"betas": [0.9]}}, r"outer.betas must be a list of 2 numbers"),
        ({"n_tasks": 0}, r"n_tasks must be >= 1"),
        ({"tasks": []}, r"at least one task family"),
        ({"tasks": [{"family": "mlp", "weight": "heavy"}]}, r"tasks\[0\].weight must be float"),
        ({"rule": ["ff"]}, r"rule must be a rule name or a mapping"),
        ({"device": "tpu"}, r"unknown device 'tpu'; choose one of \['auto', 'cpu', 'cuda'\]"),
        ({"estimator": {"name": "tbptt"}, "inner": {"vectorize": True, "compile": True}},
         r"inner.compile applies to .* not tbptt"),
        ({"estimator": {"name": "pes"}, "inner": {"compile": True}}, r"inner.compile .* set inner.vectorize too"),
        ({"rule": {"name": "ff", "init": 3}}, r"rule.init must be a rule name or folder"),
        ({"rule": {"name": "ff", "train": "gnn"}}, r"rule.train must be a non-empty list"),
    ],
)
def test_invalid_configs_name_what_is_valid(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_cli_parser_reads_the_config_and_run_folder(tmp_path):
    parser = argparse.ArgumentParser(prog="l2o")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["meta-train", "--config", "a.yaml", "--run-dir", str(tmp_path), "--no-resume"])
    assert args.config.name == "a.yaml" and args.run_dir == tmp_path and args.no_resume
    assert callable(args.handler)


def test_cli_handler_trains_and_saves_the_rule(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "rule: {name: 'tests.meta.rules:LogLRRule'}\n"
        "tasks: [{family: quadratic, dim: 3}]\n"
        "truncation: {length: 4, unroll_length: 2}\n"
        "n_tasks: 2\nsteps: 2\nprogress: false\n"
    )
    parser = argparse.ArgumentParser(prog="l2o")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["meta-train", "--config", str(config), "--run-dir", str(tmp_path / "run")])
    assert args.handler(args) == 0
    assert (tmp_path / "run" / "rule" / "model.safetensors").exists()
    assert "rule written to" in capsys.readouterr().out

    # --rule trains another rule with the same recipe, and the run folder says which
    from l2o.hub import load_rule
    from l2o.meta.config import load_config as load

    args = parser.parse_args(["meta-train", "--config", str(config), "--rule", "tensor-stepsize",
                              "--run-dir", str(tmp_path / "twin")])
    assert args.handler(args) == 0
    assert type(load_rule(tmp_path / "twin" / "rule")).__name__ == "StepSizeTensorRule"
    assert load(tmp_path / "twin" / "config.yaml").rule.name == "tensor-stepsize"

    # --rule-option sets one option of that rule (YAML value); a malformed one is refused by name
    args = parser.parse_args(["meta-train", "--config", str(config), "--rule", "schedule-stepsize",
                              "--rule-option", "orthogonal=true", "--rule-option", "hidden=4",
                              "--run-dir", str(tmp_path / "ortho")])
    assert args.handler(args) == 0
    assert load_rule(tmp_path / "ortho" / "rule").config()["orthogonal"] is True
    assert load(tmp_path / "ortho" / "config.yaml").rule.options == {"orthogonal": True, "hidden": 4}
    for bad, message in [("orthogonal", "KEY=VALUE"), ("no_such_option=1", "no_such_option")]:
        args = parser.parse_args(["meta-train", "--config", str(config), "--rule", "schedule-stepsize",
                                  "--rule-option", bad, "--run-dir", str(tmp_path / "bad")])
        with pytest.raises((SystemExit, ConfigError), match=message):
            args.handler(args)


@pytest.mark.parametrize("name", ["greedy_fashion_cnn.yaml", "pes_mixture.yaml"])
def test_shipped_example_configs_are_valid(name):
    from pathlib import Path

    import l2o.meta

    config = load_config(Path(l2o.meta.__file__).parent / "configs" / name)
    assert config.rule.name == "ff" and config.steps >= 1000


def test_rule_init_and_train_start_from_a_rule_and_freeze_the_rest(tmp_path):
    """``rule.init`` loads a saved rule's meta-parameters (and options); ``rule.train`` leaves only
    the named parts trainable; a meta-training run then changes those and nothing else. Bad names
    are refused by name."""
    import torch

    from l2o import StepSizeTensorRule
    from l2o.hub import load_rule, save_pretrained
    from l2o.meta.build import build_rule
    from l2o.meta.config import RuleConfig

    torch.manual_seed(0)
    source = StepSizeTensorRule(hidden=4)
    with torch.no_grad():
        for p in source.parameters():
            p.normal_(0, 0.1)
    folder = save_pretrained(source, tmp_path / "source")
    rule = build_rule(RuleConfig(name="tensor-stepsize", init=str(folder), train=["scale_out"]))
    assert rule.config() == source.config()
    assert all(torch.equal(a, b) for a, b in zip(rule.state_dict().values(), source.state_dict().values()))
    assert {n for n, p in rule.named_parameters() if p.requires_grad} == {"scale_out.weight", "scale_out.bias"}
    with pytest.raises(ConfigError, match=r"rule.init .* is a StepSizeTensorRule, not a StepSizeGraphRule"):
        build_rule(RuleConfig(name="neural-graph-stepsize", init=str(folder)))
    with pytest.raises(ConfigError, match=r"\['gnn'\] name no meta-parameter .* its parts are \['mlp', 'scale_out'\]"):
        build_rule(RuleConfig(name="tensor-stepsize", init=str(folder), train=["gnn"]))

    config = tmp_path / "finetune.yaml"
    config.write_text(
        f"rule: {{name: tensor-stepsize, init: '{folder}', train: [scale_out]}}\n"
        "tasks: [{family: quadratic, dim: 3}]\n"
        "truncation: {length: 4, unroll_length: 2}\n"
        "n_tasks: 2\nsteps: 2\nprogress: false\n"
    )
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(load_config(config).to_dict()))) == load_config(config)
    parser = argparse.ArgumentParser(prog="l2o")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["meta-train", "--config", str(config), "--run-dir", str(tmp_path / "run")])
    assert args.handler(args) == 0
    trained = load_rule(tmp_path / "run" / "rule").state_dict()
    for name, value in source.state_dict().items():
        assert torch.equal(trained[name], value) != name.startswith("scale_out"), name

    # --rule-init starts another rule of the recipe from a saved one
    args = parser.parse_args(["meta-train", "--config", str(config), "--rule", "tensor-stepsize", "--rule-init",
                              str(folder), "--run-dir", str(tmp_path / "all")])
    assert args.handler(args) == 0
    assert load_config(tmp_path / "all" / "config.yaml").rule == RuleConfig(name="tensor-stepsize", init=str(folder))


def test_broad_recipe_refines_the_shipped_rules_per_neuron_step_sizes():
    """``stepsize_broad.yaml`` starts from neural-graph-v7 and trains everything but its schedule."""
    from pathlib import Path

    import torch

    import l2o.meta
    from l2o.hub import load_rule
    from l2o.meta.build import build_rule

    config = load_config(Path(l2o.meta.__file__).parent / "configs" / "stepsize_broad.yaml")
    rule, shipped = build_rule(config.rule), load_rule("neural-graph-v7")
    assert all(torch.equal(a, b) for a, b in zip(rule.state_dict().values(), shipped.state_dict().values()))
    frozen = {n for n, p in rule.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in rule.named_parameters() if n.startswith("schedule.")} and frozen
    assert {t.family for t in config.tasks} >= {"mlp", "cnn", "resnet", "transformer"}
