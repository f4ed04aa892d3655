"""Tokenize single-cell files into rank value encoded Hugging Face datasets.

reader (row chunks) → gene map (vocabulary columns, duplicates summed) → rank value encoding →
Arrow record batches → ``datasets`` folder written under a temporary name and renamed when complete.
Memory stays flat in the number of cells: only one chunk per worker is held at a time.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from .._constants import MODEL_INPUT_SIZE
from .._utils import InputFileError
from ..io import FORMATS, CellReader, open_reader
from ..vocab import GeneMap, GeneVocab, as_vocab, file_gene_ids
from ._encode import rank_value_encode

logger = logging.getLogger(__name__)

#: rows handed to a worker at once (a multiple of the chunk size keeps workers busy)
_TASK_CHUNKS = 2


@dataclass
class TokenizerSettings:
    """Everything the encoding of one cell depends on."""

    vocab: GeneVocab
    model_input_size: int
    special_token: bool
    collapse_gene_ids: bool = True
    keep_counts: bool = False
    chunk_size: int = 512
    gene_id_column: str | None = None
    gene_symbol_column: str | None = None
    use_h5ad_index: bool = False
    layer: str | None = None
    attr_map: dict[str, str] = field(default_factory=dict)  # input column -> output column

    @property
    def max_genes(self) -> int:
        return self.model_input_size - 2 if self.special_token else self.model_input_size


@dataclass
class _FileJob:
    """What a worker needs to encode a range of one file's cells."""

    reader_args: tuple | None
    file_format: str | None
    gene_map: GeneMap
    n_counts: np.ndarray | None  # per cell of the file; None → computed from the counts
    keep: np.ndarray  # per cell of the file: passes filter_pass
    attrs: pd.DataFrame  # carried attributes (output names), one row per cell of the file


@dataclass
class FileReport:
    path: str
    n_cells: int = 0
    n_written: int = 0
    n_filtered: int = 0
    n_empty: int = 0
    n_bad_counts: int = 0
    non_integer: bool = False
    gene_overlap: float = 0.0
    n_counts_source: str = ""
    gene_source: str = ""


# ---------------------------------------------------------------------------------------------
# per-chunk work (runs in worker processes)

_WORKER: dict = {}


def _encode_chunk(counts: sp.csr_matrix, start: int, job: _FileJob, settings: TokenizerSettings
                  ) -> tuple[pa.RecordBatch | None, dict]:
    stop = start + counts.shape[0]
    stats = {"n_filtered": 0, "n_empty": 0, "n_bad_counts": 0, "non_integer": False}
    data = counts.data
    if data.dtype.kind == "f" and data.size and not np.all(np.mod(data[: 100_000], 1) == 0):
        stats["non_integer"] = True
    n_counts = job.n_counts[start:stop] if job.n_counts is not None else np.asarray(counts.sum(axis=1)).ravel()
    n_counts = np.asarray(n_counts, dtype=np.float64)
    keep = job.keep[start:stop].copy()
    stats["n_filtered"] = int((~keep).sum())
    bad = ~np.isfinite(n_counts) | (n_counts <= 0)
    stats["n_bad_counts"] = int((bad & keep).sum())
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
    lengths = enc.lengths
    nonempty = lengths > 0
    stats["n_empty"] = int((~nonempty).sum())
    if not nonempty.any():
        return None, stats
    offsets = enc.offsets
    if not nonempty.all():
        idx = np.flatnonzero(nonempty)
        sel = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in idx])
        tokens = enc.tokens[sel]
        cnts = enc.counts[sel] if enc.counts is not None else None
        lengths = lengths[nonempty]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
    else:
        tokens, cnts = enc.tokens, enc.counts
    rows = np.flatnonzero(keep)[nonempty]
    batch = _to_record_batch(tokens, offsets, lengths, cnts, job.attrs.iloc[start:stop].iloc[rows],
                             settings.vocab.token_dtype)
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


def _worker_init(settings: TokenizerSettings, job: _FileJob) -> None:
    _WORKER["settings"], _WORKER["job"] = settings, job
    _WORKER["reader"] = None


def _worker_task(bounds: tuple[int, int]) -> tuple[list[pa.RecordBatch], dict, int]:
    settings, job = _WORKER["settings"], _WORKER["job"]
    if _WORKER.get("reader") is None:
        path, opts = job.reader_args
        _WORKER["reader"] = open_reader(path, job.file_format, **opts)
    return _encode_range(_WORKER["reader"], bounds, job, settings)


def _encode_range(reader: CellReader, bounds: tuple[int, int], job: _FileJob, settings: TokenizerSettings):
    batches, total = [], {"n_filtered": 0, "n_empty": 0, "n_bad_counts": 0, "non_integer": False}
    for start, counts in reader.iter_counts(settings.chunk_size, bounds[0], bounds[1]):
        batch, stats = _encode_chunk(counts, start, job, settings)
        if batch is not None:
            batches.append(batch)
        for k, v in stats.items():
            total[k] = total[k] or v if k == "non_integer" else total[k] + v
    return batches, total, bounds[1] - bounds[0]


# ---------------------------------------------------------------------------------------------
# per-file preparation (main process)

def _prepare_file(reader: CellReader, settings: TokenizerSettings, report: FileReport) -> _FileJob:
    src = reader.describe()
    ids, gene_source = file_gene_ids(
        reader.var, settings.vocab, gene_id_column=settings.gene_id_column,
        gene_symbol_column=settings.gene_symbol_column, use_index=settings.use_h5ad_index, source=src,
    )
    gmap = GeneMap.build(ids, settings.vocab, collapse=settings.collapse_gene_ids, source=src)
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
    wanted = list(dict.fromkeys(list(settings.attr_map) + [c for c in ("n_counts", "filter_pass") if c in cols]))
    obs = reader.read_obs(wanted) if wanted else pd.DataFrame(index=range(reader.n_cells))
    if "n_counts" in obs.columns:
        n_counts = pd.to_numeric(obs["n_counts"], errors="coerce").to_numpy(dtype=np.float64)
        report.n_counts_source = "obs['n_counts']"
    else:
        n_counts = None
        report.n_counts_source = "the sum of all genes of each cell (no obs['n_counts'])"
    if "filter_pass" in obs.columns:
        fp = obs["filter_pass"]
        keep = np.array([v == 1 for v in fp.tolist()], dtype=bool)
    else:
        keep = np.ones(reader.n_cells, dtype=bool)
    attrs = pd.DataFrame({out: obs[inp].reset_index(drop=True) for inp, out in settings.attr_map.items()})
    if attrs.shape[1] == 0:
        attrs = pd.DataFrame(index=range(reader.n_cells))
    fmt = reader.format if reader.format in FORMATS else None
    return _FileJob(reader.reopen_args(), fmt, gmap, n_counts, keep, attrs)


# ---------------------------------------------------------------------------------------------
# the tokenizer


def tokenize_anndata(
    adata,
    vocab: GeneVocab | str | os.PathLike | None = "V2",
    *,
    gene_id_column: str | None = None,
    gene_symbol_column: str | None = None,
    custom_attr_name_dict: dict[str, str] | None = None,
    model_input_size: int | None = None,
    special_token: bool | None = None,
    nproc: int = 1,
    chunk_size: int = 512,
    layer: str | None = None,
    keep_counts: bool = False,
    collapse_gene_ids: bool = True,
    progress: bool = False,
):
    """Tokenize an in-memory AnnData; returns an in-memory ``datasets.Dataset``.

    ``vocab`` is a version name ("V1"/"V2"), a vocabulary folder, or a :class:`GeneVocab`. Input
    size and special tokens follow the vocabulary's version unless given. Genes come from
    ``var['ensembl_id']``, the index, or symbols (``gene_symbol_column``); ``n_counts`` from
    ``obs['n_counts']`` when present, else each cell's total.
    """
    tk = _make_tokenizer(vocab, gene_id_column=gene_id_column, gene_symbol_column=gene_symbol_column,
                         custom_attr_name_dict=custom_attr_name_dict, model_input_size=model_input_size,
                         special_token=special_token, nproc=nproc, chunk_size=chunk_size, layer=layer,
                         keep_counts=keep_counts, collapse_gene_ids=collapse_gene_ids)
    return tk.tokenize_anndata_in_memory(adata, progress=progress)


def tokenize_files(
    inputs: Sequence[str | os.PathLike],
    output_path: str | os.PathLike,
    vocab: GeneVocab | str | os.PathLike | None = "V2",
    *,
    file_format: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **options,
):
    """Tokenize files into one dataset folder at ``output_path``; see :func:`tokenize_anndata` for options."""
    tk = _make_tokenizer(vocab, **options)
    return tk.tokenize_files(list(inputs), output_path, file_format=file_format, overwrite=overwrite,
                             progress=progress)


def _make_tokenizer(vocab, *, model_input_size=None, special_token=None, **kw):
    v = as_vocab(vocab)
    version = v.version if v.version in ("V1", "V2") else ("V2" if v.has_cls_eos else "V1")
    if special_token is None:
        special_token = v.has_cls_eos
    if model_input_size is None:
        model_input_size = MODEL_INPUT_SIZE["V2"] if special_token else MODEL_INPUT_SIZE["V1"]
    from ..compat._tokenizer import TranscriptomeTokenizer  # to be inverted: the core must not import compat

    tk = TranscriptomeTokenizer(model_input_size=model_input_size, special_token=special_token,
                                model_version="V2", vocab=v, **kw)
    tk.model_version = version
    return tk
