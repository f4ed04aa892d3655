"""Sharded tokenization: shard ``i/n`` encodes its slice of the cells into a part, ``merge`` joins them.

Shard ``i/n`` reads the rows :func:`geneformer.io.shard_rows` gives it (whole chunks, balanced by
stored values) and writes them as a dataset folder under ``OUTPUT.shards/``; a completion marker
records the run's fingerprint. :func:`merge_token_shards` streams the parts' record batches, in
shard order, into ``OUTPUT`` through the same writer as the single run, so the merged dataset holds
the single run's rows, columns and types in the single run's order.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa

from .._utils import (
    Shard,
    atomic_folder,
    fingerprint,
    mark_shard_done,
    shard_done,
    shard_part,
)
from ..io import CellReader, open_reader, shard_rows
from ..vocab import GeneVocab
from ._options import TokenizerSettings
from ._writer import DatasetWriter

logger = logging.getLogger(__name__)

KIND = "tokenize"


def vocab_fingerprint(vocab: GeneVocab) -> str:
    """What of a vocabulary the encoding depends on, hashed (in the dictionaries' order, as loaded)."""
    parts = {}
    for name in ("token_dict", "gene_medians", "ensembl_mapping", "gene_name_id"):
        d = getattr(vocab, name)
        # joined text, not JSON: V2's 170,000-entry mapping would take seconds per shard
        parts[name] = ("\x00".join(map(str, d)) + "\x01" + "\x00".join(map(repr, d.values()))).encode()
    return fingerprint(**parts)


def _settings_key(settings: TokenizerSettings) -> dict:
    key = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name != "vocab"}
    key["vocab"] = vocab_fingerprint(settings.vocab)
    return key


def _input_key(reader: CellReader) -> list:
    # names and shapes, not absolute paths: nodes may mount the same files under other folders
    name = Path(reader.path).name if reader.path else reader.describe()
    return [name, reader.format, int(reader.n_cells), int(len(reader.var))]


@dataclasses.dataclass
class ShardPlan:
    """What shard ``shard`` of the run ``inputs`` → ``output`` reads, and where it writes."""

    output: Path
    shard: Shard
    readers: list[CellReader]  # the inputs it reads (the others are closed)
    rows: list[tuple[int, int]]  # per reader in ``readers``
    all_rows: list[tuple[int, int]]  # per input of the run
    fingerprint: str

    @property
    def part(self) -> Path:
        return shard_part(self.output, self.shard)

    def finished(self) -> bool:
        """True when this shard of this run is complete already (then nothing is left open)."""
        if not (shard_done(self.output, self.shard, self.fingerprint) and self.part.is_dir()):
            return False
        self.close()
        return True

    def mark_done(self, n_rows: int) -> None:
        mark_shard_done(self.output, self.shard, KIND, self.fingerprint, n_rows=int(n_rows),
                        n_cells=int(sum(b - a for a, b in self.all_rows)), rows=[list(r) for r in self.all_rows])
        logger.info("Shard %s: %d cells written to %s.", self.shard, n_rows, self.part)

    def close(self) -> None:
        for r in self.readers:
            r.close()


def plan_shard(inputs: Sequence[Any], output: str | os.PathLike, settings: TokenizerSettings, shard: Shard, *,
               file_format: str | None = None) -> ShardPlan:
    """Open every input (their sizes decide the slices), keep those ``shard`` reads."""
    readers: list[CellReader] = []
    try:
        for src in inputs:
            readers.append(src if isinstance(src, CellReader)
                           else open_reader(src, file_format, **settings.reader_options))
        rows = shard_rows(readers, settings.chunk_size, shard)
        fp = fingerprint(kind=KIND, inputs=[_input_key(r) for r in readers], settings=_settings_key(settings))
    except BaseException:
        for r in readers:
            r.close()
        raise
    mine = [k for k, (a, b) in enumerate(rows) if b > a]
    for k, r in enumerate(readers):
        if k not in mine:
            r.close()
    return ShardPlan(Path(output), shard, [readers[k] for k in mine], [rows[k] for k in mine], rows, fp)


def _part_batches(part: Path):
    """The record batches of one part, streamed from its memory-mapped Arrow file."""
    with pa.memory_map(str(part / DatasetWriter.ARROW_NAME)) as source:
        reader = pa.ipc.open_stream(source)
        yield reader.schema, None
        for batch in reader:
            yield None, batch


def merge_token_shards(output: str | os.PathLike, records: list[dict]) -> Path:
    """Write ``output`` from the parts of its finished tokenize shards (in shard order).

    Streams: one record batch is held at a time. The result equals the single run's dataset.
    """
    output = Path(output)
    with atomic_folder(output) as work:
        writer = DatasetWriter(work)
        first_schema = None
        try:
            for rec in records:
                shard = Shard(*rec["shard"])
                for schema, batch in _part_batches(shard_part(output, shard)):
                    if schema is not None:
                        first_schema = first_schema or schema
                    elif batch.num_rows:
                        writer.write(batch, f"shard {shard}")
            writer.finish(first_schema)
        finally:
            writer.close()
    logger.info("Merged %d tokenize shards (%d cells) into %s.", len(records), writer.n_rows, output)
    return output
