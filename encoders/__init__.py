"""Neural graphs and the networks that read them (NG-GNN, NG-T), plus weight-space tasks."""

# encoders.build registers NeuralGraph.from_module / from_parameters (graph.py imports no tracer)
import encoders.build  # noqa: F401
from encoders.builder import ACTIVATIONS, EdgeKind, Role
from encoders.dense import DenseGraphs, dense_layout
from encoders.graph import NeuralGraph
from encoders.models import NGGNN, NGGNNConfig, NGTransformer, NGTransformerConfig, degree_histograms
from encoders.readouts import GraphReadout, NodeEdgeHead, unbatch_features

__all__ = [
    "ACTIVATIONS", "DenseGraphs", "EdgeKind", "GraphReadout", "NGGNN", "NGGNNConfig", "NGTransformer",
    "NGTransformerConfig", "NeuralGraph", "NodeEdgeHead", "Role", "degree_histograms", "dense_layout",
    "unbatch_features",
]
