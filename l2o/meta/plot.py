"""A PNG of meta-training: meta-loss per meta-step and logged inner training curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_metrics"]


def plot_metrics(records: list[dict[str, Any]], path: str | Path) -> None:
    """Plot metrics records (see :class:`~l2o.meta.metrics.MetricsLog`) to ``path``.

    Left: meta-loss per meta-step (skipped, non-finite steps marked at the bottom). Right: the
    inner training loss of each logged slot against the inner iteration, coloured by meta-step.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    good = [r for r in records if r.get("meta_loss") is not None]
    left.plot([r["step"] for r in good], [r["meta_loss"] for r in good], lw=1)
    skipped = [r["step"] for r in records if r.get("skipped")]
    if skipped:
        left.plot(skipped, [0.0] * len(skipped), "rx", transform=left.get_xaxis_transform(), label="skipped")
        left.legend()
    left.set(xlabel="meta-step", ylabel="meta-loss", title="meta-training")
    logged = [r for r in records if r.get("inner")]
    cmap = plt.get_cmap("viridis")
    last = max((r["step"] for r in logged), default=1)
    for record in logged:
        for curve in record["inner"]:
            steps = range(curve["start"], curve["start"] + len(curve["losses"]))
            right.plot(steps, curve["losses"], color=cmap(record["step"] / last), lw=0.8, alpha=0.7)
    right.set(xlabel="inner iteration", ylabel="inner training loss", title="inner curves (colour: meta-step)")
    if logged and all(v > 0 for r in logged for c in r["inner"] for v in c["losses"] if v is not None):
        right.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
