"""Streaming a corpus of input files into :class:`GeneDigests`, optionally in worker processes.

Files (or row ranges of them) become tasks of the one worker pool (:func:`geneformer._utils.ordered_map`);
the sketches come back in task order and are merged in that order, so results depend only on the
inputs and ``nproc``.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Union

import numpy as np
import pandas as pd

from .._constants import FileFormat
from .._settings import settings
from .._utils import Shard, check_positive_int, doc_params, ordered_map, parse_shard, progress_bar
from .._utils._docs import doc_file_format, doc_nproc, doc_progress
from ..io import CellReader, CellTotals, open_reader, shard_rows
from ._digests import DEFAULT_EXACT_LIMIT, DEFAULT_MAX_CENTROIDS, GeneDigests

logger = logging.getLogger(__name__)

#: A gene filter: gene ids to keep, or a function of the gene table returning a boolean mask.
GeneFilter = Union[Iterable[str], Callable[[pd.DataFrame], Any], None]


@dataclass
class _Prepared:
    gene_ids: np.ndarray  # per column: gene id or "" (skipped)
    cells: CellTotals
    symbols: dict[str, str]


@dataclass
class _Task:
    """A row range of one file, processed in a worker."""

    reader_args: tuple
    file_format: str
    start: int
    stop: int
    chunk_size: int
    gene_id_column: str | None
    gene_filter: Any
    symbol_column: str | None
    digest_options: dict


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
    return _Prepared(ids, CellTotals.read(reader), symbols)


def _digest_rows(reader: CellReader, prep: _Prepared, digests: GeneDigests, start: int, stop: int,
                 chunk_size: int, bar=None) -> None:
    for s, chunk in reader.iter_counts(chunk_size, start, stop):
        e = s + chunk.shape[0]
        n = prep.cells.n_counts_of(s, chunk)
        keep = prep.cells.keep_of(s, e)
        if not keep.all():
            chunk, n = chunk[keep], n[keep]
        digests.update(chunk, n, prep.gene_ids)
        if bar is not None:
            bar.update(e - s)


def _worker(task: _Task) -> GeneDigests:
    """Process one row range of one file in a worker process."""
    digests = GeneDigests(**task.digest_options)
    source, options = task.reader_args
    with open_reader(source, task.file_format, **options) as reader:
        prep = _prepare(reader, task.gene_id_column, task.gene_filter, task.symbol_column)
        digests.gene_symbols.update(prep.symbols)
        _digest_rows(reader, prep, digests, task.start, task.stop, task.chunk_size)
    return digests


def _as_list(inputs) -> list:
    import anndata as ad

    if isinstance(inputs, (str, os.PathLike, ad.AnnData)):
        return [inputs]
    return list(inputs)


def _check_picklable(obj) -> None:
    try:
        pickle.dumps(obj)
    except Exception as exc:  # lambdas and closures cannot reach worker processes
        raise ValueError("gene_filter must be picklable (a module-level function or a list of gene ids) "
                         f"when nproc > 1: {exc}") from exc


def _names(readers: list[CellReader], most: int = 3) -> str:
    """The inputs a pool works on, for its error message."""
    names = [r.describe() for r in readers]
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return "the gene medians of " + ", ".join(names[:most]) + more


@doc_params(file_format=doc_file_format, nproc=doc_nproc, progress=doc_progress)
def compute_gene_digests(
    inputs: Any,
    *,
    file_format: FileFormat | None = None,
    gene_id_column: str | None = "ensembl_id",
    exact: bool | None = None,
    chunk_size: int = 2048,
    nproc: int | None = None,
    gene_filter: GeneFilter = None,
    symbol_column: str | None = "gene_symbol",
    exact_limit: int = DEFAULT_EXACT_LIMIT,
    max_centroids: int = DEFAULT_MAX_CENTROIDS,
    progress: bool | None = None,
    shard: "Shard | str | tuple[int, int] | None" = None,
) -> GeneDigests:
    """Stream every input (paths or AnnData) into one :class:`GeneDigests`.

    ``n_counts`` and ``filter_pass`` are read as the tokenizer reads them (:class:`geneformer.io.CellTotals`).
    Exact medians do not depend on ``nproc``; t-digest estimates depend only on the inputs and ``nproc``.

    Args:
        inputs: a path or AnnData, or a list of them.
        {file_format}
        gene_id_column: the gene table column of gene ids (falling back to the gene index).
        exact: True for exact medians (every value kept), False for t-digests, None (default) for
            exact while fewer than ``exact_limit`` values are held.
        chunk_size: cells read at a time.
        {nproc}
        gene_filter: None (all genes), gene ids to keep, or a function of the gene table returning a
            boolean mask (e.g. ``lambda var: var.gene_type.isin(["protein_coding", "miRNA"])``); with
            ``nproc > 1`` it must be picklable (a list, or a module-level function).
        symbol_column: gene table column of symbols, recorded for the vocabulary's symbol map.
        exact_limit, max_centroids: see :class:`GeneDigests`.
        {progress}
        shard: ``(i, n)`` or ``"i/n"``: the sketch of only the ``i``-th of ``n`` slices of the cells
            (whole chunks, balanced by stored values); merging the ``n`` sketches in order gives the
            whole corpus's (the same exact medians).
    """
    nproc = settings.n_jobs if nproc is None else check_positive_int("nproc", nproc)
    chunk_size = check_positive_int("chunk_size", chunk_size)
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
        spans = shard_rows(readers, chunk_size, parse_shard(shard))
        n_total = sum(b - a for a, b in spans)
        bar = progress_bar(total=n_total, unit="cell", desc="Gene medians", progress=progress, leave=True)
        tasks: list[_Task] = []
        for r, (first, last) in zip(readers, spans):
            if last <= first:
                continue  # another shard's rows
            args = r.reopen_args() if nproc > 1 else None
            if args is None:  # serial: in-memory data, or a single process
                prep = _prepare(r, gene_id_column, gene_filter, symbol_column)
                for k, v in prep.symbols.items():
                    total.gene_symbols.setdefault(k, v)
                _digest_rows(r, prep, total, first, last, chunk_size, bar)
                continue
            # row ranges of whole chunks, a few per worker for load balance
            step = max(chunk_size, math.ceil(n_total / (nproc * 4) / chunk_size) * chunk_size)
            for s in range(first, last, step):
                tasks.append(_Task(args, r.format, s, min(s + step, last), chunk_size, gene_id_column,
                                   gene_filter, symbol_column, dig_opts))
    finally:
        for r in readers:
            r.close()
    try:
        if tasks:
            _check_picklable(gene_filter)
            for task, part in zip(tasks, ordered_map(_worker, tasks, nproc, what=_names(readers))):
                total.merge(part)  # in task order: deterministic
                bar.update(task.stop - task.start)
    finally:
        bar.close()
    return total


def estimate_gene_medians(inputs: Any, *, return_counts: bool = False, **options: Any
                          ) -> dict[str, float] | tuple[dict[str, float], dict[str, int]]:
    """Non-zero median of ``count / n_counts * 10,000`` per gene over all inputs.

    ``n_counts`` comes from the cell table when present, else it is the cell's total over all
    genes; cells with ``filter_pass`` other than 1 are skipped when that column exists.

    Args:
        inputs: a path or AnnData, or a list of them.
        return_counts: also return the number of cells in which each gene was detected.
        options: the options of :func:`compute_gene_digests` (``file_format``, ``gene_id_column``, ``exact``,
            ``chunk_size``, ``nproc``, ``gene_filter``, ``progress``, ...).
    """
    digests = compute_gene_digests(inputs, **options)
    medians = digests.medians()
    return (medians, digests.counts()) if return_counts else medians
