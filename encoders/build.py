"""Building neural graphs: :func:`graph_from_module` (tracing) and :func:`graph_from_parameters` (shape chaining).

The layers, pointing one way::

    builder.py   GraphBuilder, the vocabulary (blocks, edges, where each parameter element lives)
    graph.py     NeuralGraph, the data structure; NeuralGraph.from_builder
    templates.py the layer templates (linear, conv, norm, attention, ...) both tracers describe layers with
    tracing.py   nn.Module -> GraphBuilder (torch.fx)        chaining.py   parameter list -> GraphBuilder
    exporting.py nn.Module + example inputs -> GraphBuilder (torch.export)
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

from torch import Tensor, nn

from encoders.builder import GraphBuilder, ParamsLike, named_tensors
from encoders.chaining import chain_parameters
from encoders.exporting import is_hugging_face, trace_exported
from encoders.graph import NeuralGraph, register_constructor
from encoders.tracing import trace_module

__all__ = ["graph_from_module", "graph_from_parameters", "trace"]


def trace(
    model: nn.Module, example_inputs: tuple | dict | None = None
) -> tuple[GraphBuilder, list[tuple[str, Tensor]]]:
    """Describe ``model`` to a :class:`GraphBuilder`: with ``torch.fx`` where it traces (no inputs
    needed), else with ``torch.export`` on ``example_inputs``. Hugging Face models go straight to
    ``torch.export``, with inputs built from their config when none are given."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"from_module expects an nn.Module, got {type(model).__name__}")
    if is_hugging_face(model):
        return trace_exported(model, example_inputs)
    try:
        return trace_module(model)
    except ValueError as fx_error:
        if example_inputs is None:
            raise ValueError(f"torch.fx: {fx_error}; pass example_inputs= to trace it with torch.export instead"
                             ) from fx_error
        try:
            return trace_exported(model, example_inputs)
        except ValueError as export_error:
            raise ValueError(f"torch.fx: {fx_error}; torch.export: {export_error}") from export_error


def _from_module(cls: type[NeuralGraph], source: tuple[nn.Module, Any], layout: dict[str, Any]) -> NeuralGraph:
    builder, named = trace(*source)
    return cls.from_builder(builder, named, **layout)


def _from_parameters(cls: type[NeuralGraph], params: ParamsLike, layout: dict[str, Any]) -> NeuralGraph:
    named = named_tensors(params)
    return cls.from_builder(chain_parameters(named), named, **layout)


def graph_from_module(model: nn.Module, example_inputs: tuple | dict | None = None, **layout: Any) -> NeuralGraph:
    """``NeuralGraph.from_module(model, example_inputs, **layout)``: the exact graph of ``model``, traced."""
    return _from_module(NeuralGraph, (model, example_inputs), layout)


def graph_from_parameters(params: ParamsLike, **layout: Any) -> NeuralGraph:
    """``NeuralGraph.from_parameters(params, **layout)``: the graph from parameter shapes and order."""
    return _from_parameters(NeuralGraph, params, layout)


register_constructor("module", _from_module)
register_constructor("parameters", _from_parameters)
