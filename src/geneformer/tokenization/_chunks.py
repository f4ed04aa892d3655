"""One input's preparation (gene map, cell table) and the encoding of its row ranges into Arrow
record batches, in the main process or in workers of :func:`geneformer._utils.ordered_map`."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from .._utils import InputFileError
from ..io import FORMATS, QC_COLUMNS, CellReader, CellTotals, open_reader
from ..vocab import GeneMap, match_genes
from ._encode import rank_value_encode
from ._options import ChunkStats, FileReport, TokenizerSettings

logger = logging.getLogger(__name__)

#: rows handed to a worker at once (a multiple of the chunk size keeps workers busy)
TASK_CHUNKS = 2


@dataclass
class FileJob:
    """What a worker needs to encode a range of one file's cells."""

    reader_args: tuple | None  # reopens the file in a worker; None: in-memory data, encoded in this process
    file_format: str | None
    gene_map: GeneMap
    cells: CellTotals  # of the cells from ``first`` on
    attrs: pd.DataFrame  # carried attributes (output names), one row per cell from ``first`` on
    first: int = 0  # the file row of the first cell the job covers (a shard's first row)


def prepare_file(reader: CellReader, settings: TokenizerSettings, report: FileReport,
                 rows: tuple[int, int] | None = None) -> FileJob:
    """Map the file's genes onto the vocabulary and read its cell table (the ``rows`` only, when
    given); fills the report's sources."""
    src = reader.describe()
    match = match_genes(
        reader.var, settings.vocab, gene_id_column=settings.gene_id_column,
        gene_symbol_column=settings.gene_symbol_column, use_index=settings.use_h5ad_index, source=src,
        symbol_fallback=settings.symbol_fallback,
    )
    gene_source = match.describe()
    if match.n_symbol_unused:
        logger.warning("%s: %d genes with an empty Ensembl ID have a symbol in the vocabulary and are left out "
                       "(symbol_fallback=True names them by symbol).", src, match.n_symbol_unused)
    gmap = GeneMap.build(match.ids, settings.vocab, collapse=settings.collapse_gene_ids, source=src)
    report.gene_overlap, report.gene_source = gmap.overlap, gene_source
    vname = settings.vocab.version or "custom"
    if gmap.n_genes == 0:
        raise InputFileError(
            f"No gene of {src} is in the {vname} vocabulary (0 of {gmap.n_file_genes} genes; read from "
            f"{gene_source}). Check that genes are human Ensembl IDs (set gene_id_column) or symbols "
            "(set gene_symbol_column), and that the model version matches."
        )
    if gmap.overlap < 0.2:
        logger.warning("Only %.1f%% of the genes of %s (%s) are in the %s vocabulary.",
                       100 * gmap.overlap, src, gene_source, vname)
    cols = reader.obs_columns
    missing = [c for c in settings.attr_map if c not in cols]
    if missing:
        raise InputFileError(f"{src} has no cell attribute(s) {missing}; available: {cols}.")
    # one read of the cell table: the carried attributes and the columns every input is read for
    wanted = list(dict.fromkeys([*settings.attr_map, *(c for c in QC_COLUMNS if c in cols)]))
    first, last = rows if rows is not None else (0, reader.n_cells)
    obs = reader.read_obs_rows(wanted, first, last) if wanted else pd.DataFrame(index=range(last - first))
    cells = CellTotals.from_obs(obs)
    report.n_counts_source = cells.source
    attrs = pd.DataFrame({out: obs[inp].reset_index(drop=True) for inp, out in settings.attr_map.items()})
    if attrs.shape[1] == 0:
        attrs = pd.DataFrame(index=range(last - first))
    fmt = reader.format if reader.format in FORMATS else None
    return FileJob(reader.reopen_args(), fmt, gmap, cells, attrs, first)


def encode_chunk(counts: sp.csr_matrix, start: int, job: FileJob, settings: TokenizerSettings
                 ) -> tuple[pa.RecordBatch | None, ChunkStats]:
    """Encode the cells ``start:start + len(counts)`` of a file; None when none is written."""
    stop = start + counts.shape[0]
    stats = ChunkStats()
    data = counts.data
    if data.dtype.kind == "f" and data.size and not np.all(np.mod(data[: 100_000], 1) == 0):
        stats.non_integer = True
    at = start - job.first  # the cell tables start at the job's first row
    n_counts = job.cells.n_counts_of(at, counts)
    keep = job.cells.keep_of(at, stop - job.first)
    stats.n_filtered = int((~keep).sum())
    bad = ~np.isfinite(n_counts) | (n_counts <= 0)
    stats.n_bad_counts = int((bad & keep).sum())
    keep &= ~bad
    gmap = job.gene_map
    # without duplicates to sum, the encoder reads file columns through the map directly
    vcounts, column_map = (gmap.apply(counts), None) if gmap.needs_sum else (counts, gmap.column)
    if not keep.all():
        vcounts = vcounts[keep]
        n_counts = n_counts[keep]
    cls_id = settings.vocab.cls_id if settings.special_token else None
    eos_id = settings.vocab.eos_id if settings.special_token else None
    enc = rank_value_encode(vcounts, n_counts, gmap.medians, gmap.token_ids, settings.max_genes,
                            cls_id, eos_id, settings.keep_counts, column_map=column_map)
    nonempty = enc.lengths > 0
    stats.n_empty = int((~nonempty).sum())
    if not nonempty.any():
        return None, stats
    if not nonempty.all():
        enc = enc.take(np.flatnonzero(nonempty))
    rows = np.flatnonzero(keep)[nonempty]
    batch = _to_record_batch(enc.values, enc.offsets, enc.lengths, enc.counts,
                             job.attrs.iloc[at:stop - job.first].iloc[rows], settings.vocab.token_dtype)
    return batch, stats


def _to_record_batch(tokens, offsets, lengths, counts, attrs: pd.DataFrame, token_dtype: str) -> pa.RecordBatch:
    arrays = {"input_ids": pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)),
                                                    pa.array(tokens.astype(token_dtype)))}
    if counts is not None:
        arrays["counts"] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(counts))
    for name in attrs.columns:
        arrays[name] = _attr_array(attrs[name])
    arrays["length"] = pa.array(lengths.astype(np.int64))
    return pa.RecordBatch.from_pydict(arrays)


def _attr_array(col: pd.Series) -> pa.Array:
    """A cell attribute as Arrow, missing values (NaN/None) kept as nulls."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        col = col.astype(object).where(col.notna(), None)
    if col.dtype == object:
        vals = [None if (v is None or (isinstance(v, float) and np.isnan(v))) else v for v in col.tolist()]
        return pa.array(vals)
    return pa.array(col.to_numpy(), from_pandas=True)


def encode_range(reader: CellReader, bounds: tuple[int, int], job: FileJob, settings: TokenizerSettings
                 ) -> tuple[list[pa.RecordBatch], ChunkStats, int]:
    """Encode the cells ``bounds[0]:bounds[1]`` chunk by chunk: the batches, their stats, the cells done."""
    batches, total = [], ChunkStats()
    for start, counts in reader.iter_counts(settings.chunk_size, bounds[0], bounds[1]):
        batch, stats = encode_chunk(counts, start, job, settings)
        if batch is not None:
            batches.append(batch)
        total.add(stats)
    return batches, total, bounds[1] - bounds[0]


def row_ranges(n_cells: int, settings: TokenizerSettings, start: int = 0, stop: int | None = None
               ) -> list[tuple[int, int]]:
    """The worker tasks of a file's rows ``start:stop``: ranges of :data:`TASK_CHUNKS` chunks."""
    stop = n_cells if stop is None else min(stop, n_cells)
    step = settings.chunk_size * TASK_CHUNKS
    return [(s, min(s + step, stop)) for s in range(start, stop, step)]


# ---- in worker processes: the settings and job arrive once, the file is opened once per worker
_WORKER: dict = {}


def worker_init(settings: TokenizerSettings, job: FileJob) -> None:
    _WORKER["settings"], _WORKER["job"] = settings, job
    _WORKER["reader"] = None


def worker_task(bounds: tuple[int, int]) -> tuple[list[pa.RecordBatch], ChunkStats, int]:
    settings, job = _WORKER["settings"], _WORKER["job"]
    if _WORKER.get("reader") is None:
        path, opts = job.reader_args
        _WORKER["reader"] = open_reader(path, job.file_format, **opts)
    return encode_range(_WORKER["reader"], bounds, job, settings)
