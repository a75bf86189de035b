"""The three weight-space tasks: what is predicted from a zoo's weights, the loss and the metric.

* :class:`InrClassification` — the digit an INR draws; cross-entropy; test accuracy.
* :class:`InrEditing` — a weight change that makes the INR draw its 3x3-dilated image (grey
  dilation of its own rendering); the model predicts a delta of the standardized parameters,
  ``edited = input + delta``; pixel MSE of the edited rendering on the [0, 1] scale.
* :class:`Generalization` — a CNN's test accuracy from its weights, across architectures;
  ``prediction = sigmoid(output)``, BCE against the accuracy; Kendall's tau.

A task splits its zoo into ``train``/``val``/``test`` :class:`~encoders.tasks.data.WeightSet` s.
Models map a :class:`~encoders.tasks.data.WeightBatch` to ``[B, out_features]`` (invariant tasks)
or to a standardized parameter delta ``[B, P]`` (editing); the task turns outputs into a loss and
into per-network predictions, and scores a split's predictions.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from encoders.tasks.augment import InrAugment
from encoders.tasks.data import Augmentation, WeightBatch, WeightSet, param_sizes, zoo_graphs, zoo_params
from encoders.tasks.metrics import kendall_tau
from encoders.tasks.standardize import LayerStandardizer
from encoders.zoo.inr_fit import coordinate_grid
from encoders.zoo.siren import Sine, Siren
from encoders.zoo.zoo import Zoo

__all__ = ["TASKS", "Generalization", "InrClassification", "InrEditing", "WeightTask", "make_task"]

SPLITS = ("train", "val", "test")


class WeightTask:
    """Base class: ``splits`` (train/val/test weight sets), loss, predictions and score."""

    name: ClassVar[str]
    kind: ClassVar[str]
    metric: ClassVar[str]
    higher_is_better: ClassVar[bool]
    edits: ClassVar[bool] = False
    out_features: int
    splits: dict[str, WeightSet]

    def __init__(self, zoo: Zoo) -> None:
        if zoo.kind != self.kind:
            raise ValueError(f"task {self.name!r} needs a {self.kind.upper()} zoo, got a {zoo.kind.upper()} zoo")
        self.zoo = zoo

    @property
    def train(self) -> WeightSet:
        return self.splits["train"]

    def model_inputs(self, batch: WeightBatch) -> dict[str, Any]:
        """Extra keyword arguments of the model call (probe inputs for INR tasks)."""
        return {}

    def augmentation(self) -> Augmentation | None:
        """What ``FitConfig(augment=True)`` applies to training batches (``None``: nothing that
        keeps this task's targets)."""
        return None

    def loss(self, output: Tensor, batch: WeightBatch) -> Tensor:
        raise NotImplementedError

    def predictions(self, output: Tensor, batch: WeightBatch) -> Tensor:
        """``[B]`` per-network predictions (or per-network errors for editing)."""
        raise NotImplementedError

    def score(self, predictions: Tensor, split: str) -> float:
        """The metric of ``split`` from the predictions of all its networks, in split order."""
        raise NotImplementedError


class _InrTask(WeightTask):
    """INR tasks: one SIREN architecture, per-layer standardization fitted on the training split."""

    kind = "inr"

    def __init__(self, zoo: Zoo) -> None:
        super().__init__(zoo)
        self.siren = Siren(**zoo.meta["siren"]).eval()
        self.image_shape = tuple(zoo.meta["image_shape"])
        parts = {s: zoo.split(s) for s in SPLITS}
        graph = zoo_graphs(parts["train"])[0]
        self.graph, self.width = graph, graph.num_params
        raw = {s: zoo_params(part, [graph], self.width) for s, part in parts.items()}
        self.standardizer = LayerStandardizer.fit(raw["train"], param_sizes(graph))
        self.splits = {s: WeightSet([graph] * len(raw[s]), raw[s], self.targets(parts[s], raw[s]), self.standardizer)
                       for s in SPLITS}
        layers: list[nn.Module] = []
        for layer in self.siren.layers:
            layers += [nn.Linear(layer.in_features, layer.out_features), Sine(self.siren.w0)]
        self.probe_net = nn.Sequential(*layers[:-1])

    def targets(self, part: Zoo, raw: Tensor) -> Tensor:
        raise NotImplementedError

    def state_dicts(self, raw: Tensor) -> dict[str, Tensor]:
        """``raw [B, P]`` -> ``{SIREN parameter name: [B, *shape]}``."""
        chunks = raw.split(param_sizes(self.graph), dim=1)
        return {name: c.reshape(len(raw), *shape)
                for name, c, shape in zip(self.graph.param_names, chunks, self.graph.param_shapes)}

    def model_inputs(self, batch: WeightBatch) -> dict[str, Any]:
        params = {f"{2 * int(k.split('.')[1])}.{k.split('.')[2]}": v for k, v in self.state_dicts(batch.raw).items()}
        return {"probe_net": self.probe_net, "probe_params": params}

    def render(self, raw: Tensor) -> Tensor:
        """Images ``[B, C, H, W]`` on the [0, 1] scale drawn by the SIRENs ``raw [B, P]`` (differentiable)."""
        channels, height, width = self.image_shape
        coords = coordinate_grid(height, width).to(raw)
        out = vmap(lambda p: functional_call(self.siren, p, (coords,)))(self.state_dicts(raw))  # [B, H*W, C]
        lo, hi = self.zoo.meta["config"]["value_range"]
        return ((out - lo) / (hi - lo)).reshape(len(raw), height, width, channels).permute(0, 3, 1, 2)


class InrClassification(_InrTask):
    """Which class (digit) an INR draws. Metric: accuracy."""

    name, metric, higher_is_better = "inr-classify", "accuracy", True

    def __init__(self, zoo: Zoo) -> None:
        super().__init__(zoo)
        self.out_features = int(max(zoo.dataset["label"])) + 1

    def targets(self, part: Zoo, raw: Tensor) -> Tensor:
        return torch.tensor(part.dataset["label"], dtype=torch.long)

    def augmentation(self) -> Augmentation:
        """:class:`~encoders.tasks.augment.InrAugment` (rotation, scale, translation of the input
        coordinates, SIREN sign flips, 1 % weight dropout): a digit drawn rotated or shifted is
        still that digit."""
        augment = InrAugment()

        def apply(raw: Tensor, generator: torch.Generator | None) -> Tensor:
            params = augment(self.state_dicts(raw), generator)
            return torch.cat([params[n].flatten(1) for n in self.graph.param_names], dim=1)

        return apply

    def loss(self, output: Tensor, batch: WeightBatch) -> Tensor:
        return F.cross_entropy(output, batch.target)

    def predictions(self, output: Tensor, batch: WeightBatch) -> Tensor:
        return output.argmax(dim=-1)

    def score(self, predictions: Tensor, split: str) -> float:
        return float((predictions == self.splits[split].target).float().mean())


def dilate(images: Tensor, image_shape: tuple[int, ...]) -> Tensor:
    """3x3 grey dilation (max over each pixel's 3x3 neighbourhood) of ``images [B, C, H, W]``."""
    if images.dim() != 4 or tuple(images.shape[1:]) != tuple(image_shape):
        raise ValueError(f"expected images [B, {', '.join(map(str, image_shape))}], got {tuple(images.shape)}")
    return F.max_pool2d(images, 3, stride=1, padding=1)


class InrEditing(_InrTask):
    """Edit an INR so that it draws its 3x3-dilated image. Metric: pixel MSE (lower is better)."""

    name, metric, higher_is_better, edits = "inr-edit", "pixel_mse", False, True

    def __init__(self, zoo: Zoo) -> None:
        super().__init__(zoo)
        self.out_features = self.width

    def targets(self, part: Zoo, raw: Tensor) -> Tensor:
        with torch.no_grad():
            return dilate(self.render(raw), self.image_shape)

    def edited_images(self, delta: Tensor, batch: WeightBatch) -> Tensor:
        """Renderings ``[B, C, H, W]`` of the edited INRs: standardized params + ``delta [B, P]``."""
        if delta.shape != batch.flat.shape:
            raise ValueError(f"expected a parameter delta of shape {tuple(batch.flat.shape)}, got {tuple(delta.shape)}")
        return self.render(self.standardizer.inverse(batch.flat + delta))

    def loss(self, output: Tensor, batch: WeightBatch) -> Tensor:
        return F.mse_loss(self.edited_images(output, batch), batch.target)

    def predictions(self, output: Tensor, batch: WeightBatch) -> Tensor:
        return (self.edited_images(output, batch) - batch.target).pow(2).flatten(1).mean(1)

    def score(self, predictions: Tensor, split: str) -> float:
        return float(predictions.mean())

    def unedited_mse(self, split: str = "test") -> float:
        """Pixel MSE of the INRs left as they are (the zero edit), for reference."""
        data = self.splits[split]
        with torch.no_grad():
            return float((self.render(data.raw) - data.target).pow(2).mean())


class Generalization(WeightTask):
    """A CNN's test accuracy from its weights (mixed architectures). Metric: Kendall's tau."""

    name, kind, metric, higher_is_better, out_features = "generalization", "cnn", "kendall_tau", True, 1

    def __init__(self, zoo: Zoo) -> None:
        super().__init__(zoo)
        graphs = zoo_graphs(zoo)
        self.width = max(g.num_params for g in graphs)
        split_of = zoo.dataset["split"]
        self.splits = {}
        for s in SPLITS:
            part = zoo.split(s)
            structures = [g for g, name in zip(graphs, split_of) if name == s]
            target = torch.tensor(part.dataset["test_acc"], dtype=torch.float32)
            self.splits[s] = WeightSet(structures, zoo_params(part, structures, self.width), target,
                                       LayerStandardizer.identity(self.width))

    def loss(self, output: Tensor, batch: WeightBatch) -> Tensor:
        return F.binary_cross_entropy_with_logits(output.squeeze(-1), batch.target)

    def predictions(self, output: Tensor, batch: WeightBatch) -> Tensor:
        return torch.sigmoid(output.squeeze(-1))

    def score(self, predictions: Tensor, split: str) -> float:
        return kendall_tau(predictions, self.splits[split].target)


TASKS: dict[str, type[WeightTask]] = {t.name: t for t in (InrClassification, InrEditing, Generalization)}


def make_task(name: str, zoo: Zoo) -> WeightTask:
    """The task ``name`` (``"inr-classify"``, ``"inr-edit"``, ``"generalization"``) on ``zoo``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    return TASKS[name](zoo)
