"""Building neural graphs: :func:`graph_from_module` (tracing) and :func:`graph_from_parameters` (shape chaining).

The layers, pointing one way::

    builder.py   GraphBuilder, the vocabulary (blocks, edges, where each parameter element lives)
    graph.py     NeuralGraph, the data structure; NeuralGraph.from_builder
    tracing.py   nn.Module -> GraphBuilder (torch.fx)        chaining.py   parameter list -> GraphBuilder
    build.py     this module: a tracer or chaining, then NeuralGraph.from_builder

``graph.py`` imports neither the tracer nor chaining. ``NeuralGraph.from_module`` and
``NeuralGraph.from_parameters`` stay on the class (documented there) and delegate to the functions
here, which this module registers with :func:`encoders.graph.register_constructor` when imported.
``encoders/__init__.py`` imports this module, and Python runs that before any ``encoders.*``
submodule, so the classmethods work for every user of the package, whichever module they import
``NeuralGraph`` from.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from encoders.builder import ParamsLike, named_tensors
from encoders.chaining import chain_parameters
from encoders.graph import NeuralGraph, register_constructor
from encoders.tracing import trace_module

__all__ = ["graph_from_module", "graph_from_parameters"]


def _from_module(cls: type[NeuralGraph], model: nn.Module, layout: dict[str, Any]) -> NeuralGraph:
    builder, named = trace_module(model)
    return cls.from_builder(builder, named, **layout)


def _from_parameters(cls: type[NeuralGraph], params: ParamsLike, layout: dict[str, Any]) -> NeuralGraph:
    named = named_tensors(params)
    return cls.from_builder(chain_parameters(named), named, **layout)


def graph_from_module(model: nn.Module, **layout: Any) -> NeuralGraph:
    """``NeuralGraph.from_module(model, **layout)``: the exact graph of ``model``, traced."""
    return _from_module(NeuralGraph, model, layout)


def graph_from_parameters(params: ParamsLike, **layout: Any) -> NeuralGraph:
    """``NeuralGraph.from_parameters(params, **layout)``: the graph from parameter shapes and order."""
    return _from_parameters(NeuralGraph, params, layout)


register_constructor("module", _from_module)
register_constructor("parameters", _from_parameters)
