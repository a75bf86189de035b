"""Neural graphs and the networks that read them (NG-GNN, NG-T), plus weight-space tasks."""

from encoders.builder import ACTIVATIONS, EdgeKind, Role
from encoders.graph import NeuralGraph

__all__ = ["ACTIVATIONS", "EdgeKind", "NeuralGraph", "Role"]
