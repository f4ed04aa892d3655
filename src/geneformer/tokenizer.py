"""Tokenize single-cell files into rank value encoded Hugging Face datasets.

reader (row chunks) → gene map (vocabulary columns, duplicates summed) → rank value encoding →
Arrow record batches → ``datasets`` folder written under a temporary name and renamed when complete.
Memory stays flat in the number of cells: only one chunk per worker is held at a time.
"""

from __future__ import annotations

import glob
import itertools
import json
import logging
import multiprocessing as mp
import os
import shutil
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp
from tqdm.auto import tqdm

from .encode import rank_value_encode
from .genes import GeneMap, file_gene_ids
from .io import FORMATS, CellReader, InputFileError, open_reader
from .vocab import MODEL_INPUT_SIZE, GeneVocab, as_vocab, check_version

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

class DatasetWriter:
    """Streams record batches into a ``datasets`` folder, written under a temporary name and renamed.

    The batches go straight into the folder's single Arrow file (the format ``save_to_disk``
    writes and ``load_from_disk`` reads), so the data are written once and never held in memory.
    """

    ARROW_NAME = "data-00000-of-00001.arrow"

    def __init__(self, output_path: Path, overwrite: bool = False):
        self.output_path = Path(output_path)
        if self.output_path.exists() and not overwrite:
            raise FileExistsError(
                f"Output {self.output_path} already exists. Choose another prefix or folder, "
                "or pass overwrite=True (--overwrite) to replace it."
            )
        parent = self.output_path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(f"Cannot create output folder {parent}: {exc}") from exc
        self._work = parent / f".{self.output_path.name}.tmp-{os.getpid()}"
        shutil.rmtree(self._work, ignore_errors=True)
        try:
            self._work.mkdir()
        except OSError as exc:
            raise OSError(f"Cannot write to output folder {parent}: {exc}") from exc
        self._sink = None
        self._schema: pa.Schema | None = None
        self.n_rows = 0

    def _open(self, schema: pa.Schema) -> None:
        from datasets import Features

        # the Hugging Face feature types travel in the Arrow schema's metadata
        self._schema = Features.from_arrow_schema(schema).arrow_schema
        self._sink = pa.ipc.new_stream(str(self._work / self.ARROW_NAME), self._schema)

    def write(self, batch: pa.RecordBatch, source: str = "") -> None:
        if self._schema is None:
            self._open(batch.schema)
        if not batch.schema.equals(self._schema, check_metadata=False):
            batch = self._conform(batch, source)
        self._sink.write_batch(pa.RecordBatch.from_arrays(batch.columns, schema=self._schema))
        self.n_rows += batch.num_rows

    def _conform(self, batch: pa.RecordBatch, source: str) -> pa.RecordBatch:
        if batch.schema.names != self._schema.names:
            raise InputFileError(f"{source} carries columns {batch.schema.names}, the first file {self._schema.names}.")
        cols = []
        for name, arr in zip(batch.schema.names, batch.columns):
            target = self._schema.field(name).type
            if arr.type == target:
                cols.append(arr)
                continue
            try:
                cols.append(arr.cast(target))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise InputFileError(
                    f"Column {name!r} of {source} has type {arr.type}, but {target} in the first file."
                ) from exc
        return pa.RecordBatch.from_arrays(cols, schema=self._schema)

    def finish(self, empty_schema: pa.Schema | None = None):
        """Complete the folder and move it to its final name; returns the memory-mapped dataset."""
        import datasets
        from datasets.utils import logging as ds_logging

        if self._sink is None:
            self._open(empty_schema)
        self._sink.close()
        # dataset_info.json and state.json as save_to_disk writes them, from an empty dataset
        meta = self._work / "meta"
        was_enabled = ds_logging.is_progress_bar_enabled()
        ds_logging.disable_progress_bar()
        try:
            datasets.Dataset(self._schema.empty_table()).save_to_disk(str(meta))
        finally:
            if was_enabled:
                ds_logging.enable_progress_bar()
        os.replace(meta / "dataset_info.json", self._work / "dataset_info.json")
        shutil.rmtree(meta)
        state = {
            "_data_files": [{"filename": self.ARROW_NAME}],
            "_fingerprint": os.urandom(8).hex(),
            "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
            "_output_all_columns": False, "_split": None,
        }
        (self._work / "state.json").write_text(json.dumps(state, indent=2))
        if self.output_path.exists():
            shutil.rmtree(self.output_path)
        os.replace(self._work, self.output_path)
        return datasets.load_from_disk(str(self.output_path))

    def abort(self) -> None:
        if self._sink is not None:
            try:
                self._sink.close()
            except Exception:  # noqa: BLE001 - best effort cleanup
                pass
        shutil.rmtree(self._work, ignore_errors=True)


class TranscriptomeTokenizer:
    """Rank value encoding of single-cell files into Hugging Face datasets (reference-compatible).

    Arguments follow the reference ``TranscriptomeTokenizer``; ``model_version="V1"`` selects the
    V1 dictionaries, 2,048 input size and no special tokens (overriding the dictionary files, as the
    reference does). Extra keyword arguments: ``gene_id_column``, ``gene_symbol_column``, ``layer``,
    ``vocab`` (a :class:`GeneVocab`, overriding the dictionary files).
    """

    def __init__(
        self,
        custom_attr_name_dict: dict[str, str] | None = None,
        nproc: int = 1,
        chunk_size: int = 512,
        model_input_size: int = 4096,
        special_token: bool = True,
        collapse_gene_ids: bool = True,
        use_h5ad_index: bool = False,
        keep_counts: bool = False,
        model_version: str = "V2",
        gene_median_file: str | os.PathLike | None = None,
        token_dictionary_file: str | os.PathLike | None = None,
        gene_mapping_file: str | os.PathLike | None = None,
        *,
        vocab: GeneVocab | None = None,
        gene_id_column: str | None = None,
        gene_symbol_column: str | None = None,
        layer: str | None = None,
    ):
        model_version = check_version(model_version)
        if model_version == "V1":
            if (model_input_size, special_token) != (2048, False) and (model_input_size, special_token) != (4096, True):
                logger.info("model_version='V1': using model_input_size=2048 and no special tokens.")
            model_input_size, special_token = MODEL_INPUT_SIZE["V1"], False
            if any(f is not None for f in (gene_median_file, token_dictionary_file, gene_mapping_file)):
                logger.warning("model_version='V1' uses the V1 dictionaries; the dictionary files given are ignored.")
            gene_median_file = token_dictionary_file = gene_mapping_file = None
        if vocab is None:
            vocab = GeneVocab.load(model_version, token_dictionary_file=token_dictionary_file,
                                   gene_median_file=gene_median_file, gene_mapping_file=gene_mapping_file)
        if special_token and not vocab.has_cls_eos:
            raise ValueError("special_token=True needs <cls> and <eos> in the token dictionary; "
                             "use model_version='V1' or special_token=False for a V1-style vocabulary.")
        if not special_token and vocab.has_cls_eos:
            logger.warning("The token dictionary has <cls>/<eos> but special_token=False: cells get no <cls>/<eos>.")
        if int(chunk_size) < 1 or int(nproc) < 1:
            raise ValueError("chunk_size and nproc must be positive integers.")
        self.custom_attr_name_dict = dict(custom_attr_name_dict or {})
        self.nproc = int(nproc)
        self.chunk_size = int(chunk_size)
        self.model_input_size = int(model_input_size)
        self.special_token = bool(special_token)
        self.collapse_gene_ids = bool(collapse_gene_ids)
        self.use_h5ad_index = bool(use_h5ad_index)
        self.keep_counts = bool(keep_counts)
        self.model_version = model_version
        self.vocab = vocab
        self.gene_token_dict = vocab.token_dict
        self.gene_median_dict = vocab.gene_medians
        self.settings = TokenizerSettings(
            vocab=vocab, model_input_size=self.model_input_size, special_token=self.special_token,
            collapse_gene_ids=self.collapse_gene_ids, keep_counts=self.keep_counts, chunk_size=self.chunk_size,
            gene_id_column=gene_id_column, gene_symbol_column=gene_symbol_column,
            use_h5ad_index=self.use_h5ad_index, layer=layer, attr_map=self.custom_attr_name_dict,
        )
        self.reports: list[FileReport] = []

    # ---- reference entry point ----------------------------------------------------------------
    def tokenize_data(
        self,
        data_directory: str | os.PathLike,
        output_directory: str | os.PathLike,
        output_prefix: str,
        file_format: str = "loom",
        input_identifier: str = "",
        use_generator: bool = False,
        overwrite: bool = False,
    ):
        """Tokenize every ``*.{file_format}`` file of ``data_directory`` into
        ``{output_directory}/{output_prefix}.dataset``. ``use_generator`` is accepted for compatibility."""
        del use_generator  # batches are always streamed
        data_directory = Path(data_directory)
        if not data_directory.is_dir():
            raise InputFileError(f"data_directory {data_directory} is not a folder.")
        ext = {"10x_h5": "h5", "10x_mtx": "mtx"}.get(file_format, file_format)
        pattern = f"*{input_identifier}*.{ext}" if input_identifier else f"*.{ext}"
        files = sorted(glob.glob(str(data_directory / pattern)))
        if not files:
            raise InputFileError(f"No {pattern} files in {data_directory}. Check file_format={file_format!r}.")
        return self.tokenize_files(files, Path(output_directory) / _dataset_name(output_prefix),
                                   file_format=file_format, overwrite=overwrite)

    # ---- our entry points ---------------------------------------------------------------------
    def tokenize_files(self, inputs: Sequence, output_path: str | os.PathLike, file_format: str | None = None,
                       overwrite: bool = False, progress: bool = True):
        """Tokenize files (or AnnData objects) in order into one dataset saved at ``output_path``."""
        writer = DatasetWriter(Path(output_path), overwrite=overwrite)
        try:
            for batch, source in self.iter_batches(inputs, file_format=file_format, progress=progress):
                writer.write(batch, source)
            ds = writer.finish(self._empty_schema())
        except BaseException:
            writer.abort()
            raise
        self._log_summary(output_path)
        return ds

    def tokenize_anndata_in_memory(self, adata, progress: bool = False):
        """Tokenize an in-memory AnnData into an in-memory ``datasets.Dataset``."""
        import datasets

        batches = [b for b, _ in self.iter_batches([adata], progress=progress)]
        table = pa.Table.from_batches(batches) if batches else self._empty_schema().empty_table()
        self._log_summary(None)
        return datasets.Dataset(table)

    def iter_batches(self, inputs: Iterable, file_format: str | None = None, progress: bool = True):
        """Yield ``(record_batch, source)`` for every chunk of every input, in input order."""
        self.reports = []
        for source in inputs:
            opts = {"layer": self.settings.layer} if self.settings.layer is not None else {}
            reader = open_reader(source, file_format, **opts) if not isinstance(source, CellReader) else source
            report = FileReport(path=reader.describe(), n_cells=reader.n_cells)
            self.reports.append(report)
            with reader:
                job = _prepare_file(reader, self.settings, report)
                logger.info("%s: %d cells; genes from %s (%.1f%% in the vocabulary); n_counts from %s.",
                            report.path, reader.n_cells, report.gene_source, 100 * report.gene_overlap,
                            report.n_counts_source)
                bar = tqdm(total=reader.n_cells, desc=f"Tokenizing {Path(report.path).name}", unit="cells",
                           disable=not progress, leave=False)
                try:
                    for batches, stats in self._run(reader, job, bar):
                        report.n_filtered += stats["n_filtered"]
                        report.n_empty += stats["n_empty"]
                        report.n_bad_counts += stats["n_bad_counts"]
                        report.non_integer |= stats["non_integer"]
                        for b in batches:
                            report.n_written += b.num_rows
                            yield b, report.path
                finally:
                    bar.close()
            if report.non_integer:
                warnings.warn(f"{report.path} holds non-integer values: the rank value encoding expects raw "
                              "counts (undo any normalisation or log transform first).", stacklevel=2)

    def _run(self, reader: CellReader, job: _FileJob, bar):
        n = reader.n_cells
        step = self.chunk_size * _TASK_CHUNKS
        bounds = [(s, min(s + step, n)) for s in range(0, n, step)]
        use_pool = self.nproc > 1 and len(bounds) > 1 and job.reader_args is not None
        if not use_pool:
            for b in bounds:
                batches, stats, done = _encode_range(reader, b, job, self.settings)
                bar.update(done)
                yield batches, stats
            return
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(self.nproc, initializer=_worker_init, initargs=(self.settings, job)) as pool:
            # a bounded window of tasks in flight keeps memory flat when the writer falls behind
            pending: deque = deque()
            tasks = iter(bounds)
            for b in itertools.islice(tasks, 2 * self.nproc):
                pending.append(pool.apply_async(_worker_task, (b,)))
            while pending:
                batches, stats, done = pending.popleft().get()
                nxt = next(tasks, None)
                if nxt is not None:
                    pending.append(pool.apply_async(_worker_task, (nxt,)))
                bar.update(done)
                yield batches, stats

    def _empty_schema(self) -> pa.Schema:
        fields = [pa.field("input_ids", pa.list_(pa.from_numpy_dtype(np.dtype(self.vocab.token_dtype))))]
        if self.keep_counts:
            fields.append(pa.field("counts", pa.list_(pa.float64())))
        fields += [pa.field(out, pa.string()) for out in self.custom_attr_name_dict.values()]
        fields.append(pa.field("length", pa.int64()))
        return pa.schema(fields)

    def _log_summary(self, output_path) -> None:
        for r in self.reports:
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


def _dataset_name(prefix: str) -> str:
    return prefix if prefix.endswith(".dataset") else f"{prefix}.dataset"


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


def _make_tokenizer(vocab, *, model_input_size=None, special_token=None, **kw) -> TranscriptomeTokenizer:
    v = as_vocab(vocab)
    version = v.version if v.version in ("V1", "V2") else ("V2" if v.has_cls_eos else "V1")
    if special_token is None:
        special_token = v.has_cls_eos
    if model_input_size is None:
        model_input_size = MODEL_INPUT_SIZE["V2"] if special_token else MODEL_INPUT_SIZE["V1"]
    tk = TranscriptomeTokenizer(model_input_size=model_input_size, special_token=special_token,
                                model_version="V2", vocab=v, **kw)
    tk.model_version = version
    return tk
