"""Saving, loading and naming update rules: safetensors weights + a small JSON config.

A saved rule is a folder with two files:

* ``config.json`` — ``{"rule_class": "FFRule", "config": {...rule.config()...}, "format": 1}``;
* ``model.safetensors`` — ``rule.state_dict()`` (meta-parameters and buffers).

Loading reads JSON and safetensors only (never unpickles), builds the class named in the config
from the registry (:func:`register_rule`) and loads the weights strictly. Every failure names the
file. Hub model repositories hold the same two files (the names ``huggingface_hub``'s
``PyTorchModelHubMixin`` uses), so :func:`push_to_hub` and Hub ids in :func:`from_pretrained` work.
The mixin itself is not used: it falls back to pickles, loads non-strictly, prints, and cannot
pick the class from the config.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from l2o.rule import UpdateRule

__all__ = ["RULES", "from_pretrained", "load_rule", "push_to_hub", "register_rule", "save_pretrained"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
"""Folder of the rules shipped with l2o: ``pretrained/<name>/{config.json,model.safetensors}``."""

RULES: dict[str, type[UpdateRule]] = {}
"""Registered rule classes by class name and by alias (e.g. ``"FFRule"`` and ``"ff"``)."""


def register_rule(alias: str | None = None) -> Callable[[type[UpdateRule]], type[UpdateRule]]:
    """Class decorator: register an :class:`UpdateRule` subclass under its class name (the name
    saved in ``config.json``) and optionally a short ``alias`` usable as ``rule="alias"``."""

    def register(cls: type[UpdateRule]) -> type[UpdateRule]:
        for name in (cls.__name__, alias):
            if name is not None and RULES.get(name, cls) is not cls:
                raise ValueError(f"rule name {name!r} is already registered to {RULES[name].__qualname__}")
            if name is not None:
                RULES[name] = cls
        return cls

    return register


def save_pretrained(rule: UpdateRule, directory: str | os.PathLike) -> Path:
    """Write ``rule`` to ``directory`` (created if needed) as ``config.json`` + ``model.safetensors``.

    The rule's class must be registered under its own name. Returns the folder.
    """
    name = type(rule).__name__
    if RULES.get(name) is not type(rule):
        raise ValueError(f"{type(rule).__qualname__} is not registered; decorate it with @l2o.hub.register_rule()")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"rule_class": name, "config": rule.config(), "format": FORMAT_VERSION}
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_model(rule, str(folder / WEIGHTS_NAME), metadata={"format": "pt", "rule_class": name})
    return folder


def _read_config(path: Path) -> tuple[type[UpdateRule], dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"rule config not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict) or "rule_class" not in data:
        raise ValueError(f"{path} must hold an object with 'rule_class' and a 'config' object")
    if data.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} has format {data.get('format')!r}; this l2o reads format {FORMAT_VERSION}")
    if data["rule_class"] not in RULES:
        raise ValueError(f"{path} names rule class {data['rule_class']!r}, not one of {sorted(RULES)}")
    return RULES[data["rule_class"]], data["config"]


def _load_folder(folder: Path) -> UpdateRule:
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    cls, config = _read_config(config_path)
    try:
        rule = cls(**config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{config_path}: cannot build {cls.__name__}(**config): {err}") from err
    if not weights_path.is_file():
        raise FileNotFoundError(f"rule weights not found: {weights_path}")
    try:
        load_model(rule, str(weights_path), strict=True)
    except (SafetensorError, RuntimeError, OSError) as err:
        raise ValueError(f"{weights_path} is corrupt or does not match {cls.__name__} {config}: {err}") from err
    return rule.eval()


def _download(repo_id: str, **hub_kwargs: Any) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        paths = [hf_hub_download(repo_id, name, **hub_kwargs) for name in (CONFIG_NAME, WEIGHTS_NAME)]
    except Exception as err:  # the hub raises many types (offline, 404, validation)
        raise FileNotFoundError(
            f"{repo_id!r} is not a folder, a registered rule name {sorted(RULES)}, a shipped rule in "
            f"{PRETRAINED_DIR}, nor a loadable Hugging Face Hub repository: {err}"
        ) from err
    return Path(paths[0]).parent


def from_pretrained(name_or_path: str | os.PathLike, **hub_kwargs: Any) -> UpdateRule:
    """Load a saved rule from a folder, a shipped rule name or a Hub repository id.

    Lookup order: an existing folder; ``l2o/pretrained/<name>``; a Hub repo id (downloaded with
    ``huggingface_hub.hf_hub_download(**hub_kwargs)``, e.g. ``revision=``). Paths that look local
    (absolute, or starting with ``.`` or ``~``) never reach the network.

    Raises:
        FileNotFoundError: nothing found (the message names what was tried).
        ValueError: a file is corrupt or does not match its config (the message names it).
    """
    spec = str(name_or_path)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_folder(path)
    if (PRETRAINED_DIR / spec).is_dir():
        return _load_folder(PRETRAINED_DIR / spec)
    if path.is_absolute() or spec.startswith((".", "~")) or isinstance(name_or_path, os.PathLike):
        raise FileNotFoundError(f"rule folder not found: {path}")
    return _load_folder(_download(spec, **hub_kwargs))


def load_rule(spec: UpdateRule | str | os.PathLike) -> UpdateRule:
    """Resolve the ``rule=`` argument of the optimizer: an :class:`UpdateRule` is returned as is;
    a registered name (``"ff"``, ``"FFRule"``) builds that class with its documented defaults;
    anything else goes to :func:`from_pretrained`."""
    if isinstance(spec, UpdateRule):
        return spec
    if isinstance(spec, str) and spec in RULES:
        return RULES[spec]()
    if isinstance(spec, (str, os.PathLike)):
        return from_pretrained(spec)
    raise TypeError(f"rule must be an UpdateRule, a registered name or a path, got {type(spec).__name__}")


def push_to_hub(rule: UpdateRule, repo_id: str, **upload_kwargs: Any) -> str:
    """Upload ``rule`` to the Hugging Face Hub model repository ``repo_id`` (created if needed).

    ``upload_kwargs`` go to ``HfApi.upload_folder`` (e.g. ``commit_message``). Returns the commit URL.
    """
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(rule, tmp)
        return str(api.upload_folder(repo_id=repo_id, folder_path=tmp, **upload_kwargs))
