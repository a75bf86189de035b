"""Pictures of neural graphs (matplotlib)."""

from __future__ import annotations

from typing import Any

import torch

from encoders.builder import EdgeKind, Role
from encoders.graph import NeuralGraph

__all__ = ["draw_neural_graph"]

_ROLE_COLOURS = {
    Role.INPUT: "#4c72b0", Role.HIDDEN: "#55a868", Role.OUTPUT: "#c44e52",
    Role.NORM: "#8172b2", Role.ATTENTION: "#ccb974", Role.OTHER: "#8c8c8c",
}
_EDGE_STYLES = {EdgeKind.RESIDUAL: "--", EdgeKind.NORM: ":", EdgeKind.ATTENTION: "-.", EdgeKind.GATE: (0, (4, 1, 1, 1))}


def node_positions(graph: NeuralGraph) -> torch.Tensor:
    """``[N, 2]`` drawing coordinates: one column per block (ordered by depth), neurons stacked."""
    pos = torch.zeros(graph.num_nodes, 2)
    blocks = graph.node_block.unique().tolist()
    depth = {b: int(graph.node_depth[graph.node_block == b][0]) for b in blocks}
    column_of = {b: i for i, b in enumerate(sorted(blocks, key=lambda b: (depth[b], b)))}
    for b in blocks:
        nodes = (graph.node_block == b).nonzero().squeeze(1)
        pos[nodes, 0] = column_of[b]
        pos[nodes, 1] = torch.arange(len(nodes), dtype=torch.float) - (len(nodes) - 1) / 2
    return pos


def draw_neural_graph(graph: NeuralGraph, ax: Any = None, title: str | None = None) -> Any:
    """Draw ``graph`` on a matplotlib axis: nodes coloured by role, node shade by bias magnitude,
    edges coloured by the sign and width by the norm of their feature vector (a kernel is one edge);
    residual edges dashed, normalization edges dotted, key-to-query attention edges dash-dotted,
    gate edges dash-dot-dotted. Returns the axis."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    pos = node_positions(graph)
    strength = graph.edge_attr.norm(dim=1)
    sign = graph.edge_attr.sum(dim=1).sign()
    scale = float(strength.max()) or 1.0
    for e in range(graph.num_edges):
        s, t = graph.edge_index[:, e].tolist()
        kind = EdgeKind(int(graph.edge_kind[e]))
        colour = "#b2182b" if sign[e] > 0 else "#2166ac"
        if kind in _EDGE_STYLES:  # edges without a weight of their own
            colour = "#555555"
        span = float(pos[t, 0] - pos[s, 0])
        ax.add_patch(FancyArrowPatch(
            pos[s].tolist(), pos[t].tolist(), arrowstyle="-", color=colour, alpha=0.6, zorder=1,
            linestyle=_EDGE_STYLES.get(kind, "-"), lw=0.3 + 2.2 * float(strength[e]) / scale,
            connectionstyle=f"arc3,rad={0.25 if span > 1 else 0.0}",  # skip connections bend around layers
        ))
    for role, colour in _ROLE_COLOURS.items():
        mask = graph.node_role == role
        if mask.any():
            ax.scatter(pos[mask, 0], pos[mask, 1], s=90, color=colour, edgecolors="black", zorder=2)
    handles = [Line2D([], [], marker="o", ls="", color=c, markeredgecolor="black", label=r.name.lower())
               for r, c in _ROLE_COLOURS.items() if (graph.node_role == r).any()]
    handles += [Line2D([], [], ls=_EDGE_STYLES[k], color="#555555", label=k.name.lower())
                for k in _EDGE_STYLES if (graph.edge_kind == k).any()]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    return ax
