"""TODO docstring."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa

from .._utils import InputFileError


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
