"""The CUDA paths, checked against the CPU and for permutation symmetry on the GPU.

Skipped where torch sees no CUDA device (CI has none); run them on a GPU machine with
``pytest tests/test_cuda.py``. TF32 is switched off so CPU and GPU compute in the same precision.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

from encoders import NeuralGraph
from encoders.symmetry import equivariance_error, permute_flat, random_hidden_permutation
from l2o import NeuralGraphOpt
from l2o.meta import ConfigError, meta_train
from l2o.meta.metrics import read_metrics
from tests.encoders.conftest import LAYOUT, VARIANTS, EncoderWithHeads, make_encoder
from tests.encoders.networks import NETWORKS, build
from tests.encoders.test_encoders_symmetry import SYMMETRY_NETWORKS
from tests.l2o.test_fused import (
    check_compiled_step_commutes_with_permutations,
    check_compiled_step_follows_the_reference,
)
from tests.l2o.test_graph_rule import permuted_pair, random_rule, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _full_precision():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 10))


def _small_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))


def _steps(model: nn.Module, opt: torch.optim.Optimizer, batches: list, steps: range) -> None:
    device = next(model.parameters()).device
    for i in steps:
        images, labels = (t.to(device) for t in batches[i])
        opt.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        opt.step()


@pytest.mark.parametrize("rule", ["neural-graph-v7", "neural-graph-v6", "neural-graph-v5", "neural-graph-v4",
                                  "neural-graph-v3", "ff-v3"])
@pytest.mark.parametrize("make_model", [_small_mlp, _small_cnn])
def test_optimizer_on_cuda_follows_the_cpu_and_its_state_moves_back(rule, make_model):
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 1, 8, 8, generator=gen), torch.randint(10, (16,), generator=gen)) for _ in range(6)]
    cpu_model = make_model()
    gpu_model = copy.deepcopy(cpu_model).to(CUDA)
    cpu_opt = NeuralGraphOpt(cpu_model.parameters(), rule=rule, model=cpu_model)
    gpu_opt = NeuralGraphOpt(gpu_model.parameters(), rule=rule, model=gpu_model)
    _steps(cpu_model, cpu_opt, batches, range(3))
    _steps(gpu_model, gpu_opt, batches, range(3))
    assert all(t.device.type == "cuda" for s in gpu_opt.state.values() for t in _tensors(s))
    for a, b in zip(cpu_model.parameters(), gpu_model.parameters()):
        torch.testing.assert_close(b.cpu(), a, atol=1e-5, rtol=1e-4)
    # the GPU optimizer's state continues on the CPU like the CPU optimizer's own
    moved = copy.deepcopy(gpu_model).cpu()
    moved_opt = NeuralGraphOpt(moved.parameters(), rule=rule, model=moved)
    moved_opt.load_state_dict(gpu_opt.state_dict())
    _steps(moved, moved_opt, batches, range(3, 6))
    _steps(cpu_model, cpu_opt, batches, range(3, 6))
    for a, b in zip(cpu_model.parameters(), moved.parameters()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def _tensors(state) -> list[torch.Tensor]:
    leaves = state.values() if isinstance(state, dict) else state
    out = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            out.append(leaf)
        elif isinstance(leaf, (dict, list, tuple)):
            out += _tensors(leaf)
    return out


@pytest.mark.parametrize("name", ["mlp", "cnn_mixed_kernels", "transformer"])
def test_optimizer_step_on_cuda_commutes_with_hidden_permutations(name):
    model, permuted, example, graph, sigma = permuted_pair(name)
    model, permuted, example = model.to(CUDA), permuted.to(CUDA), example.to(CUDA)
    rule = random_rule()
    after = train(model, example, rule).cpu()
    after_permuted = train(permuted, example, rule).cpu()
    assert (after - graph.to_flat()).abs().max() > 1e-3, "the steps should move the parameters"
    torch.testing.assert_close(after_permuted, permute_flat(graph, after, sigma), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", ["mlp", "cnn_mixed_kernels", "transformer"])
def test_fused_step_on_cuda_follows_the_cpu_reference_and_commutes_with_hidden_permutations(name):
    """The compiled step (Triton on the GPU) against the CPU's reference step, and its symmetry."""
    check_compiled_step_follows_the_reference(name, CUDA)
    check_compiled_step_commutes_with_permutations(name, CUDA)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_encoders_on_cuda_follow_the_cpu_and_commute_with_hidden_permutations(variant):
    graphs = {name: NeuralGraph.from_module(build(name)[0], **LAYOUT) for name in NETWORKS}
    cpu_model = EncoderWithHeads(make_encoder(variant, list(graphs.values()))).eval()
    gpu_model = copy.deepcopy(cpu_model).to(CUDA)
    batch = Batch.from_data_list([g.to_pyg() for g in graphs.values()])
    with torch.no_grad():
        for a, b in zip(cpu_model(batch), gpu_model(batch.to(CUDA))):
            torch.testing.assert_close(b.cpu(), a, atol=1e-4, rtol=1e-4)
    for name in SYMMETRY_NETWORKS:
        graph = graphs[name]

        def on_gpu(x: torch.Tensor, edge_attr: torch.Tensor, graph: NeuralGraph = graph):
            with torch.no_grad():
                out = gpu_model(Batch.from_data_list([graph.to_pyg(x=x, edge_attr=edge_attr)]).to(CUDA))
            return tuple(o.cpu() for o in out)

        sigma = random_hidden_permutation(graph, torch.Generator().manual_seed(1))
        err = equivariance_error(on_gpu, graph, sigma)
        assert err.max() <= 1e-5, (name, err)


def _fresh_accelerate_state() -> None:
    """Forget this process's accelerate state (one per process) so the next run may pick another device."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("estimator", [{"name": "tbptt"}, {"name": "pes", "sigma": 0.01}])
def test_meta_training_on_cuda_follows_the_cpu_and_resumes(tmp_path, estimator):
    from tests.meta.runs import small_config

    base = small_config(rule={"name": "neural-graph"}, estimator=estimator, steps=4, checkpoint_every=2,
                        tasks=[{"family": "mlp", "widths": [8], "depths": [1]}])
    _fresh_accelerate_state()
    meta_train({**base, "device": "cpu"}, tmp_path / "cpu")
    with pytest.raises(ConfigError, match="already set up for cpu"):
        meta_train({**base, "device": "cuda"}, tmp_path / "refused")
    _fresh_accelerate_state()
    rule = meta_train({**base, "device": "cuda", "steps": 2}, tmp_path / "cuda")
    assert all(p.device.type == "cuda" for p in rule.parameters())
    meta_train({**base, "device": "cuda"}, tmp_path / "cuda")  # resumes the GPU run from its checkpoint
    cpu, gpu = (read_metrics(tmp_path / run / "metrics.jsonl") for run in ("cpu", "cuda"))
    assert [r["step"] for r in gpu] == [1, 2, 3, 4]
    # the first meta-step differs by rounding only; after it, Adam's normalised first steps turn
    # rounding-sized differences in near-zero meta-gradient components into differences of order lr
    assert gpu[0]["meta_loss"] == pytest.approx(cpu[0]["meta_loss"], rel=1e-5)
    for a, b in zip(cpu[1:], gpu[1:]):
        assert b["meta_loss"] == pytest.approx(a["meta_loss"], rel=1e-2)
    _fresh_accelerate_state()  # leave the process to the CPU runs of other tests
