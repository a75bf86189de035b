"""Probe features: what the networks compute on K learned inputs, as features of their neurons.

``K`` probe points in ``[-1, 1]^d0`` run through every network of a batch of same-architecture
MLPs (``torch.func.functional_call``, ``vmap`` over the batch). The activations of layer ``l``
(``[B, K, n_l]``; layer 0 = the probes themselves) become features of the neurons at depth ``l``:
the neuron with ``node_depth == l`` and ``node_index == n`` gets the ``K`` values ``act_l[:, :, n]``,
mapped by ``Linear(K, hidden)`` and a per-node ``LayerNorm``. Hidden-neuron permutations of a
network permute its activations the same way, so the features keep the graph's symmetry.

Supported networks: ``nn.Sequential`` of ``nn.Linear`` layers and parameter-free modules
(activations such as a SIREN sine), e.g. a 2-32-32-1 INR. Layer ``l`` is the output of the
``l``-th ``Linear`` after the parameter-free modules that follow it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch_geometric.data import Data

from encoders.dense import DenseGraphs
from encoders.embeddings import node_batch

__all__ = ["ProbeFeatures", "add_probe_features", "layer_activations", "require_probe_inputs"]


def layer_activations(net: nn.Sequential, params: Mapping[str, Tensor], inputs: Tensor) -> list[Tensor]:
    """Per-layer activations of a batch of networks sharing ``net``'s architecture.

    ``params``: ``{name: [B, *shape]}`` with the names of ``net.named_parameters()``; ``inputs [K, d0]``
    are shared by all networks. Returns ``[inputs, layer 1, ..., layer L]``, each ``[B, K, n_l]``.
    """
    if not isinstance(net, nn.Sequential):
        raise ValueError(f"probe features need an nn.Sequential MLP, got {type(net).__name__}")
    for name, module in net.named_children():
        if not isinstance(module, nn.Linear) and any(True for _ in module.parameters()):
            raise ValueError(
                f"probe features support Linear layers and parameter-free modules; module {name!r} is a "
                f"{type(module).__name__} with parameters"
            )
    missing = {n for n, _ in net.named_parameters()} - set(params)
    if missing:
        raise ValueError(f"probe parameters are missing {sorted(missing)}")

    def run(p: dict[str, Tensor]) -> list[Tensor]:
        h, acts = inputs, [inputs]
        for name, module in net.named_children():
            prefix = f"{name}."
            own = {k[len(prefix):]: v for k, v in p.items() if k.startswith(prefix)}
            h = functional_call(module, own, (h,))
            if isinstance(module, nn.Linear):
                acts.append(h)
            else:
                acts[-1] = h
        return acts

    return vmap(run)(dict(params))


class ProbeFeatures(nn.Module):
    """Learned probes and the map from per-neuron activations to node features.

    ``forward(data, net, params) -> [N, hidden]`` for a batch ``data`` of ``B`` graphs of the same
    MLP architecture, graph ``b`` holding the network ``params[name][b]``.
    """

    def __init__(self, num_probes: int, input_dim: int, hidden: int) -> None:
        super().__init__()
        self.probes = nn.Parameter(torch.rand(num_probes, input_dim) * 2 - 1)
        self.proj = nn.Linear(num_probes, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, data: Data | DenseGraphs, net: nn.Sequential, params: Mapping[str, Tensor]) -> Tensor:
        return self.norm(self.proj(self.node_values(data, net, params)))

    def node_values(self, data: Data | DenseGraphs, net: nn.Sequential, params: Mapping[str, Tensor]) -> Tensor:
        """``[N, K]`` (PyG ``data``) or ``[B, N, K]`` (:class:`~encoders.dense.DenseGraphs`): the probe
        activations of every node's neuron, in node order."""
        acts = layer_activations(net, params, self.probes)
        dense = isinstance(data, DenseGraphs)
        meta = data.layout if dense else data
        graphs = data.num_graphs if dense else int(node_batch(data).max()) + 1
        if graphs != acts[0].shape[0]:
            raise ValueError(f"the batch holds {graphs} graphs but the probe parameters {acts[0].shape[0]} networks")
        widths = torch.tensor([a.shape[-1] for a in acts], device=meta.node_depth.device)
        depth, index = meta.node_depth, meta.node_index
        if int(depth.max()) >= len(acts) or bool((index >= widths[depth.clamp(max=len(acts) - 1)]).any()):
            raise ValueError(
                "the graphs do not match the probed network: every node needs a layer (node_depth) and a "
                f"neuron (node_index) of the network; its layer widths are {widths.tolist()}"
            )
        column = (torch.cumsum(widths, 0) - widths)[depth] + index
        acts = torch.cat(acts, dim=-1)  # [B, K, sum n_l]
        if dense:
            return acts[:, :, column].transpose(1, 2)
        return acts[node_batch(data), :, column]  # [N, K]


def add_probe_features(x: Tensor, data: Data | DenseGraphs, probes: ProbeFeatures | None,
                       probe_net: nn.Sequential | None, probe_params: Mapping[str, Tensor] | None) -> Tensor:
    """``x`` (node embeddings of ``data``) plus its probe features when ``probes`` is set.

    Every encoder with optional probes calls this, so all of them refuse the same way a call that
    lacks the probe inputs they need or passes inputs they would ignore.
    """
    if probes is not None:
        require_probe_inputs(probe_net, probe_params)
        return x + probes(data, probe_net, probe_params)
    if probe_net is not None or probe_params is not None:
        raise ValueError("probe_net/probe_params were given but probe features are disabled (probes == 0)")
    return x


def require_probe_inputs(probe_net: nn.Sequential | None, probe_params: Mapping[str, Tensor] | None) -> None:
    """Refuse a call to a model with probe features that lacks the probed network or its parameters."""
    if probe_net is None or probe_params is None:
        raise ValueError("this model uses probe features (probes > 0): pass probe_net and probe_params")
