"""Update rules: the learned part of a learned optimizer.

An update rule is *data plus a pure function* (as in learned_optimization): its meta-parameters
are the parameters of an ``nn.Module`` and its update is a pure function of (meta-parameters,
parameters, gradients, optimizer state, architecture context). :class:`UpdateRule` fixes that
interface; :func:`l2o.functional.learned_step` calls it, optionally with substituted
meta-parameters (``torch.func.functional_call``) so meta-training can differentiate through it or
perturb it. ``NeuralGraphOpt`` is a thin ``torch.optim.Optimizer`` shell over the same call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

__all__ = ["UpdateRule"]


class UpdateRule(nn.Module):
    """Base class of every update rule.

    Subclasses implement three methods:

    * :meth:`build_context` — once per architecture: whatever the rule precomputes from the
      parameter list (e.g. the neural graph and its index maps). ``None`` for rules without one.
    * :meth:`init_state` — the optimizer state for fresh parameters (a pytree of tensors whose
      leaves are all tensors, so it can be saved in a ``state_dict`` and vmapped). It is a dict
      whose per-parameter entries are lists with one item per parameter, in order; other entries
      are shared (e.g. a step counter). ``NeuralGraphOpt`` relies on this to leave the state of
      parameters without gradients untouched and to extend the state in ``add_param_group``.
    * :meth:`forward` — ``(params, grads, state, context) -> (updates, new_state)``. ``updates[i]``
      has the shape of ``params[i]``; the optimizer applies ``p <- p - lr * update``. It must not
      modify its inputs in place.

    :meth:`stream_updates` is the in-place variant that ``NeuralGraphOpt.step`` uses; rules that
    care about the step's memory override it (the default calls :meth:`forward`).
    """

    def build_context(
        self, params: Sequence[Tensor], model: nn.Module | None = None, example_inputs: tuple | dict | None = None
    ) -> Any:
        """Precompute per-architecture data for ``params`` (list of tensors, optimizer order);
        ``model`` (and ``example_inputs`` to trace it with, where it needs them) if known."""
        return None

    def init_state(self, params: Sequence[Tensor]) -> dict[str, Any]:
        raise NotImplementedError

    def context_for(
        self, params: Sequence[Tensor], model: nn.Module | None = None, example_inputs: tuple | dict | None = None
    ) -> Any:
        """:meth:`build_context`, passing ``example_inputs`` only when given: rules written before
        it existed take ``(params, model)``."""
        if example_inputs is None:
            return self.build_context(params, model)
        return self.build_context(params, model, example_inputs=example_inputs)

    def forward(
        self, params: list[Tensor], grads: list[Tensor], state: dict[str, Any], context: Any = None
    ) -> tuple[list[Tensor], dict[str, Any]]:
        raise NotImplementedError

    def stream_updates(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        state: dict[str, Any],
        context: Any,
        apply: Callable[[int, slice, Tensor], None],
    ) -> dict[str, Any]:
        """Like :meth:`forward`, without autograd, but each update goes to ``apply(i, rows, update)``
        as soon as it is computed, possibly in blocks of rows: ``update`` holds the flattened
        elements of ``params[i][rows]`` (``rows`` indexes dim 0; the whole tensor for a scalar).
        The statistics in ``state`` may be advanced in place; returns the new state. The updates
        are bit-identical to :meth:`forward`'s."""
        updates, new_state = self(params, grads, state, context)
        for i, update in enumerate(updates):
            apply(i, slice(None), update.reshape(-1))
        return new_state

    def fused_step(self, context: Any) -> Callable[..., dict[str, Any]] | None:
        """A compiled form of :meth:`stream_updates` for this context, or ``None`` (the default)
        if the rule has none. ``NeuralGraphOpt(compile=...)`` uses it when it exists; it is called
        as ``fused(params, grads, state, lr, weight_decay, frozen)`` (per-parameter lists) and
        returns the new state, with parameters and statistics updated in place."""
        return None

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (used by ``save_pretrained``): a copy of the
        ``_config`` dict a rule's constructor stores (empty when it stores none)."""
        return dict(getattr(self, "_config", {}))
