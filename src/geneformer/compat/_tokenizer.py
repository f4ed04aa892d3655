"""TODO docstring."""

from __future__ import annotations

import glob
import itertools
import logging
import multiprocessing as mp
import os
import warnings
from collections import deque
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from .._constants import MODEL_INPUT_SIZE
from .._utils import InputFileError, check_model_version
from ..io import CellReader, open_reader
from ..tokenization._pipeline import (
    _TASK_CHUNKS,
    FileReport,
    TokenizerSettings,
    _encode_range,
    _FileJob,
    _prepare_file,
    _worker_init,
    _worker_task,
)
from ..tokenization._writer import DatasetWriter
from ..vocab import GeneVocab

logger = logging.getLogger(__name__)


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
        model_version = check_model_version(model_version)
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
