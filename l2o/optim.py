"""``NeuralGraphOpt``: a thin ``torch.optim.Optimizer`` over :func:`l2o.functional.learned_step_`
(the in-place form of :func:`l2o.functional.learned_step`, bit-identical to it).

**Rule state convention.** The optimizer treats the rule's state (``rule.init_state(params)``)
as a dict whose values are either *per-parameter* — a list with exactly one entry per parameter,
in optimizer order — or *shared* (anything else, e.g. the step counter or graph-level state).
It relies on this for two things:

* **Parameters without a gradient** (``p.grad is None``) are skipped: the rule is called on *all*
  parameters (so a graph rule still sees the whole network) with zeros in place of the missing
  gradients; afterwards those parameters and their per-parameter state entries are left exactly
  as they were, while shared state advances. If no parameter has a gradient, ``step`` does nothing.
* **add_param_group** keeps the per-parameter entries of the existing parameters, initialises
  the new ones, and keeps shared entries whose structure and shapes are unchanged.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from l2o.functional import learned_step_
from l2o.hub import load_rule
from l2o.rule import UpdateRule

__all__ = ["BASELINE_RULE", "DEFAULT_RULE", "NeuralGraphOpt"]

DEFAULT_RULE = "neural-graph-v7"
"""The rule used when ``rule=None``: a :class:`~l2o.stepsize_rule.StepSizeGraphRule`
(``l2o/pretrained/neural-graph-v7``) whose update is Prodigy's times a **learned schedule**, a
step size from the training time meta-trained by PES (recipe ``l2o/meta/configs/stepsize_pes.yaml``,
``--rule schedule-stepsize``), with its per-neuron step sizes at 1 (the ones meta-trained by the
same recipe on the graph did not beat Prodigy on validation tasks), and **Muon's direction** for
the weight matrices other than the output layer (``orthogonal=True``, :mod:`l2o.orthogonal`),
chosen on validation tasks; see the folder's README. ``neural-graph-v6`` is the same rule with
Prodigy's direction everywhere (a cheaper step on a CPU); ``neural-graph-v5`` (Prodigy alone),
``neural-graph-v4`` and the meta-trained :class:`~l2o.graph_rule.NeuralGraphRule`
``neural-graph-v3`` stay loadable; ``rule="neural-graph"`` gives that class untrained, which equals
``Adam(lr=1e-3)`` at ``lr=1``."""

BASELINE_RULE = "tensor-stepsize-v2"
"""The rule the default is compared with (the ``FF`` column of ``benchmarks/l2o_quality.py``): the
per-tensor twin without the graph (:class:`~l2o.stepsize_rule.StepSizeTensorRule`: Prodigy with one
step size per tensor from per-tensor statistics and the time), meta-trained by the same recipe with
the same compute, with the same ``orthogonal=True`` option (on every weight matrix: without the
graph it cannot tell the output layer). ``tensor-stepsize-v1`` is it without the option; ``ff-v3``,
the per-parameter MLP rule (:class:`~l2o.ff.FFRule`) trained with ``neural-graph-v3``'s recipe,
stays loadable."""


def _finite_eager(tensors: list[Tensor]) -> Any:
    """Whether every element of ``tensors`` is finite (a 0-d bool tensor); the eager check."""
    return torch.stack([torch.isfinite(t).all() for t in tensors]).all()


def _is_per_param(value: Any, n: int) -> bool:
    return isinstance(value, list) and len(value) == n


def _is_instance(obj: Any, module: str, name: str) -> bool:
    """``isinstance(obj, module.name)`` without importing ``module``: an instance can only exist once
    the module is loaded, and importing ``torch._dynamo`` or DTensor costs seconds."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(obj, getattr(loaded, name))


def _unwrap(model: nn.Module | None) -> nn.Module | None:
    """The user's module inside ``torch.compile`` (``_orig_mod``) and DDP / DataParallel (``module``)
    wrappers, so that parameter names and the rule's context do not depend on the wrapping."""
    while True:
        if _is_instance(model, "torch._dynamo.eval_frame", "OptimizedModule"):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def _is_sharded(p: Tensor) -> bool:
    """Whether ``p`` is an FSDP flat parameter or a view into one (FSDP1) or a DTensor (FSDP2, tensor parallel)."""
    return getattr(p, "_fsdp_flattened", False) or _is_instance(p, "torch.distributed.tensor", "DTensor")


def _built_by_zero(optimizer: Optimizer) -> bool:
    """Whether ``optimizer`` is being constructed by a ``ZeroRedundancyOptimizer`` (on one rank's shard)."""
    zero = sys.modules.get("torch.distributed.optim.zero_redundancy_optimizer")
    frame = sys._getframe(1) if zero is not None else None
    while frame is not None and frame.f_locals.get("self") is optimizer:  # skip our own (and subclass) __init__
        frame = frame.f_back
    return frame is not None and isinstance(frame.f_locals.get("self"), zero.ZeroRedundancyOptimizer)


def _same_structure(a: Any, b: Any) -> bool:
    """Whether two pytrees have the same structure and leaf shapes and dtypes."""
    (leaves_a, spec_a), (leaves_b, spec_b) = tree_flatten(a), tree_flatten(b)
    return spec_a == spec_b and all(
        not isinstance(x, Tensor) or (isinstance(y, Tensor) and x.shape == y.shape and x.dtype == y.dtype)
        for x, y in zip(leaves_a, leaves_b)
    )


class NeuralGraphOpt(Optimizer):
    """A learned optimizer: ``p <- p - lr * (rule update + weight_decay * p)`` per parameter.

    Args:
        params: parameters or parameter groups, as for any ``torch.optim.Optimizer`` (``(name,
            tensor)`` pairs are accepted and name parameters in error messages).
        lr: multiplies the rule's update (1.0 = the step the rule was trained for; with the
            default rule, the step of ``Adam(lr=1e-3)``). Schedulers change it per group.
        weight_decay: decoupled weight decay per group.
        rule: an :class:`~l2o.rule.UpdateRule`, a registered name (``"ff"``), a saved rule folder,
            or a shipped/Hub rule name (see :func:`l2o.hub.load_rule`); ``None`` = :data:`DEFAULT_RULE`.
            The rule module is moved to the parameters' device.
        model: the module the parameters belong to, passed to ``rule.build_context`` and used to
            name parameters in errors and state dicts. ``torch.compile`` and DDP / DataParallel
            wrappers are unwrapped (:attr:`model` is the inner module).
        example_inputs: inputs to run ``model`` on when ``torch.fx`` cannot trace it and
            ``torch.export`` must (a tuple of positional arguments or a dict of keyword arguments;
            see :meth:`encoders.NeuralGraph.from_module`). Hugging Face models need none.
        maximize: ascend instead of descend (per group).
        compile: ``"auto"`` (default), ``True`` or ``False``: whether steps run the rule's fused,
            ``torch.compile``-d form (:meth:`~l2o.rule.UpdateRule.fused_step`; for the default rule
            :mod:`l2o.fused`, a few times faster) instead of the reference path. The first fused step
            compiles (seconds to a minute per new parameter shape; inductor caches the result on
            disk). ``"auto"`` fuses where the rule has a fused form and ``torch.compile`` works here,
            and otherwise, or if compiling fails, warns once and runs the reference path;
            ``L2O_COMPILE=0`` in the environment turns ``"auto"`` off. ``True`` raises instead of
            falling back.

    ``rule.build_context`` is called once over *all* parameters (all groups, in order), and again
    when a group is added. The rule's meta-parameters are not part of :meth:`state_dict`; the rule's
    class and config and the parameter shapes are, and :meth:`load_state_dict` checks them.

    Attributes:
        rule: the update rule. context: ``rule.build_context(params, model)``.
        rule_state: the rule's state over all parameters (see the module docstring).
        skipped_steps: number of steps skipped because of non-finite gradients.

    Raises (at construction, :meth:`add_param_group` or :meth:`step`, naming the parameter):
        TypeError: non-floating-point or complex parameters; sparse, complex or integer gradients;
            sharded parameters (FSDP, DTensor) or construction by ``ZeroRedundancyOptimizer``: the
            rule needs every parameter whole and all of them on each rank (use DDP).
        ValueError: parameters on several devices, a parameter listed twice, negative lr or weight
            decay, ``compile`` not one of ``"auto"``, ``True``, ``False``.
        RuntimeError: ``compile=True`` where the rule has no fused form or ``torch.compile`` cannot
            run (no C++ compiler, Triton or dynamo), or the compilation fails.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]],
        lr: float | Tensor = 1.0,
        weight_decay: float = 0.0,
        *,
        rule: UpdateRule | str | os.PathLike | None = None,
        model: nn.Module | None = None,
        example_inputs: tuple | dict | None = None,
        maximize: bool = False,
        compile: bool | str = "auto",
    ) -> None:
        if compile not in ("auto", True, False) or isinstance(compile, int) and not isinstance(compile, bool):
            raise ValueError(f'compile must be "auto", True or False, got {compile!r}')
        if _built_by_zero(self):
            raise TypeError(
                "NeuralGraphOpt cannot run inside ZeroRedundancyOptimizer: each rank would see only its shard of "
                "the parameters and the rule state would be dropped from consolidated state dicts; use DDP"
            )
        self.rule = load_rule(DEFAULT_RULE if rule is None else rule)
        self.model = _unwrap(model)
        self.example_inputs = example_inputs
        self.skipped_steps = 0
        self._warned_nonfinite = False
        self.compile = compile
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "maximize": maximize})
        self._setup(None)

    # ----------------------------------------------------------------------------- parameters
    def _flat_params(self) -> tuple[list[Tensor], list[str | None], list[str]]:
        """All parameters in optimizer order, their names (``None`` if unknown) and labels for errors."""
        model_names = {id(p): n for n, p in self.model.named_parameters()} if self.model is not None else {}
        params, names, labels = [], [], []
        for g, group in enumerate(self.param_groups):
            for j, p in enumerate(group["params"]):
                name = group["param_names"][j] if "param_names" in group else model_names.get(id(p))
                label = f"{name!r}" if name is not None else f"#{len(params)} (group {g})"
                params.append(p)
                names.append(name)
                labels.append(f"parameter {label} of shape {list(p.shape)}")
        return params, names, labels

    def _setup(self, previous: tuple[dict[str, Any], int] | None) -> None:
        """Check the parameters, build the context and the state (carrying ``previous`` over)."""
        params, _, labels = self._flat_params()
        seen: dict[int, str] = {}
        for p, name in zip(params, labels):
            if p.is_complex() or not p.is_floating_point():
                raise TypeError(f"NeuralGraphOpt needs real floating-point parameters; {name} is {p.dtype}")
            if _is_sharded(p):
                raise TypeError(
                    f"NeuralGraphOpt needs every parameter whole, but {name} is sharded (FSDP flat parameter or "
                    "DTensor); use DDP, which keeps full replicas (see docs/integrations.md)"
                )
            if id(p) in seen:
                raise ValueError(f"{name} is listed twice (also as {seen[id(p)]})")
            seen[id(p)] = name
            if p.device != params[0].device:
                raise ValueError(
                    f"all parameters must be on one device: {labels[0]} is on {params[0].device}, {name} on {p.device}"
                )
        for group in self.param_groups:
            for key in ("lr", "weight_decay"):
                if not isinstance(group[key], Tensor) and group[key] < 0:
                    raise ValueError(f"{key} must be >= 0, got {group[key]}")
        if params:
            self.rule.to(params[0].device)
        context = self.rule.context_for(params, self.model, self.example_inputs)
        state = self.rule.init_state(params)
        if previous is not None:
            old, n_old = previous
            for key, fresh in state.items():
                if _is_per_param(fresh, len(params)) and _is_per_param(old.get(key), n_old):
                    state[key] = old[key] + fresh[n_old:]
                elif key in old and _same_structure(old[key], fresh):
                    state[key] = old[key]
        self.context, self.rule_state, self._labels = context, state, labels
        # made at the first step (compiling costs seconds), with a compiled check of the gradients
        self._fused, self._fused_checked, self._finite = None, False, None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (as in torch); rebuilds the context over all parameters and extends the state."""
        super().add_param_group(param_group)
        if not hasattr(self, "rule_state"):  # still inside __init__, which sets up once at the end
            return
        try:
            self._setup((self.rule_state, len(self._labels)))
        except Exception:
            self.param_groups.pop()
            raise

    # --------------------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimizer step; ``closure`` (re-evaluates the model, returns the loss) as in torch.

        Returns the closure's loss (or ``None``). Skips the whole step, leaving parameters and
        state untouched, if any gradient is NaN/Inf (counted in :attr:`skipped_steps`, warned once).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params, grads, lrs, wds, has_grad = [], [], [], [], []
        for group in self.param_groups:
            for p in group["params"]:
                g = p.grad
                name = self._labels[len(params)]
                if g is not None and g.layout != torch.strided:
                    raise TypeError(f"NeuralGraphOpt does not support sparse gradients ({name})")
                if g is not None and (g.is_complex() or not g.is_floating_point()):
                    raise TypeError(f"NeuralGraphOpt needs real floating-point gradients; {name} has {g.dtype}")
                has_grad.append(g is not None)
                g = torch.zeros_like(p) if g is None else g
                params.append(p)
                grads.append(-g if group["maximize"] else g)
                lrs.append(group["lr"])
                wds.append(group["weight_decay"])
        if not any(has_grad):
            return loss
        fused = self._fused_step(params)
        if not self._all_finite([g for g, h in zip(grads, has_grad) if h]):
            self._skip_step(grads, has_grad)
            return loss
        # parameters without a gradient keep their state: saved here, restored after the in-place step
        kept = {} if all(has_grad) else {
            key: [tree_map(torch.clone, v) if not h else None for v, h in zip(value, has_grad)]
            for key, value in self.rule_state.items() if _is_per_param(value, len(params))
        }
        frozen = [not h for h in has_grad]
        if fused is not None:
            new_state = self._run_fused(fused, params, grads, lrs, wds, frozen)
        if fused is None or new_state is None:
            new_state = learned_step_(self.rule, params, grads, self.rule_state, self.context, lr=lrs,
                                      weight_decay=wds, frozen=frozen)
        for key, saved in kept.items():
            new_state[key] = [v if old is None else old for v, old in zip(new_state[key], saved)]
        self.rule_state = new_state
        return loss

    # ---------------------------------------------------------------------------- fused step
    def _all_finite(self, grads: list[Tensor]) -> bool:
        """Whether every gradient element is finite; compiled along with the fused step (one pass
        over the gradients instead of four: 1 ms instead of 20 on a 4M-element matrix)."""
        if self._fused is not None and self._finite is None:
            from l2o.fused import compiled_all_finite

            self._finite = compiled_all_finite()
        try:
            return bool((self._finite or _finite_eager)(grads))
        except Exception:  # noqa: BLE001 - a failure to compile the check costs speed, never a step
            self._finite = _finite_eager
            return bool(_finite_eager(grads))

    def _fused_step(self, params: list[Tensor]) -> Callable[..., dict[str, Any]] | None:
        """The rule's fused step if ``compile`` asks for it and it can run here (made once)."""
        if self._fused_checked:
            return self._fused
        self._fused_checked = True
        if self.compile is False or (self.compile == "auto" and os.environ.get("L2O_COMPILE") == "0"):
            return None
        if type(self.rule).fused_step is UpdateRule.fused_step:
            if self.compile is True:
                raise RuntimeError(f"compile=True, but {type(self.rule).__name__} has no fused step")
            return None
        from l2o.fused import compile_unavailable

        reason = compile_unavailable(params[0].device) if params else "there are no parameters"
        bad = next((label for p, label in zip(params, self._labels) if not p.is_contiguous()), None)
        reason = reason or (f"{bad} is not contiguous" if bad else None)
        if reason is not None:
            self._fall_back(reason)
            return None
        self._fused = self.rule.fused_step(self.context)
        self._fused_first = True
        return self._fused

    def _run_fused(self, fused: Callable[..., dict[str, Any]], params: list[Tensor], grads: list[Tensor],
                   lrs: list[Any], wds: list[Any], frozen: list[bool]) -> dict[str, Any] | None:
        """One fused step; ``None`` if the first one failed to compile under ``compile="auto"``
        (parameters and state are then restored, and the caller runs the reference step). The
        first step holds a copy of the parameters and statistics for that, the others none."""
        if not self._fused_first:
            return fused(params, grads, self.rule_state, lrs, wds, frozen)
        saved = [p.detach().clone() for p in params], tree_map(torch.clone, self.rule_state)
        try:
            new_state = fused(params, grads, self.rule_state, lrs, wds, frozen)
        except Exception as err:
            for p, old in zip(params, saved[0]):
                p.detach().copy_(old)
            for now, old in zip(tree_flatten(self.rule_state)[0], tree_flatten(saved[1])[0]):
                if isinstance(now, Tensor):
                    now.copy_(old)
            self._fused = None
            if self.compile is True:
                raise RuntimeError(f"the fused step of {type(self.rule).__name__} failed to compile: {err}") from err
            first_line = str(err).splitlines()[0] if str(err) else ""
            self._fall_back(f"compiling it failed ({type(err).__name__}: {first_line})")
            return None
        self._fused_first = False
        return new_state

    def _fall_back(self, reason: str) -> None:
        if self.compile is True:
            raise RuntimeError(f"compile=True, but the fused step cannot run: {reason}")
        warnings.warn(f"NeuralGraphOpt: using the reference step, not the fused one: {reason}", RuntimeWarning,
                      stacklevel=4)

    def _skip_step(self, grads: list[Tensor], has_grad: list[bool]) -> None:
        self.skipped_steps += 1
        if not self._warned_nonfinite:
            bad = next(n for n, g, h in zip(self._labels, grads, has_grad) if h and not torch.isfinite(g).all())
            warnings.warn(
                f"NeuralGraphOpt: non-finite gradient (first: {bad}); skipping this step for all "
                "parameters (counted in optimizer.skipped_steps; this warning is shown once)",
                RuntimeWarning,
                stacklevel=3,
            )
            self._warned_nonfinite = True

    # --------------------------------------------------------------------------- state dict
    def _fingerprint(self) -> dict[str, Any]:
        rule = {"class": type(self.rule).__name__, "config": json.loads(json.dumps(self.rule.config()))}
        params, names, _ = self._flat_params()
        return {"rule": rule, "params": [{"name": n, "shape": list(p.shape)} for n, p in zip(names, params)]}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-identically: ``{"state": {"rule_state", "skipped_steps"},
        "param_groups": [...], "rule": {class, config}, "params": [{name, shape}]}``; names (from
        ``model=`` or ``(name, tensor)`` pairs) are ``None`` when unknown.

        Group ``params`` are indices, as in torch. As in torch, the tensors are the optimizer's own,
        which each step advances in place: save the dict (or ``copy.deepcopy`` it) to keep a snapshot.
        """
        groups, start = [], 0
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = list(range(start, start + len(group["params"])))
            start += len(group["params"])
            groups.append(packed)
        state = {"rule_state": self.rule_state, "skipped_steps": self.skipped_steps}
        return {"state": state, "param_groups": groups, **self._fingerprint()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (tensors are copied, onto the devices of the current state).

        Raises:
            ValueError: it is not a NeuralGraphOpt state dict, or was made with a different rule
                (class or config), different parameters (count, shapes, or names where both are
                known) or different groups.
        """
        missing = {"state", "param_groups", "rule", "params"} - set(state_dict)
        if missing:
            raise ValueError(f"not a NeuralGraphOpt state dict: missing {sorted(missing)}")
        mine = self._fingerprint()
        if state_dict["rule"] != mine["rule"]:
            raise ValueError(f"state dict was made with rule {state_dict['rule']}, this optimizer uses {mine['rule']}")
        theirs = state_dict["params"]
        if [p["shape"] for p in theirs] != [p["shape"] for p in mine["params"]]:
            raise ValueError(
                f"state dict was made for a different model: parameter shapes "
                f"{[p['shape'] for p in theirs]} vs {[p['shape'] for p in mine['params']]}"
            )
        clashes = [(a["name"], b["name"]) for a, b in zip(theirs, mine["params"]) if None not in (a["name"], b["name"])]
        if any(a != b for a, b in clashes):
            raise ValueError(f"state dict was made for different parameters (saved name, name here): {clashes}")
        saved_groups = state_dict["param_groups"]
        if [len(g["params"]) for g in saved_groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("state dict has different parameter groups (number or sizes)")
        rule_state = state_dict["state"]["rule_state"]
        if not _same_structure(rule_state, self.rule_state):
            raise ValueError("the rule state in the state dict does not match this rule and these parameters")
        leaves, spec = tree_flatten(rule_state)
        current = tree_flatten(self.rule_state)[0]
        self.rule_state = tree_unflatten(
            [x.to(c.device, copy=True) if isinstance(x, Tensor) else x for x, c in zip(leaves, current)], spec
        )
        for group, saved in zip(self.param_groups, saved_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
        self.skipped_steps = int(state_dict["state"]["skipped_steps"])

    def __getstate__(self) -> dict[str, Any]:
        """Pickling / ``copy.deepcopy`` keep the rule, context and state (torch's base drops them);
        the fused step is made again at the copy's first step."""
        return dict(self.__dict__, _fused=None, _fused_checked=False, _finite=None)
