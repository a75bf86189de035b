"""Zoo folders on disk: Hugging Face ``datasets`` shards plus a manifest, written resumably.

Layout::

    zoo/
      manifest.json        kind, metadata, shard count; "complete": true only once every shard is written
      shards/shard-00000/  Dataset.save_to_disk of records 0 .. shard_size-1
      shards/shard-00001/  ...

Generation writes ``manifest.json`` (incomplete) first, then each shard into a temporary folder
that is renamed into place when fully written, so a shard folder is either complete or absent. A
rerun with the same metadata skips the shards that exist, and a rerun with different metadata is
refused. When all shards exist the manifest is rewritten with their row counts and file checksums
and ``"complete": true``. :func:`read_zoo_dataset` accepts only complete zoos whose files match.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, Features, concatenate_datasets, load_from_disk

__all__ = ["MANIFEST", "ShardWriter", "read_manifest", "read_zoo_dataset", "write_zoo_dataset"]

MANIFEST = "manifest.json"
_FORMAT = "l2o-zoo/1"


def _jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), to compare metadata."""
    return json.loads(json.dumps(value))


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _file_hashes(folder: Path, names: list[str] | None = None) -> dict[str, str]:
    """sha256 of the files ``names`` in ``folder`` (default: every file but ``datasets``' ``cache-*`` files)."""
    if names is None:
        names = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("cache-"))
    hashes = {}
    for name in names:
        file = folder / name
        if not file.is_file():
            hashes[name] = "missing"
            continue
        digest = hashlib.sha256()
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        hashes[name] = digest.hexdigest()
    return hashes


@contextmanager
def _quiet() -> Iterator[None]:
    """Hide ``datasets``' progress bars (one per shard saved) for the duration."""
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the zoo folder ``path``; ``FileNotFoundError``/``ValueError`` if absent or unreadable."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"zoo folder {str(folder)!r} does not exist")
    file = folder / MANIFEST
    if not file.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no {MANIFEST}: not a zoo folder")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file} is corrupt: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise ValueError(f"{file} is not an l2o zoo manifest (expected format {_FORMAT!r})")
    return manifest


class ShardWriter:
    """Writes the shards of one zoo folder, resuming a previous run with the same metadata.

    Args:
        path: the zoo folder (created if missing).
        meta: JSON-serialisable description of the zoo (kind, sources, configuration, seed, ...);
            it must contain ``"kind"``. A folder started with other metadata is refused.
        num_shards: how many shards the complete zoo has.
        features: the ``datasets.Features`` of every shard.
    """

    def __init__(self, path: str | os.PathLike, meta: Mapping[str, Any], num_shards: int, features: Features) -> None:
        if "kind" not in meta:
            raise ValueError("zoo metadata must name its 'kind'")
        self.folder, self.meta, self.num_shards, self.features = Path(path), _jsonable(meta), num_shards, features
        self.shards = self.folder / "shards"
        if (self.folder / MANIFEST).exists():
            old = read_manifest(self.folder)
            if old["meta"] != self.meta or old["num_shards"] != num_shards:
                changed = sorted(k for k in set(old["meta"]) | set(self.meta) if old["meta"].get(k) != self.meta.get(k))
                raise ValueError(f"{str(self.folder)!r} holds a different zoo (settings that differ: "
                                 f"{changed or ['num_shards']}); use another folder or the same settings")
        elif self.folder.exists() and any(self.folder.iterdir()):
            raise ValueError(f"{str(self.folder)!r} is not empty and is not a zoo folder")
        self.shards.mkdir(parents=True, exist_ok=True)
        for leftover in self.shards.glob("*.tmp"):  # from an interrupted write
            shutil.rmtree(leftover)
        if not (self.folder / MANIFEST).exists():
            _write_json(self.folder / MANIFEST, {"format": _FORMAT, "kind": self.meta["kind"], "complete": False,
                                                  "num_shards": num_shards, "meta": self.meta})

    def has_shard(self, index: int) -> bool:
        """Whether shard ``index`` was written by this or an earlier run."""
        return (self.shards / _shard_name(index)).is_dir()

    def write_shard(self, index: int, records: Dataset | Mapping[str, list]) -> None:
        """Write shard ``index`` from a dataset or column lists (atomically: its folder appears when complete)."""
        if not isinstance(records, Dataset):
            records = Dataset.from_dict(dict(records), features=self.features)
        tmp = self.shards / (_shard_name(index) + ".tmp")
        with _quiet():
            records.save_to_disk(str(tmp))
        os.replace(tmp, self.shards / _shard_name(index))

    def finish(self) -> None:
        """Mark the zoo complete: every shard must exist; records their row counts and checksums."""
        missing = [i for i in range(self.num_shards) if not self.has_shard(i)]
        if missing:
            raise ValueError(f"cannot finish {str(self.folder)!r}: shards {missing[:5]} are missing")
        shards = []
        for i in range(self.num_shards):
            folder = self.shards / _shard_name(i)
            shards.append({"name": _shard_name(i), "num_rows": len(load_from_disk(str(folder))),
                           "sha256": _file_hashes(folder)})
        _write_json(self.folder / MANIFEST, {
            "format": _FORMAT, "kind": self.meta["kind"], "complete": True, "num_shards": self.num_shards,
            "num_rows": sum(s["num_rows"] for s in shards), "meta": self.meta, "shards": shards,
        })


def read_zoo_dataset(path: str | os.PathLike, verify: bool = True) -> tuple[Dataset, dict[str, Any]]:
    """The records and metadata of a complete zoo folder.

    Raises ``FileNotFoundError`` for a missing folder, manifest or shard and ``ValueError`` for a
    partial zoo (generation not finished), a corrupt file (checksum mismatch when ``verify``), or a
    shard whose row count differs from the manifest.
    """
    folder = Path(path)
    manifest = read_manifest(folder)
    if not manifest.get("complete"):
        done = len([p for p in (folder / "shards").glob("shard-*") if not p.name.endswith(".tmp")])
        raise ValueError(f"zoo at {str(folder)!r} is partial ({done} of {manifest.get('num_shards')} shards "
                         "written): rerun the same generation command to finish it")
    if not manifest.get("shards"):
        raise ValueError(f"zoo at {str(folder)!r} lists no shards")
    parts = []
    for shard in manifest["shards"]:
        shard_dir = folder / "shards" / shard["name"]
        if not shard_dir.is_dir():
            raise FileNotFoundError(f"zoo at {str(folder)!r} lacks shard {shard['name']!r} listed in its manifest")
        if verify:
            hashes = _file_hashes(shard_dir, sorted(shard["sha256"]))
            if hashes != shard["sha256"]:
                bad = sorted(k for k in set(hashes) | set(shard["sha256"]) if hashes.get(k) != shard["sha256"].get(k))
                raise ValueError(f"shard {shard['name']!r} of {str(folder)!r} is corrupt: files {bad} differ "
                                 "from the manifest")
        try:
            part = load_from_disk(str(shard_dir))
        except Exception as err:  # datasets/pyarrow raise many types for damaged files
            raise ValueError(f"shard {shard['name']!r} of {str(folder)!r} cannot be read: {err}") from err
        if len(part) != shard["num_rows"]:
            raise ValueError(f"shard {shard['name']!r} of {str(folder)!r} has {len(part)} rows, "
                             f"manifest says {shard['num_rows']}")
        parts.append(part)
    dataset = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    return dataset, manifest["meta"]


def write_zoo_dataset(path: str | os.PathLike, dataset: Dataset, meta: Mapping[str, Any]) -> None:
    """Save an in-memory zoo ``dataset`` as a complete one-shard zoo folder."""
    writer = ShardWriter(path, meta, 1, dataset.features)
    writer.write_shard(0, dataset.flatten_indices())
    writer.finish()
