"""A loaded zoo: its records (a Hugging Face ``Dataset``) and metadata, with access to the networks.

Columns common to every zoo: the weight columns of :mod:`encoders.zoo.records` and ``split``.
INR zoos add ``image_index``, ``copy``, ``label``, ``seed``, ``psnr``; CNN zoos add ``model_id``,
``arch_index``, ``arch_id``, ``epoch``, ``spec``, training hyperparameters and accuracies.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from datasets import Dataset
from torch import Tensor, nn

from encoders.zoo.cnn import build_cnn, cnn_param_shapes
from encoders.zoo.inr_fit import InrConfig, render_sirens
from encoders.zoo.records import check_param_shapes, record_state_dict, stack_params
from encoders.zoo.siren import Siren, siren_param_shapes
from encoders.zoo.store import read_zoo_dataset, write_zoo_dataset

__all__ = ["Zoo", "load_zoo"]

_KINDS = ("inr", "cnn")


@lru_cache(maxsize=4096)
def _cnn_shapes(spec_json: str) -> dict[str, tuple[int, ...]]:
    return cnn_param_shapes(json.loads(spec_json))


@dataclass
class Zoo:
    """Records and metadata of an INR or CNN zoo.

    Attributes:
        dataset: one row per network (per checkpoint for CNN zoos).
        meta: the generation settings; ``meta["kind"]`` is ``"inr"`` or ``"cnn"``. INR zoos have
            ``meta["siren"]`` (:class:`Siren` arguments), ``meta["config"]`` (:class:`InrConfig`)
            and ``meta["image_shape"]`` ``[C, H, W]``.
    """

    dataset: Dataset
    meta: dict[str, Any]

    def __post_init__(self) -> None:
        if self.meta.get("kind") not in _KINDS:
            raise ValueError(f"zoo metadata must have kind in {_KINDS}, got {self.meta.get('kind')!r}")
        self.check_architectures()

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    def __len__(self) -> int:
        return len(self.dataset)

    def _declared_shapes(self, spec_json: str | None) -> dict[str, tuple[int, ...]]:
        if self.kind == "inr":
            siren = self.meta["siren"]
            return siren_param_shapes(siren["hidden"], siren["in_features"], siren["out_features"])
        return _cnn_shapes(spec_json)

    def check_architectures(self) -> None:
        """Raise ``ValueError`` if any record's weights differ from its declared architecture."""
        columns = self.dataset.select_columns(["param_names", "param_shapes"]).to_dict()
        specs = self.dataset["spec"] if self.kind == "cnn" else [None] * len(self)
        for i, (names, shapes, spec) in enumerate(zip(columns["param_names"], columns["param_shapes"], specs)):
            check_param_shapes(dict(zip(names, shapes)), self._declared_shapes(spec), f"record {i}")

    def state_dict(self, i: int) -> dict[str, Tensor]:
        """Weights of record ``i``."""
        return record_state_dict(self.dataset[i])

    def module(self, i: int) -> nn.Module:
        """Record ``i`` as a plain module in eval mode: a :class:`Siren` or ``build_cnn(spec)``."""
        if self.kind == "inr":
            model: nn.Module = Siren(**self.meta["siren"])
        else:
            model = build_cnn(json.loads(self.dataset[i]["spec"]))
        model.load_state_dict(self.state_dict(i))
        return model.eval()

    def stacked_params(self) -> dict[str, Tensor]:
        """INR zoos: all weights stacked, state-dict key -> ``[N, *shape]``."""
        if self.kind != "inr":
            raise ValueError("stacked_params needs one shared architecture (an INR zoo); CNN zoos mix architectures")
        return stack_params(self.dataset)

    def render(self, indices: list[int] | None = None) -> Tensor:
        """INR zoos: the images ``[N, C, H, W]`` (on the [0, 1] scale) drawn by the SIRENs at ``indices``."""
        if self.kind != "inr":
            raise ValueError("render is for INR zoos")
        subset = self.dataset if indices is None else self.dataset.select(indices)
        params = list(stack_params(subset).values())
        _, height, width = self.meta["image_shape"]
        return render_sirens(params, height, width, InrConfig(**self.meta["config"]))

    def split(self, name: str) -> Zoo:
        """The records of split ``name`` (``"train"``, ``"val"``, ``"test"``, ...; empty if declared but unused)."""
        splits = self.dataset["split"]
        known = set(splits) | set(self.meta.get("split_fractions", {}))
        if name not in known:
            raise ValueError(f"zoo has no split {name!r}; it has {sorted(known)}")
        return Zoo(self.dataset.select([i for i, s in enumerate(splits) if s == name]), self.meta)

    def save(self, path: str | os.PathLike) -> None:
        """Write as a complete zoo folder (readable by :func:`load_zoo`)."""
        write_zoo_dataset(path, self.dataset, self.meta)


def load_zoo(path: str | os.PathLike, verify: bool = True) -> Zoo:
    """Load a complete zoo folder written by ``make_inr_zoo``, ``make_cnn_zoo`` or :meth:`Zoo.save`.

    Raises ``FileNotFoundError`` (no such folder, no manifest, missing shard) or ``ValueError``
    (partial zoo, corrupt files when ``verify``, weights that do not fit the declared architecture).
    """
    dataset, meta = read_zoo_dataset(path, verify)
    return Zoo(dataset, meta)
