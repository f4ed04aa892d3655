"""Shards: one long job cut into ``N`` independent, idempotent slices, merged afterwards.

``--shard I/N`` (API ``shard=(i, n)``, ``0 <= i < n``: the numbering of a SLURM array
``--array=0-{N-1}``) selects the ``i``-th slice of exactly the work the single run would do, after
``max_ncells``, filters and sorting. Slices are contiguous and balanced by cost (token count, or
Σ L² where attention dominates), so that merging the parts in shard order gives the single run's
output, and no shard waits on one that got the long cells.

Every shard of a run is given the same output path ``X``; shard ``i`` writes its part under
``X.shards/`` and, once the part is complete, a small ``shard-I-of-N.done.json`` (kind of job,
fingerprint of the run's settings and inputs, whatever the merge needs). A rerun of a finished
shard finds the marker and does nothing. ``geneformer merge X`` (:func:`geneformer.shards.merge`)
checks that every marker is present and from one run, naming the missing shards otherwise, and
writes ``X`` as the single run would have.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._atomic import json_default, write_json
from ._errors import GeneformerError, OptionError

SHARDS_SUFFIX = ".shards"
DONE_SUFFIX = ".done.json"
_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


class ShardError(GeneformerError, ValueError):
    """Shards that cannot be merged: missing, incomplete, or from different runs."""


@dataclass(frozen=True)
class Shard:
    """Slice ``index`` of ``count`` (0-based)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise OptionError(
                f"--shard {self.index}/{self.count}: the shard index must be in 0..{max(self.count - 1, 0)} "
                "(shards are numbered from 0, as a SLURM array --array=0-{N-1})."
            )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def label(self) -> str:
        """File-name form, e.g. ``shard-00003-of-00010``."""
        return f"shard-{self.index:05d}-of-{self.count:05d}"

    @property
    def is_whole(self) -> bool:
        return self.count == 1


def parse_shard(value: Any) -> Shard | None:
    """``"I/N"``, ``(i, n)`` or a :class:`Shard` as a :class:`Shard`; None stays None."""
    if value is None or isinstance(value, Shard):
        return value
    if isinstance(value, str):
        m = _SHARD_RE.match(value)
        if not m:
            raise OptionError(f"--shard {value!r}: expected I/N, e.g. --shard 0/8 (shards are numbered from 0).")
        return Shard(int(m.group(1)), int(m.group(2)))
    try:
        i, n = value
        return Shard(int(i), int(n))
    except (TypeError, ValueError):
        raise OptionError(f"shard={value!r}: expected (i, n) or 'I/N'.") from None


def attention_cost(lengths: np.ndarray) -> np.ndarray:
    """Cost of a forward pass per cell: Σ L² (attention) plus L (everything else), as float."""
    lengths = np.asarray(lengths, dtype=np.float64)
    return lengths * lengths + lengths


def balanced_bounds(costs: Sequence[float] | np.ndarray, n: int) -> list[tuple[int, int]]:
    """``n`` contiguous ``(start, stop)`` slices of ``range(len(costs))`` of nearly equal total cost.

    Deterministic; every item belongs to exactly one slice; slices may be empty when there are
    fewer items than slices.
    """
    costs = np.asarray(costs, dtype=np.float64)
    if n < 1:
        raise OptionError(f"number of shards must be at least 1, got {n}")
    if costs.size == 0:
        return [(0, 0)] * n
    cum = np.cumsum(np.maximum(costs, 0.0))
    total = cum[-1]
    if total <= 0:
        cum = np.arange(1, costs.size + 1, dtype=np.float64)
        total = cum[-1]
    # slice k ends after the first item whose running cost reaches (k+1)/n of the total
    targets = total * np.arange(1, n) / n
    cuts = np.searchsorted(cum, targets, side="left") + 1
    cuts = np.minimum(cuts, costs.size)
    edges = np.concatenate([[0], np.maximum.accumulate(cuts), [costs.size]]).astype(int)
    return [(int(edges[k]), int(edges[k + 1])) for k in range(n)]


def shard_bounds(costs: Sequence[float] | np.ndarray, shard: Shard | None) -> tuple[int, int]:
    """The ``(start, stop)`` of ``shard``'s slice of the items (everything when ``shard`` is None)."""
    n_items = len(costs)
    if shard is None or shard.is_whole:
        return 0, n_items
    return balanced_bounds(costs, shard.count)[shard.index]


def assign_balanced(costs: Sequence[float] | np.ndarray, n: int) -> list[np.ndarray]:
    """Items (e.g. batches) dealt to ``n`` workers, largest first to the least loaded (LPT).

    Each worker's indices come back sorted; deterministic (ties go to the lower worker).
    """
    costs = np.asarray(costs, dtype=np.float64)
    loads = np.zeros(n)
    owned: list[list[int]] = [[] for _ in range(n)]
    for i in np.argsort(-costs, kind="stable"):
        w = int(np.argmin(loads))
        owned[w].append(int(i))
        loads[w] += costs[i]
    return [np.array(sorted(o), dtype=np.int64) for o in owned]


# ---- what identifies a run ------------------------------------------------------------------------
def fingerprint(**parts: Any) -> str:
    """A stable hash of a run's settings and inputs (JSON-able values and byte strings): the same in
    every shard and process of one run, different when anything that decides the result differs."""
    h = hashlib.sha256()
    for name in sorted(parts):
        value = parts[name]
        h.update(name.encode())
        if isinstance(value, (bytes, bytearray)):
            h.update(value)
        else:
            h.update(json.dumps(value, sort_keys=True, default=json_default).encode())
    return h.hexdigest()[:32]


def model_digest(model: Any) -> bytes:
    """A cheap identity of a model's weights: a strided sample of every parameter (not the whole
    model), the same on any device."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 2048)
        h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.digest()


# ---- parts on disk ---------------------------------------------------------------------------------
def shards_dir(output: str | os.PathLike) -> Path:
    """The folder that holds the parts of ``output`` (``X.shards`` beside ``X``)."""
    output = Path(output)
    return output.with_name(output.name + SHARDS_SUFFIX)


def shard_part(output: str | os.PathLike, shard: Shard, suffix: str = "") -> Path:
    """Where ``shard`` writes its part of ``output`` (a file or folder; ``suffix`` e.g. ``.parquet``)."""
    return shards_dir(output) / f"{shard.label}{suffix}"


def _done_path(output: str | os.PathLike, shard: Shard) -> Path:
    return shards_dir(output) / f"{shard.label}{DONE_SUFFIX}"


def mark_shard_done(output: str | os.PathLike, shard: Shard, kind: str, fingerprint: str, **meta: Any) -> Path:
    """Record that ``shard``'s part of ``output`` is complete (call after the part is written)."""
    record = {"kind": kind, "shard": [shard.index, shard.count], "fingerprint": fingerprint, **meta}
    return write_json(_done_path(output, shard), record)


def shard_record(output: str | os.PathLike, shard: Shard) -> dict | None:
    """The completion record of ``shard`` (None when the shard has not finished)."""
    path = _done_path(output, shard)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # a damaged marker counts as not finished: the shard reruns


def shard_done(output: str | os.PathLike, shard: Shard, fingerprint: str) -> bool:
    """True when ``shard`` finished with these settings (a rerun then does nothing)."""
    record = shard_record(output, shard)
    if record is None:
        return False
    if record.get("fingerprint") != fingerprint:
        raise ShardError(
            f"{_done_path(output, shard)} is shard {shard} of a different run (other inputs or settings). "
            f"Use another output path, or pass --overwrite to redo this shard."
        )
    return True


def completed_shards(output: str | os.PathLike) -> tuple[str, int, list[dict]]:
    """Check that every shard of ``output`` finished, with one kind and fingerprint.

    Returns ``(kind, count, records)`` with the records in shard order; raises :class:`ShardError`
    naming the missing shards (and the command to run them) otherwise.
    """
    folder = shards_dir(output)
    records = []
    for path in sorted(folder.glob(f"shard-*{DONE_SUFFIX}")) if folder.is_dir() else []:
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    if not records:
        raise ShardError(f"no finished shard of {output} in {folder}: run the job with --shard I/N "
                         f"and the same output first.")
    kinds = {r.get("kind") for r in records}
    counts = {int(r["shard"][1]) for r in records}
    prints = {r.get("fingerprint") for r in records}
    if len(kinds) > 1 or len(counts) > 1 or len(prints) > 1:
        raise ShardError(f"{folder} holds shards of different runs (kinds {sorted(map(str, kinds))}, "
                         f"shard counts {sorted(counts)}); remove the stale ones and rerun them.")
    count = counts.pop()
    by_index = {int(r["shard"][0]): r for r in records}
    missing = [i for i in range(count) if i not in by_index]
    if missing:
        shown = ", ".join(f"{i}/{count}" for i in missing[:20]) + (" ..." if len(missing) > 20 else "")
        raise ShardError(f"{len(missing)} of {count} shards of {output} have not finished: {shown}. "
                         f"Run them with --shard I/N (same output), then merge again.")
    return kinds.pop(), count, [by_index[i] for i in range(count)]

