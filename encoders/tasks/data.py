"""Zoo splits as encoder inputs: neural graphs, flat parameter vectors and mini-batches.

A :class:`WeightSet` holds the networks of one split: the neural-graph structure of each (one
shared object per architecture), their raw parameters concatenated in graph order (``raw [N, P]``,
zero-padded to the longest network for zoos of mixed architectures) and the standardized
parameters fed to the models. :meth:`WeightSet.batch` gathers a :class:`WeightBatch`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from math import prod
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Batch

from encoders.dense import DenseGraphs, dense_layout
from encoders.graph import NeuralGraph
from encoders.tasks.standardize import LayerStandardizer
from encoders.zoo.cnn import build_cnn
from encoders.zoo.records import check_param_shapes, record_state_dict
from encoders.zoo.siren import Siren
from encoders.zoo.zoo import Zoo

__all__ = ["CNN_LAYOUT", "WeightBatch", "WeightSet", "flatten_state_dict", "param_sizes", "zoo_graphs", "zoo_params"]

CNN_LAYOUT: dict[str, Any] = {"kernel_grid": (7, 7), "node_channels": 1, "edge_channels": 1}
"""One feature layout for every CNN of a zoo (kernels up to 7x7), so mixed architectures share batches."""


def flatten_state_dict(graph: NeuralGraph, state_dict: Mapping[str, Tensor]) -> Tensor:
    """``[P]``: the parameters of ``state_dict`` in ``graph``'s order; ``ValueError`` if they do not fit."""
    expected = dict(zip(graph.param_names, graph.param_shapes))
    check_param_shapes({k: list(v.shape) for k, v in state_dict.items()}, expected, "network")
    return graph.flatten([state_dict[name] for name in graph.param_names])


def zoo_graphs(zoo: Zoo) -> list[NeuralGraph]:
    """The neural-graph structure of every record (one shared object per architecture).

    INR zoos: the graph of ``Siren(**zoo.meta["siren"])``; CNN zoos: of ``build_cnn(spec)`` with
    :data:`CNN_LAYOUT`.
    """
    if zoo.kind == "inr":
        graph = NeuralGraph.from_module(Siren(**zoo.meta["siren"]))
        return [graph] * len(zoo)
    cache: dict[str, NeuralGraph] = {}
    graphs = []
    for spec in zoo.dataset["spec"]:
        if spec not in cache:
            cache[spec] = NeuralGraph.from_module(build_cnn(json.loads(spec)), **CNN_LAYOUT)
        graphs.append(cache[spec])
    return graphs


def zoo_params(zoo: Zoo, structures: Sequence[NeuralGraph], width: int) -> Tensor:
    """``[N, width]``: every record's raw parameters in graph order, zero-padded to ``width`` values."""
    raw = torch.zeros(len(zoo), width)
    if zoo.kind == "inr":
        stacked, graph = zoo.stacked_params(), structures[0]
        raw[:, :graph.num_params] = torch.cat([stacked[n].flatten(1) for n in graph.param_names], dim=1)
        return raw
    for i, graph in enumerate(structures):
        if graph.num_params > width:
            raise ValueError(f"record {i} has {graph.num_params} parameters, more than the {width} "
                             "the model was built for")
        raw[i, :graph.num_params] = flatten_state_dict(graph, record_state_dict(zoo.dataset[i]))
    return raw


Augmentation = Callable[[Tensor, torch.Generator | None], Tensor]
"""``augment(raw [B, P], generator) -> [B, P]``: new raw parameters for a training batch."""


@dataclass(eq=False)
class WeightBatch:
    """A mini-batch of ``B`` networks.

    ``structures``: each network's :class:`NeuralGraph`; ``raw``/``flat``: ``[B, P]`` raw and
    standardized parameters; ``target``: the task's targets ``[B, ...]``; ``index``: ``[B]`` rows
    of the split. The encoders' inputs are built on first use: :attr:`graphs` (a PyG batch, any
    architectures) and :attr:`dense` (same-architecture batches only).
    """

    structures: list[NeuralGraph]
    raw: Tensor
    flat: Tensor
    target: Tensor
    index: Tensor

    def __len__(self) -> int:
        return len(self.index)

    @cached_property
    def graphs(self) -> Batch:
        """PyG batch of the neural graphs, with the standardized parameters as features."""
        return Batch.from_data_list([g.to_pyg(*g.features(f[:g.num_params]))
                                     for g, f in zip(self.structures, self.flat)])

    @cached_property
    def dense(self) -> DenseGraphs | None:
        """The batch as :class:`~encoders.dense.DenseGraphs` when every network shares one
        architecture with a dense layout (a zoo of MLPs or plain CNNs); ``None`` otherwise."""
        first = self.structures[0]
        if any(g is not first for g in self.structures):
            return None
        try:
            dense_layout(first)
        except ValueError:
            return None
        return DenseGraphs.from_flat(first, self.flat)


class WeightSet:
    """The networks of one split, their targets ``[N, ...]`` and the standardization in use."""

    def __init__(self, structures: Sequence[NeuralGraph], raw: Tensor, target: Tensor,
                 standardizer: LayerStandardizer) -> None:
        if not len(structures) == len(raw) == len(target):
            raise ValueError(f"{len(structures)} graphs, {len(raw)} parameter rows and {len(target)} targets")
        if len(raw) == 0:
            raise ValueError("a weight set needs at least one network")
        self.structures, self.raw, self.target = list(structures), raw, target
        self.flat = standardizer(raw) * self._mask
        self.standardizer = standardizer

    @cached_property
    def _mask(self) -> Tensor:
        mask = torch.zeros(self.raw.shape)
        for i, graph in enumerate(self.structures):
            mask[i, :graph.num_params] = 1.0
        return mask

    def __len__(self) -> int:
        return len(self.raw)

    def batch(self, index: Tensor, augment: Augmentation | None = None,
              generator: torch.Generator | None = None) -> WeightBatch:
        """The networks at rows ``index [B]``; ``augment(raw [B, P], generator) -> [B, P]`` redraws
        their parameters first (their graphs' features are then rebuilt)."""
        rows = index.tolist()
        structures = [self.structures[i] for i in rows]
        if augment is None:
            return WeightBatch(structures, self.raw[index], self.flat[index], self.target[index], index)
        raw = augment(self.raw[index], generator)
        flat = self.standardizer(raw) * self._mask[index]
        return WeightBatch(structures, raw, flat, self.target[index], index)

    def batches(self, batch_size: int, generator: torch.Generator | None = None,
                augment: Augmentation | None = None) -> Iterator[WeightBatch]:
        """The whole set in batches: shuffled with ``generator``, in order without; each batch
        augmented with ``augment`` (drawing from ``generator``) if given."""
        order = torch.randperm(len(self), generator=generator) if generator is not None else torch.arange(len(self))
        for chunk in order.split(batch_size):
            yield self.batch(chunk, augment, generator)


def param_sizes(graph: NeuralGraph) -> list[int]:
    """Elements per parameter tensor of ``graph``, in graph order."""
    return [prod(s) for s in graph.param_shapes]
