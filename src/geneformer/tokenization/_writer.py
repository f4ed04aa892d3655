"""Writing tokenized cells as a Hugging Face ``datasets`` folder, batch by batch."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable

import pyarrow as pa

from .._utils import InputFileError, atomic_folder, output_lock, refuse_existing


class DatasetWriter:
    """Streams record batches into the single Arrow file of a ``datasets`` folder (the format
    ``save_to_disk`` writes and ``load_from_disk`` reads), so the data are written once and never
    held in memory; :meth:`finish` adds the metadata files. :func:`write_dataset` runs it in a
    temporary folder that is renamed when complete."""

    ARROW_NAME = "data-00000-of-00001.arrow"

    def __init__(self, folder: str | os.PathLike):
        self._work = Path(folder)
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

    def close(self) -> None:
        """Close the Arrow file (also after a failure)."""
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    def finish(self, empty_schema: pa.Schema | None = None) -> None:
        """Complete the Arrow file and write ``dataset_info.json`` and ``state.json`` beside it.

        ``empty_schema`` gives the columns when no batch was written.
        """
        import datasets
        from datasets.utils import logging as ds_logging

        if self._schema is None:
            self._open(empty_schema)
        self.close()
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


def write_dataset(batches: Iterable[tuple[pa.RecordBatch, str]], output_path: str | os.PathLike, *,
                  overwrite: bool = False, empty_schema: pa.Schema | None = None) -> "datasets.Dataset":  # noqa: F821
    """Write ``(record_batch, source)`` pairs into a ``datasets`` folder at ``output_path``.

    An existing output is refused unless ``overwrite``, and so is an output that another run is
    writing (a lock beside it, held until the rename): two runs on one path never replace each
    other's output. The folder is written under a temporary name and renamed when complete, so a
    failure leaves nothing behind (and a killed run's temporary is removed by the next run).
    Returns the memory-mapped dataset.
    """
    import datasets

    with output_lock(output_path, "tokenize run"):
        output_path = refuse_existing(output_path, overwrite)
        with atomic_folder(output_path, replace=overwrite) as work:
            writer = DatasetWriter(work)
            try:
                for batch, source in batches:
                    writer.write(batch, source)
                writer.finish(empty_schema)
            finally:
                writer.close()
    return datasets.load_from_disk(str(output_path))
