"""Task families: every member builds, is deterministic, and trains with plain SGD."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from l2o.meta.tasks import (
    FAMILIES,
    MixtureFamily,
    QuadraticFamily,
    ReparamFamily,
    load_image_data,
)
from l2o.meta.truncated_step import TruncatedStep
from l2o.meta.truncation import ConstantSchedule
from tests.meta.rules import LogLRRule

CASES = [
    ("quadratic", {}, 0.05),
    ("mlp", {"norms": ["none"]}, 0.5),
    ("mlp", {"dataset": "mnist5k", "image_size": 14, "norms": ["layer", "batch"]}, 0.5),
    ("cnn", {"norms": ["batch"], "depths": [2]}, 0.5),
    ("cnn", {"norms": ["group"], "channels": [16], "depths": [2]}, 0.5),
    ("transformer", {"d_models": [16], "depths": [1]}, 0.1),
    ("inr", {}, 0.05),
    ("autoencoder", {"widths": [32], "bottlenecks": [8], "batch_size": 32}, 1.0),
    ("regression", {"widths": [16], "train_size": 256, "test_size": 64}, 0.1),
    ("resnet", {"channels": [8], "blocks": [1], "dataset": "digits", "batch_size": 16}, 0.1),
]


@pytest.mark.parametrize(("family", "options", "lr"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_family_member_trains_with_sgd(family, options, lr):
    step = TruncatedStep(LogLRRule(lr), FAMILIES[family](**options), ConstantSchedule(30), unroll_length=30)
    _, out = step.unroll(step.init_state(slot=0))
    losses = out.train_losses
    assert torch.isfinite(losses).all()
    assert losses[-5:].mean() < losses[:5].mean(), out.task


def test_tasks_and_batches_are_deterministic_and_varied():
    family = FAMILIES["mlp"](norms=["none", "layer"])
    a, b = family.sample(3), family.sample(3)
    assert a.name == b.name
    for (name, x), (_, y) in zip(a.init_params().items(), b.init_params().items()):
        assert torch.equal(x, y), name
    assert all(torch.equal(x, y) for x, y in zip(a.batch(7), b.batch(7)))
    assert not torch.equal(a.batch(7)[0], a.batch(8)[0])
    assert not torch.equal(a.batch(7, "train")[0], a.batch(7, "test")[0])
    names = {family.sample(seed).name for seed in range(12)}
    assert len(names) > 3


def test_sampling_does_not_touch_the_global_rng():
    state = torch.get_rng_state()
    FAMILIES["cnn"]().sample(0).init_params()
    assert torch.equal(state, torch.get_rng_state())


def test_reparameterization_keeps_the_function_and_rescales_gradients():
    base = FAMILIES["mlp"]()
    task = ReparamFamily(base, scale_range=(0.1, 10.0)).sample(5)
    plain = base.sample(5)
    scales = task.scales
    assert len(set(scales.values())) == len(scales) and all(0.1 <= s <= 10 for s in scales.values())
    batch = plain.batch(0)
    *data, scale_batch = task.batch(0)  # the wrapped task's batch, then the scales
    assert all(torch.equal(a, b) for a, b in zip(data, batch, strict=True))
    assert scale_batch.tolist() == pytest.approx(list(scales.values()))
    params = {k: v.requires_grad_() for k, v in task.init_params().items()}
    plain_params = {k: v.requires_grad_() for k, v in plain.init_params().items()}
    loss, plain_loss = task.loss(params, task.batch(0)), plain.loss(plain_params, batch)
    assert torch.allclose(loss, plain_loss)
    grads = torch.autograd.grad(loss, list(params.values()))
    plain_grads = torch.autograd.grad(plain_loss, list(plain_params.values()))
    for name, g, h in zip(params, grads, plain_grads):
        assert torch.allclose(g, scales[name] * h, rtol=1e-4, atol=1e-7), name


def test_mixture_draws_from_every_family_by_weight():
    mixture = MixtureFamily([QuadraticFamily(dim=2), FAMILIES["inr"]()], weights=[1.0, 1.0])
    names = [mixture.sample(seed).name.split("[")[0] for seed in range(40)]
    assert set(names) == {"quadratic", "inr"}
    with pytest.raises(ValueError, match="positive weight"):
        MixtureFamily([QuadraticFamily()], weights=[0.0])


def test_family_options_are_checked():
    with pytest.raises(ValueError, match="unknown norms"):
        FAMILIES["cnn"](norms=["layer"])
    with pytest.raises(ValueError, match="unknown activations"):
        FAMILIES["mlp"](activations=["swish"])


def _save_tiny_image_dataset(path, with_test: bool, rgb: bool) -> None:
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    shape = (6, 6, 3) if rgb else (6, 6)

    def split(n):
        images = [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for _ in range(n)]
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=3)})
        return datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in range(n)]}, features=features)

    data = datasets.DatasetDict(train=split(20), test=split(10)) if with_test else split(20)
    data.save_to_disk(str(path))


@pytest.mark.parametrize(("with_test", "rgb"), [(True, False), (False, True)])
def test_hugging_face_image_dataset_from_disk(tmp_path, with_test, rgb, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "tiny"
    _save_tiny_image_dataset(path, with_test, rgb)
    data = load_image_data(str(path), image_size=4)
    channels = 3 if rgb else 1
    assert data.train_images.shape == ((20, channels, 4, 4) if with_test else (16, channels, 4, 4))
    assert len(data.test_labels) == (10 if with_test else 4)
    assert data.num_classes == 3
    assert 0 <= data.train_images.min() and data.train_images.max() <= 1
    task = FAMILIES["cnn"](dataset=str(path), image_size=4, batch_size=8).sample(0)
    assert torch.isfinite(task.loss(task.init_params(), task.batch(0)))


def test_offline_data_is_split_and_resized():
    data = load_image_data("digits", image_size=4, max_examples=50)
    assert data.train_images.shape == (50, 1, 4, 4) and data.test_images.shape == (50, 1, 4, 4)
    assert data.num_classes == 10


def test_markov_chain_of_order_two_follows_its_transitions():
    """A deterministic order-2 chain: every token after the first two is fixed by the two before it."""
    from l2o.meta.tasks import MarkovChainTask

    vocab = 3
    nxt = torch.randint(vocab, (vocab**2,), generator=torch.Generator().manual_seed(0))
    transitions = torch.nn.functional.one_hot(nxt, vocab).float()
    task = FAMILIES["transformer"](vocab_sizes=[vocab], d_models=[16], depths=[1], orders=[2]).sample(0)
    chain = MarkovChainTask(task.model, transitions, seq_len=task.seq_len, batch_size=4, seed=0, name="chain")
    assert chain.order == 2 and task.order == 2 and task.transitions.shape == (vocab**2, vocab)
    inputs, targets = chain.batch(0)
    sequence = torch.cat([inputs, targets[:, -1:]], dim=1)
    for t in range(2, sequence.shape[1]):
        assert torch.equal(sequence[:, t], nxt[sequence[:, t - 2] * vocab + sequence[:, t - 1]])
    assert torch.equal(targets[:, :-1], inputs[:, 1:])
    with pytest.raises(ValueError, match=r"vocab\^k"):
        MarkovChainTask(task.model, torch.ones(5, 3) / 3, seq_len=8, batch_size=2, seed=0, name="bad")


NEW_TASKS = {  # one small member of each family added for benchmarks/l2o_quality.py
    "autoencoder": {"widths": [32], "bottlenecks": [8], "batch_size": 16},
    "regression": {"widths": [16], "depths": [2], "train_size": 256, "test_size": 64, "batch_size": 16},
    "resnet": {"channels": [8], "blocks": [2], "dataset": "digits", "batch_size": 16},
}


@pytest.mark.parametrize("family", list(NEW_TASKS))
def test_new_task_is_deterministic_finite_and_trainable(family):
    """Batches are a pure function of (seed, split, step), the loss is finite and every parameter gets a
    nonzero gradient (e.g. the residual CNN's BatchNorm scales and both branches of the skip)."""
    make = lambda: FAMILIES[family](**NEW_TASKS[family]).sample(2)  # noqa: E731
    a, b = make(), make()
    assert a.name == b.name
    assert all(torch.equal(x, y) for x, y in zip(a.init_params().values(), b.init_params().values()))
    assert all(torch.equal(x, y) for x, y in zip(a.batch(5), b.batch(5)))
    assert all(torch.equal(x, y) for x, y in zip(a.batch(5, "test"), b.batch(5, "test")))
    assert not torch.equal(a.batch(5)[0], a.batch(6)[0]) and not torch.equal(a.batch(5)[0], a.batch(5, "test")[0])
    params = {k: v.requires_grad_() for k, v in a.init_params().items()}
    loss = a.loss(params, a.batch(0))
    assert loss.shape == () and torch.isfinite(loss)
    for name, grad in zip(params, torch.autograd.grad(loss, list(params.values()))):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_regression_set_is_fixed_offline_and_noisy():
    """The teacher set depends on ``data_seed`` only (like a data set), with unit-variance targets."""
    from l2o.meta.tasks.regression import teacher_data

    family = FAMILIES["regression"](train_size=512, test_size=128)
    first, other = family.sample(0), family.sample(1)
    assert first.data is other.data and first.data.train_inputs.shape == (512, 16)
    assert first.data.test_targets.shape == (128, 1)
    assert abs(float(first.data.train_targets.std()) - (1 + 0.1**2) ** 0.5) < 0.05
    shifted = teacher_data(16, 64, 2, 2.0, 0.1, 512, 128, 1)
    assert not torch.equal(shifted.train_targets, first.data.train_targets)


def test_residual_cnn_traces_with_its_skips_and_batchnorm():
    from encoders import NeuralGraph
    from encoders.builder import EdgeKind

    task = FAMILIES["resnet"](channels=[8], blocks=[2], dataset="digits").sample(0)
    graph = NeuralGraph.from_module(task.model)
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in task.model.modules())
    assert norms == 5  # stem + 2 per block
    assert int((graph.edge_kind == EdgeKind.RESIDUAL).sum()) == 2 * 8  # one identity edge per channel per block
    assert int((graph.edge_kind == EdgeKind.NORM).sum()) == norms * 8


def test_new_family_options_are_checked():
    with pytest.raises(ValueError, match="unknown output"):
        FAMILIES["autoencoder"](output="tanh")
    with pytest.raises(ValueError, match="unknown norms"):
        FAMILIES["resnet"](norms=["layer"])
    with pytest.raises(ValueError, match="unknown activations"):
        FAMILIES["regression"](activations=["swish"])
