"""Tokenize single-cell files into rank value encoded Hugging Face datasets.

reader (row chunks) → gene map (vocabulary columns, duplicates summed) → rank value encoding →
Arrow record batches → ``datasets`` folder written under a temporary name and renamed when complete.
Memory stays flat in the number of cells: only one chunk per worker is held at a time, and at most
``2 * nproc`` tasks are in flight.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from .._constants import FileFormat
from .._settings import settings as _gf_settings
from .._utils import Shard, check_positive_int, doc_params, ordered_map, parse_shard, progress_bar
from ..io import CellReader, open_reader
from ..vocab import GeneVocab
from ._chunks import FileJob, encode_range, prepare_file, row_ranges, worker_init, worker_task
from ._options import DOCS, ChunkStats, FileReport, TokenizerSettings, tokenizer_settings
from ._shards import plan_shard
from ._writer import write_dataset

logger = logging.getLogger(__name__)


def _nproc(nproc: int | None) -> int:
    return _gf_settings.n_jobs if nproc is None else check_positive_int("nproc", nproc)


def _encode_file(reader: CellReader, job: FileJob, settings: TokenizerSettings, nproc: int,
                 rows: tuple[int, int] | None = None) -> Iterator[tuple[list[pa.RecordBatch], ChunkStats, int]]:
    bounds = row_ranges(reader.n_cells, settings, *(rows or ()))
    if nproc > 1 and len(bounds) > 1 and job.reader_args is not None:
        yield from ordered_map(worker_task, bounds, nproc, initializer=worker_init, initargs=(settings, job),
                               what=reader.describe())
    else:
        for b in bounds:
            yield encode_range(reader, b, job, settings)


@doc_params(**DOCS)
def iter_batches(
    inputs: Iterable,
    settings: TokenizerSettings,
    *,
    file_format: FileFormat | None = None,
    nproc: int | None = None,
    progress: bool | None = None,
    reports: list[FileReport] | None = None,
    rows: Sequence[tuple[int, int]] | None = None,
) -> Iterator[tuple[pa.RecordBatch, str]]:
    """Yield ``(record_batch, source)`` for every chunk of every input, in input order.

    Args:
        inputs: paths, AnnData objects or open :class:`geneformer.io.CellReader` objects.
        settings: from :func:`tokenizer_settings`.
        {file_format}
        {nproc}
        {progress}
        reports: a list that receives one :class:`FileReport` per input as it is started.
        rows: per input, the ``(start, stop)`` rows to encode (None: all; a shard's rows start on a
            chunk boundary, so its chunks are those of the whole run).
    """
    nproc = _nproc(nproc)
    for k, source in enumerate(inputs):
        reader = source if isinstance(source, CellReader) else open_reader(source, file_format,
                                                                           **settings.reader_options)
        span = None if rows is None else rows[k]
        n_cells = reader.n_cells if span is None else span[1] - span[0]
        report = FileReport(path=reader.describe(), n_cells=n_cells)
        if reports is not None:
            reports.append(report)
        with reader:
            job = prepare_file(reader, settings, report, span)
            logger.info("%s: %d cells; genes from %s (%.1f%% in the vocabulary); n_counts from %s.",
                        report.path, n_cells, report.gene_source, 100 * report.gene_overlap,
                        report.n_counts_source)
            with progress_bar(total=n_cells, desc=f"Tokenizing {Path(report.path).name}", unit="cells",
                              progress=progress) as bar:
                for batches, stats, done in _encode_file(reader, job, settings, nproc, span):
                    report.add(stats)
                    bar.update(done)
                    for b in batches:
                        report.n_written += b.num_rows
                        yield b, report.path
        if report.non_integer:
            warnings.warn(f"{report.path} holds non-integer values: the rank value encoding expects raw "
                          "counts (undo any normalisation or log transform first).", stacklevel=2)


def log_summary(reports: Sequence[FileReport], output_path: str | os.PathLike | None = None) -> None:
    """Log what happened to the cells of each input (and where the dataset was saved)."""
    for r in reports:
        parts = [f"{r.n_written} of {r.n_cells} cells written"]
        if r.n_filtered:
            parts.append(f"{r.n_filtered} removed by filter_pass")
        if r.n_empty:
            parts.append(f"{r.n_empty} dropped with no vocabulary gene expressed")
        if r.n_bad_counts:
            parts.append(f"{r.n_bad_counts} dropped with n_counts missing or <= 0")
        logger.info("%s: %s.", r.path, "; ".join(parts))
        if r.n_written == 0 and r.n_cells:
            logger.warning("%s: no cell was written (%s).", r.path, "; ".join(parts[1:]) or "no cells")
        if r.n_empty:
            logger.warning("%s: %d cells had no expressed vocabulary gene and were dropped.", r.path, r.n_empty)
    if output_path is not None:
        logger.info("Saved %s", output_path)


def empty_schema(settings: TokenizerSettings) -> pa.Schema:
    """The columns of a dataset in which no cell was written."""
    fields = [pa.field("input_ids", pa.list_(pa.from_numpy_dtype(np.dtype(settings.vocab.token_dtype))))]
    if settings.keep_counts:
        fields.append(pa.field("counts", pa.list_(pa.float64())))
    fields += [pa.field(out, pa.string()) for out in settings.attr_map.values()]
    fields.append(pa.field("length", pa.int64()))
    return pa.schema(fields)


@doc_params(**DOCS)
def tokenize_to_disk(
    inputs: Iterable,
    output_path: str | os.PathLike,
    settings: TokenizerSettings,
    *,
    file_format: FileFormat | None = None,
    overwrite: bool = False,
    nproc: int | None = None,
    progress: bool | None = None,
    reports: list[FileReport] | None = None,
    shard: "Shard | str | tuple[int, int] | None" = None,
) -> Any:
    """Tokenize inputs in order into one dataset folder at ``output_path``; returns it memory-mapped.

    Args:
        inputs: paths or AnnData objects.
        output_path: the dataset folder (an existing one is refused unless ``overwrite``).
        settings: from :func:`tokenizer_settings`.
        {file_format}
        overwrite: replace an existing output.
        {nproc}
        {progress}
        reports: a list that receives one :class:`FileReport` per input.
        {shard}
    """
    reports = [] if reports is None else reports
    shard = parse_shard(shard)
    if shard is not None:
        return _tokenize_shard(list(inputs), output_path, settings, shard, file_format=file_format,
                               overwrite=overwrite, nproc=nproc, progress=progress, reports=reports)
    batches = iter_batches(inputs, settings, file_format=file_format, nproc=nproc, progress=progress,
                           reports=reports)
    ds = write_dataset(batches, output_path, overwrite=overwrite, empty_schema=empty_schema(settings))
    log_summary(reports, output_path)
    return ds


def _tokenize_shard(inputs: list, output_path: str | os.PathLike, settings: TokenizerSettings, shard: Shard, *,
                    file_format: FileFormat | None, overwrite: bool, nproc: int | None, progress: bool | None,
                    reports: list[FileReport]) -> Any:
    """Shard ``shard`` of the run into its part (nothing to do when it finished before)."""
    import datasets

    plan = plan_shard(inputs, output_path, settings, shard, file_format=file_format)
    if not overwrite and plan.finished():
        logger.info("Shard %s of %s finished before: nothing to do.", shard, output_path)
        return datasets.load_from_disk(str(plan.part))
    batches = iter_batches(plan.readers, settings, nproc=nproc, progress=progress, reports=reports, rows=plan.rows)
    ds = write_dataset(batches, plan.part, overwrite=True, empty_schema=empty_schema(settings))
    plan.mark_done(len(ds))
    log_summary(reports, plan.part)
    return ds


def tokenize_in_memory(inputs: Iterable, settings: TokenizerSettings, *, nproc: int | None = None,
                       progress: bool | None = None, reports: list[FileReport] | None = None) -> Any:
    """As :func:`tokenize_to_disk`, into an in-memory ``datasets.Dataset``."""
    import datasets

    reports = [] if reports is None else reports
    batches = [b for b, _ in iter_batches(inputs, settings, nproc=nproc, progress=progress, reports=reports)]
    table = pa.Table.from_batches(batches) if batches else empty_schema(settings).empty_table()
    log_summary(reports)
    return datasets.Dataset(table)


@doc_params(**DOCS)
def tokenize_anndata(
    adata: Any,
    vocab: GeneVocab | str | os.PathLike | None = "V2",
    *,
    gene_id_column: str | None = None,
    gene_symbol_column: str | None = None,
    custom_attr_name_dict: dict[str, str] | None = None,
    model_input_size: int | None = None,
    special_token: bool | None = None,
    nproc: int | None = None,
    chunk_size: int = 512,
    layer: str | None = None,
    keep_counts: bool = False,
    collapse_gene_ids: bool = True,
    progress: bool | None = None,
) -> Any:
    """Tokenize an in-memory AnnData; returns an in-memory ``datasets.Dataset``.

    Genes come from ``var['ensembl_id']``, the index, or symbols; ``n_counts`` from
    ``obs['n_counts']`` when present, else each cell's total.

    Args:
        adata: the AnnData (not modified).
        {vocab}
        {gene_id_column}
        {gene_symbol_column}
        {custom_attr_name_dict}
        {model_input_size}
        {special_token}
        {nproc}
        {chunk_size}
        {layer}
        {keep_counts}
        {collapse_gene_ids}
        {progress}
    """
    s = tokenizer_settings(vocab, gene_id_column=gene_id_column, gene_symbol_column=gene_symbol_column,
                           custom_attr_name_dict=custom_attr_name_dict, model_input_size=model_input_size,
                           special_token=special_token, chunk_size=chunk_size, layer=layer,
                           keep_counts=keep_counts, collapse_gene_ids=collapse_gene_ids)
    return tokenize_in_memory([adata], s, nproc=nproc, progress=progress)


@doc_params(**DOCS)
def tokenize_files(
    inputs: Sequence[str | os.PathLike],
    output_path: str | os.PathLike,
    vocab: GeneVocab | str | os.PathLike | None = "V2",
    *,
    file_format: FileFormat | None = None,
    overwrite: bool = False,
    nproc: int | None = None,
    progress: bool | None = None,
    shard: "Shard | str | tuple[int, int] | None" = None,
    **options: Any,
) -> Any:
    """Tokenize files into one dataset folder at ``output_path``; returns it memory-mapped.

    Args:
        inputs: paths (or AnnData objects, or SOMA experiment URIs), tokenized in order.
        output_path: the dataset folder (an existing one is refused unless ``overwrite``).
        {vocab}
        {file_format}
        overwrite: replace an existing output (with ``shard``: redo a finished shard).
        {nproc}
        {progress}
        {shard}
        options: the settings of :func:`tokenize_anndata` (``custom_attr_name_dict``, ``model_input_size``,
            ``special_token``, ``chunk_size``, ``gene_id_column``, ``reader_options``, ...).
    """
    s = tokenizer_settings(vocab, **options)
    return tokenize_to_disk(list(inputs), output_path, s, file_format=file_format, overwrite=overwrite,
                            nproc=nproc, progress=progress, shard=shard)
