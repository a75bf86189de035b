"""Message-passing and attention layers of the neural-graph encoders, one per file."""

from encoders.layers.edge_mlp import EdgeMLP
from encoders.layers.film_pna import FiLMPNAConv
from encoders.layers.gnn_layer import NGGNNLayer
from encoders.layers.norm import Norm
from encoders.layers.relational_attention import RelationalAttention
from encoders.layers.transformer_layer import NGTransformerLayer

__all__ = ["EdgeMLP", "FiLMPNAConv", "NGGNNLayer", "NGTransformerLayer", "Norm", "RelationalAttention"]
