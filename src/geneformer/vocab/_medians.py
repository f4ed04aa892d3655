"""Corpus statistics for new vocabularies: per-gene non-zero medians and detection counts.

The gene median of a corpus (used to scale counts before ranking) is the median, over the cells in
which a gene is detected, of ``count / n_counts * 10,000``. :class:`GeneDigests` accumulates these
values chunk by chunk in a mergeable per-gene sketch: exact (every value kept, medians computed
with one sort) while the corpus is small, otherwise a t-digest per gene (``fastdigest``).
:func:`estimate_gene_medians` streams any number of input files through it, optionally in worker
processes, and :func:`build_vocab` / :func:`write_vocab` turn the medians into a vocabulary in the
published pickle layout and as JSON.
"""

from __future__ import annotations

import io
import logging
import math
import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from .._constants import CLS, EOS, MASK, PAD, TARGET_SUM
from .._utils import InputFileError, write_pickle
from ..io import CellReader, open_reader
from ._vocab import GeneVocab

logger = logging.getLogger(__name__)

#: In automatic mode, sketches stay exact until this many non-zero values are held (~12 bytes each).
DEFAULT_EXACT_LIMIT = 20_000_000
#: t-digest size per gene: more centroids, closer medians and more memory (16 bytes per centroid).
DEFAULT_MAX_CENTROIDS = 500
#: In t-digest mode, values are buffered and fed to the digests in batches of about this many.
DEFAULT_FLUSH_VALUES = 4_000_000
_SAVE_FORMAT = "geneformer-gene-digests-1"


def _new_digest(max_centroids: int, values: np.ndarray | None = None):
    from fastdigest import TDigest

    if values is None:
        return TDigest(max_centroids=max_centroids)
    return TDigest.from_values(values, max_centroids=max_centroids)


def _segments(sorted_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique values of a sorted array with their start and stop offsets."""
    if len(sorted_pos) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    starts = np.concatenate([[0], np.flatnonzero(np.diff(sorted_pos)) + 1])
    stops = np.concatenate([starts[1:], [len(sorted_pos)]])
    return sorted_pos[starts], starts, stops


class GeneDigests:
    """Per-gene sketches of the non-zero normalised expression ``count / n_counts * 10,000``.

    ``exact=True`` keeps every value (exact medians), ``False`` uses a t-digest per gene from the
    start, and ``None`` (default) stays exact until ``exact_limit`` values are held, then switches
    to t-digests. Sketches from different files or processes combine with :meth:`merge`; the
    result is saved and loaded without pickle (:meth:`save` / :meth:`load`, an ``.npz`` file).
    """

    def __init__(self, *, exact: bool | None = None, exact_limit: int = DEFAULT_EXACT_LIMIT,
                 max_centroids: int = DEFAULT_MAX_CENTROIDS, flush_values: int = DEFAULT_FLUSH_VALUES):
        self.exact = exact
        self.exact_limit = int(exact_limit)
        self.max_centroids = int(max_centroids)
        self.flush_values = int(flush_values)
        self.gene_ids: list[str] = []
        self.gene_symbols: dict[str, str] = {}
        self.n_cells = 0
        self._pos: dict[str, int] = {}
        self._counts = np.zeros(0, dtype=np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # (gene positions, values)
        self._n_pending = 0
        self._digests: list | None = None if exact is not False else []
        self._cmap_cache: tuple[object, np.ndarray, bool] | None = None

    # ---- state --------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """``"exact"`` while every value is kept, else ``"digest"``."""
        return "exact" if self._digests is None else "digest"

    @property
    def n_values(self) -> int:
        """Total number of non-zero values seen (sum of the detection counts)."""
        return int(self._counts.sum())

    def __len__(self) -> int:
        return len(self.gene_ids)

    def __repr__(self) -> str:
        return (f"GeneDigests(mode={self.mode!r}, genes={len(self.gene_ids)}, cells={self.n_cells}, "
                f"values={self.n_values})")

    def _ensure_genes(self, ids: Iterable[str]) -> None:
        added = False
        for g in ids:
            if g not in self._pos:
                self._pos[g] = len(self.gene_ids)
                self.gene_ids.append(g)
                added = True
        if added:
            grow = len(self.gene_ids) - len(self._counts)
            self._counts = np.concatenate([self._counts, np.zeros(grow, dtype=np.int64)])
            if self._digests is not None:
                self._digests.extend([None] * grow)

    def _column_map(self, gene_ids: Sequence) -> tuple[np.ndarray, bool]:
        """Column -> gene position (-1: skipped) and whether several columns share a gene."""
        cache = self._cmap_cache
        if cache is not None and cache[0] is gene_ids:
            return cache[1], cache[2]
        ids = ["" if g is None or (isinstance(g, float) and math.isnan(g)) else str(g) for g in gene_ids]
        self._ensure_genes(g for g in ids if g)
        cmap = np.array([self._pos[g] if g else -1 for g in ids], dtype=np.int64)
        kept = cmap[cmap >= 0]
        dup = len(np.unique(kept)) != len(kept)
        self._cmap_cache = (gene_ids, cmap, dup)
        return cmap, dup

    # ---- accumulation -------------------------------------------------------------------------
    def update(self, counts: sp.spmatrix | np.ndarray, n_counts: np.ndarray, gene_ids: Sequence) -> None:
        """Add a chunk: ``counts`` cells × columns (raw counts), ``n_counts`` per cell, a gene id per column.

        Columns whose id is empty or None are skipped; columns sharing an id are summed per cell.
        Cells with a non-positive or missing ``n_counts`` contribute nothing.
        """
        m = counts.tocsr() if sp.issparse(counts) else sp.csr_matrix(np.asarray(counts))
        n_counts = np.asarray(n_counts, dtype=np.float64).reshape(-1)
        if m.shape[0] != len(n_counts):
            raise ValueError(f"{m.shape[0]} cells in the chunk but {len(n_counts)} n_counts values.")
        if m.shape[1] != len(gene_ids):
            raise ValueError(f"{m.shape[1]} columns in the chunk but {len(gene_ids)} gene ids.")
        cmap, dup = self._column_map(gene_ids)
        rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
        pos = cmap[m.indices]
        data = m.data.astype(np.float64, copy=False)
        sel = pos >= 0
        rows, pos, data = rows[sel], pos[sel], data[sel]
        if dup:  # sum the columns of one gene within each cell before normalising
            agg = sp.csr_matrix((data, (rows, pos)), shape=(m.shape[0], len(self.gene_ids)))
            agg.sum_duplicates()
            rows = np.repeat(np.arange(agg.shape[0]), np.diff(agg.indptr))
            pos, data = agg.indices.astype(np.int64), agg.data
        with np.errstate(divide="ignore", invalid="ignore"):
            vals = data / n_counts[rows] * TARGET_SUM
        ok = (vals != 0) & np.isfinite(vals) & (n_counts[rows] > 0)
        pos, vals = pos[ok].astype(np.int32), vals[ok]
        self._counts += np.bincount(pos, minlength=len(self._counts))
        self.n_cells += int(m.shape[0])
        self._add_pending(pos, vals)

    def _add_pending(self, pos: np.ndarray, vals: np.ndarray) -> None:
        if len(pos):
            self._pending.append((pos, vals))
            self._n_pending += len(pos)
        if self._digests is None:
            if self.exact is None and self._n_pending > self.exact_limit:
                logger.info("More than %d non-zero values: switching gene medians to t-digests.", self.exact_limit)
                self.to_digest()
        elif self._n_pending >= self.flush_values:
            self._flush()

    def _pending_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._pending:
            return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float64)
        if len(self._pending) > 1:
            self._pending = [(np.concatenate([p for p, _ in self._pending]),
                              np.concatenate([v for _, v in self._pending]))]
        return self._pending[0]

    def _flush(self) -> None:
        """Feed buffered values to the per-gene t-digests, one batch call per gene."""
        pos, vals = self._pending_arrays()
        self._pending, self._n_pending = [], 0
        if not len(pos):
            return
        order = np.argsort(pos, kind="stable")  # stable: values keep their arrival order per gene
        pos, vals = pos[order], vals[order]
        genes, starts, stops = _segments(pos)
        digests = self._digests
        for g, a, b in zip(genes.tolist(), starts.tolist(), stops.tolist()):
            d = digests[g]
            if d is None:
                digests[g] = _new_digest(self.max_centroids, vals[a:b])
            else:
                d.batch_update(vals[a:b])

    def to_digest(self) -> "GeneDigests":
        """Switch to t-digest mode (in place): the exact values are fed to per-gene digests."""
        if self._digests is None:
            self._digests = [None] * len(self.gene_ids)
        self._flush()
        return self

    def merge(self, other: "GeneDigests") -> "GeneDigests":
        """Add another sketch's genes, values and counts to this one (in place); returns self."""
        self._ensure_genes(other.gene_ids)
        remap = np.array([self._pos[g] for g in other.gene_ids], dtype=np.int64)
        self._counts[remap] += other._counts
        self.n_cells += other.n_cells
        for k, v in other.gene_symbols.items():
            self.gene_symbols.setdefault(k, v)
        if other.mode == "digest" and self.mode == "exact":
            if self.exact:
                logger.warning("Merging an approximate (t-digest) sketch: the medians are no longer exact.")
            self.to_digest()
        if other._n_pending:
            pos, vals = other._pending_arrays()
            self._add_pending(remap[pos].astype(np.int32), vals)
        if other.mode == "digest":
            digests = self._digests
            for i, d in enumerate(other._digests):
                if d is None:
                    continue
                g = int(remap[i])
                if digests[g] is None:
                    digests[g] = d.copy()
                else:
                    digests[g].merge_inplace(d)
        return self

    # ---- results ------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Number of cells in which each gene was detected (non-zero)."""
        return {g: int(c) for g, c in zip(self.gene_ids, self._counts)}

    def medians(self) -> dict[str, float]:
        """Non-zero median per detected gene (genes never detected are left out)."""
        if self.mode == "exact":
            pos, vals = self._pending_arrays()
            order = np.lexsort((vals, pos))
            pos, vals = pos[order], vals[order]
            genes, starts, stops = _segments(pos)
            n = stops - starts
            med = (vals[starts + (n - 1) // 2] + vals[starts + n // 2]) / 2.0
            return {self.gene_ids[g]: float(v) for g, v in zip(genes.tolist(), med.tolist())}
        self._flush()
        return {g: float(d.median()) for g, d in zip(self.gene_ids, self._digests) if d is not None}

    # ---- persistence --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the sketch to an ``.npz`` file (no pickle): exact values, or t-digest bytes per gene."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {
            "format": np.array(_SAVE_FORMAT),
            "mode": np.array(self.mode),
            "exact": np.array("" if self.exact is None else str(bool(self.exact))),
            "params": np.array([self.exact_limit, self.max_centroids, self.flush_values, self.n_cells], np.int64),
            "gene_ids": np.array(self.gene_ids, dtype=str),
            "counts": self._counts,
            "symbol_keys": np.array(list(self.gene_symbols), dtype=str),
            "symbol_values": np.array(list(self.gene_symbols.values()), dtype=str),
        }
        if self.mode == "exact":
            arrays["pos"], arrays["vals"] = self._pending_arrays()
        else:
            self._flush()
            blobs = [b"" if d is None else d.to_bytes() for d in self._digests]
            arrays["digest_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
            arrays["digest_bytes"] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GeneDigests":
        """Read a sketch written by :meth:`save`."""
        from fastdigest import TDigest

        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["format"]) != _SAVE_FORMAT:
                    raise ValueError(f"unknown format {str(z['format'])!r}")
                exact_s = str(z["exact"])
                limit, max_c, flush, n_cells = (int(x) for x in z["params"])
                self = cls(exact=None if exact_s == "" else exact_s == "True", exact_limit=limit,
                           max_centroids=max_c, flush_values=flush)
                self._ensure_genes(z["gene_ids"].tolist())
                self._counts = z["counts"].astype(np.int64)
                self.n_cells = n_cells
                self.gene_symbols = dict(zip(z["symbol_keys"].tolist(), z["symbol_values"].tolist()))
                if str(z["mode"]) == "exact":
                    self._digests = None
                    pos, vals = z["pos"].astype(np.int32), z["vals"].astype(np.float64)
                    self._pending, self._n_pending = ([(pos, vals)] if len(pos) else []), len(pos)
                else:
                    off, raw = z["digest_offsets"], z["digest_bytes"].tobytes()
                    self._digests = [TDigest.from_bytes(raw[a:b]) if b > a else None
                                     for a, b in zip(off[:-1].tolist(), off[1:].tolist())]
        except (OSError, KeyError, ValueError) as exc:
            raise InputFileError(f"Could not read gene digests from {path}: {exc}") from exc
        return self


# ---- streaming over input files ---------------------------------------------------------------
@dataclass
class _Prepared:
    gene_ids: np.ndarray  # per column: gene id or "" (skipped)
    n_counts: np.ndarray | None  # per cell, from the file; None -> row totals
    keep: np.ndarray | None  # per cell boolean (filter_pass); None -> all cells
    symbols: dict[str, str]


def _filter_pass_mask(values: pd.Series) -> np.ndarray:
    """Keep a cell iff its ``filter_pass`` equals 1 (True, 1 and 1.0 pass; the string "1" does not)."""
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        return np.asarray(values.to_numpy() == 1, dtype=bool)
    return np.array([v == 1 for v in values.tolist()], dtype=bool)


def _prepare(reader: CellReader, gene_id_column: str | None, gene_filter, symbol_column: str | None) -> _Prepared:
    var = reader.var
    if gene_id_column and gene_id_column in var.columns:
        ids = var[gene_id_column]
    else:
        if gene_id_column:
            logger.info("%s has no gene column %r: using the gene index as gene ids.", reader.describe(), gene_id_column)
        ids = pd.Series(var.index, index=var.index)
    ids = np.array(["" if pd.isna(g) else str(g) for g in ids.tolist()], dtype=object)
    if gene_filter is not None:
        if callable(gene_filter):
            mask = np.asarray(gene_filter(var), dtype=bool)
            if mask.shape != (len(var),):
                raise ValueError(f"gene_filter returned {mask.shape} values for {len(var)} genes of {reader.describe()}.")
        else:
            wanted = {str(g) for g in gene_filter}
            mask = np.array([g in wanted for g in ids], dtype=bool)
        ids = np.where(mask, ids, "")
    symbols: dict[str, str] = {}
    if symbol_column and symbol_column in var.columns:
        for g, s in zip(ids.tolist(), var[symbol_column].tolist()):
            if g and not pd.isna(s):
                symbols.setdefault(str(s), g)
    cols = reader.obs_columns
    wanted_obs = [c for c in ("n_counts", "filter_pass") if c in cols]
    obs = reader.read_obs(wanted_obs) if wanted_obs else None
    n_counts = obs["n_counts"].to_numpy(dtype=np.float64) if "n_counts" in wanted_obs else None
    keep = _filter_pass_mask(obs["filter_pass"]) if "filter_pass" in wanted_obs else None
    return _Prepared(ids, n_counts, keep, symbols)


def _digest_rows(reader: CellReader, prep: _Prepared, digests: GeneDigests, start: int, stop: int,
                 chunk_size: int, bar=None) -> None:
    for s, chunk in reader.iter_counts(chunk_size, start, stop):
        e = s + chunk.shape[0]
        n = prep.n_counts[s:e] if prep.n_counts is not None else np.asarray(chunk.sum(axis=1)).ravel()
        if prep.keep is not None:
            k = prep.keep[s:e]
            if not k.all():
                chunk, n = chunk[k], n[k]
        digests.update(chunk, n, prep.gene_ids)
        if bar is not None:
            bar.update(e - s)


def _worker(task: tuple) -> GeneDigests:
    """Process one row range of one file in a worker process."""
    (source, options), fmt, start, stop, chunk_size, gene_id_column, gene_filter, symbol_column, dig_opts = task
    digests = GeneDigests(**dig_opts)
    with open_reader(source, fmt, **options) as reader:
        prep = _prepare(reader, gene_id_column, gene_filter, symbol_column)
        digests.gene_symbols.update(prep.symbols)
        _digest_rows(reader, prep, digests, start, stop, chunk_size)
    return digests


def _as_list(inputs) -> list:
    import anndata as ad

    if isinstance(inputs, (str, os.PathLike, ad.AnnData)):
        return [inputs]
    return list(inputs)


def compute_gene_digests(
    inputs,
    *,
    file_format: str | None = None,
    gene_id_column: str | None = "ensembl_id",
    exact: bool | None = None,
    chunk_size: int = 2048,
    nproc: int = 1,
    gene_filter=None,
    symbol_column: str | None = "gene_symbol",
    exact_limit: int = DEFAULT_EXACT_LIMIT,
    max_centroids: int = DEFAULT_MAX_CENTROIDS,
    progress: bool = True,
) -> GeneDigests:
    """Stream every input (paths or AnnData) into one :class:`GeneDigests`.

    ``gene_filter``: None (all genes), an iterable of gene ids to keep, or a function of the gene
    table returning a boolean mask (e.g. ``lambda var: var.gene_type.isin(["protein_coding", "miRNA"])``).
    With ``nproc > 1``, files (or row ranges of them) are processed by worker processes and the
    sketches merged in a fixed order, so results depend only on the inputs and ``nproc``.
    """
    dig_opts = {"exact": exact, "exact_limit": exact_limit, "max_centroids": max_centroids}
    if gene_filter is not None and not callable(gene_filter):
        gene_filter = sorted({str(g) for g in gene_filter})
    total = GeneDigests(**dig_opts)
    sources = _as_list(inputs)
    if not sources:
        raise ValueError("No input files given.")
    readers: list[CellReader] = []
    try:
        for src in sources:
            readers.append(open_reader(src, file_format))
        n_total = sum(r.n_cells for r in readers)
        bar = tqdm(total=n_total, unit="cell", desc="Gene medians", disable=not progress)
        tasks = []
        for r in readers:
            args = r.reopen_args() if nproc > 1 else None
            if args is None:  # serial: in-memory data, or a single process
                prep = _prepare(r, gene_id_column, gene_filter, symbol_column)
                for k, v in prep.symbols.items():
                    total.gene_symbols.setdefault(k, v)
                _digest_rows(r, prep, total, 0, r.n_cells, chunk_size, bar)
                continue
            # row ranges of whole chunks, a few per worker for load balance
            step = max(chunk_size, math.ceil(n_total / (nproc * 4) / chunk_size) * chunk_size)
            for s in range(0, r.n_cells, step):
                tasks.append((args, r.format, s, min(s + step, r.n_cells), chunk_size, gene_id_column,
                              gene_filter, symbol_column, dig_opts))
    finally:
        for r in readers:
            r.close()
    if tasks:
        _check_picklable(gene_filter)
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=nproc, mp_context=mp.get_context("spawn")) as pool:
            for task, part in zip(tasks, pool.map(_worker, tasks)):
                total.merge(part)  # in task order: deterministic
                bar.update(task[3] - task[2])
    bar.close()
    return total


def _check_picklable(obj) -> None:
    try:
        pickle.dumps(obj)
    except Exception as exc:  # lambdas and closures cannot reach worker processes
        raise ValueError("gene_filter must be picklable (a module-level function or a list of gene ids) "
                         f"when nproc > 1: {exc}") from exc


def estimate_gene_medians(
    inputs,
    *,
    file_format: str | None = None,
    gene_id_column: str | None = "ensembl_id",
    exact: bool | None = None,
    chunk_size: int = 2048,
    nproc: int = 1,
    gene_filter=None,
    return_counts: bool = False,
    progress: bool = True,
    **digest_options,
) -> dict[str, float] | tuple[dict[str, float], dict[str, int]]:
    """Non-zero median of ``count / n_counts * 10,000`` per gene over all inputs.

    ``n_counts`` comes from the cell table when present, else it is the cell's total over all
    genes; cells with ``filter_pass`` other than 1 are skipped when that column exists. Genes are
    identified by ``gene_id_column`` (falling back to the gene index). Medians are exact for small
    corpora (``exact=None``) or always (``True``), else from t-digests. With ``return_counts``, also
    returns the number of cells in which each gene was detected.
    """
    digests = compute_gene_digests(inputs, file_format=file_format, gene_id_column=gene_id_column, exact=exact,
                                   chunk_size=chunk_size, nproc=nproc, gene_filter=gene_filter,
                                   progress=progress, **digest_options)
    medians = digests.medians()
    return (medians, digests.counts()) if return_counts else medians


# ---- vocabularies ------------------------------------------------------------------------------
def build_vocab(
    medians: "Mapping[str, float] | GeneDigests",
    *,
    counts: Mapping[str, int] | None = None,
    special_tokens: bool = True,
    min_cells: int = 0,
    genes: Iterable[str] | None = None,
    gene_name_id: Mapping[str, str] | None = None,
) -> GeneVocab:
    """A vocabulary from gene medians: ``<pad>``=0, ``<mask>``=1, (``<cls>``=2, ``<eos>``=3), then genes sorted.

    Genes with a missing, zero or non-finite median are left out, as are genes detected in fewer
    than ``min_cells`` cells (needs ``counts``, given directly or by passing a :class:`GeneDigests`).
    ``genes`` restricts the vocabulary to a gene list. The median dictionary keeps every valid
    median; the Ensembl mapping is the identity over the vocabulary genes.
    """
    if isinstance(medians, GeneDigests):
        counts = medians.counts() if counts is None else counts
        gene_name_id = medians.gene_symbols if gene_name_id is None else gene_name_id
        medians = medians.medians()
    valid = {str(g): float(v) for g, v in medians.items() if v is not None and math.isfinite(v) and v > 0}
    dropped = len(medians) - len(valid)
    if dropped:
        logger.info("%d gene(s) have a zero or missing median and are left out.", dropped)
    candidates = set(valid)
    if genes is not None:
        wanted = {str(g) for g in genes}
        missing = sorted(wanted - candidates)
        if missing:
            logger.warning("%d requested gene(s) have no median and are left out (e.g. %s).",
                           len(missing), missing[:5])
        candidates &= wanted
    if min_cells > 0:
        if counts is None:
            raise ValueError("min_cells needs detection counts: pass counts= or a GeneDigests.")
        candidates = {g for g in candidates if counts.get(g, 0) >= min_cells}
    if not candidates:
        raise ValueError("No gene is left for the vocabulary (check min_cells, genes and the inputs).")
    specials = [PAD, MASK] + ([CLS, EOS] if special_tokens else [])
    clash = candidates & set(specials)
    if clash:
        raise ValueError(f"Gene ids clash with special tokens: {sorted(clash)}.")
    token_dict = {t: i for i, t in enumerate(specials)}
    for i, g in enumerate(sorted(candidates), start=len(specials)):
        token_dict[g] = i
    name_id = {str(s): str(g) for s, g in (gene_name_id or {}).items() if g in valid}
    mapping = {g.upper(): g for g in sorted(candidates)}
    return GeneVocab(token_dict, valid, name_id, mapping, version=None)


def write_vocab(vocab: GeneVocab, folder: str | os.PathLike, name: str = "custom", *,
                counts: Mapping[str, int] | None = None, formats: Sequence[str] = ("json", "pickle")) -> Path:
    """Write a vocabulary as JSON (:meth:`GeneVocab.save`) and/or as published-style pickles.

    The pickles are ``token_dictionary_<name>.pkl``, ``gene_median_dictionary_<name>.pkl``,
    ``gene_name_id_dict_<name>.pkl`` and ``ensembl_mapping_dict_<name>.pkl``, usable wherever the
    reference package takes dictionary files. With ``counts``, ``gene_stats_<name>.tsv`` lists each
    gene's median, detection count and whether it is in the vocabulary.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    unknown = set(formats) - {"json", "pickle"}
    if unknown:
        raise ValueError(f"Unknown vocabulary format(s) {sorted(unknown)}; use 'json' and/or 'pickle'.")
    if "json" in formats:
        vocab.save(folder, format="json")
    if "pickle" in formats:
        for stem, obj in (("token_dictionary", vocab.token_dict), ("gene_median_dictionary", vocab.gene_medians),
                          ("gene_name_id_dict", vocab.gene_name_id), ("ensembl_mapping_dict", vocab.ensembl_mapping)):
            write_pickle(folder / f"{stem}_{name}.pkl", dict(obj))
    if counts is not None:
        genes = sorted(set(vocab.gene_medians) | set(counts))
        table = pd.DataFrame({
            "gene": genes,
            "median": [vocab.gene_medians.get(g, np.nan) for g in genes],
            "n_cells_detected": [int(counts.get(g, 0)) for g in genes],
            "in_vocab": [g in vocab.token_dict for g in genes],
        })
        target = folder / f"gene_stats_{name}.tsv"
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        table.to_csv(tmp, sep="\t", index=False)
        os.replace(tmp, target)
    return folder


__all__ = ["GeneDigests", "compute_gene_digests", "estimate_gene_medians", "build_vocab", "write_vocab",
           "TARGET_SUM"]
