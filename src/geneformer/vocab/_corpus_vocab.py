"""A vocabulary from a corpus of files, in one run or as ``n`` shards merged afterwards.

Shard ``i/n`` sketches its slice of the cells (:func:`compute_gene_digests` with ``shard``) into
``OUTPUT.shards/shard-….npz``; :func:`merge_vocab_shards` merges the sketches in shard order and
writes the vocabulary as the single run would. Exact sketches (``exact=True``) hold every value,
so the merged medians are the single run's exactly; t-digests merge to estimates of the same
accuracy (with ``exact=None`` each shard switches to t-digests on its own slice's size).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from .._utils import (
    InputFileError,
    OptionError,
    Shard,
    fingerprint,
    mark_shard_done,
    parse_shard,
    refuse_existing,
    shard_done,
    shard_part,
)
from ..io import open_reader
from ._build import build_vocab, vocab_file_paths, write_vocab
from ._corpus import compute_gene_digests
from ._digests import GeneDigests
from ._vocab import GeneVocab

logger = logging.getLogger(__name__)

KIND = "vocab"
_DIGEST_KEYS = ("exact", "exact_limit", "max_centroids")


class CorpusVocab(NamedTuple):
    """What :func:`build_corpus_vocab` wrote: the vocabulary folder (or a shard's sketch) and its contents."""

    path: Path
    digests: GeneDigests
    vocab: GeneVocab | None  # None for a shard: the vocabulary comes with the merge


def _filter_key(gene_filter: Any) -> Any:
    if gene_filter is None or not callable(gene_filter):
        return None if gene_filter is None else sorted(str(g) for g in gene_filter)
    # a callable's settings (e.g. the CLI's gene-type filter), not its address
    return [getattr(gene_filter, "__qualname__", type(gene_filter).__qualname__), vars(gene_filter)
            if hasattr(gene_filter, "__dict__") else None]


def _input_keys(inputs: Sequence[Any], file_format: str | None) -> list:
    keys = []
    for src in inputs:
        with open_reader(src, file_format) as r:
            keys.append([Path(r.path).name if r.path else r.describe(), r.format, int(r.n_cells), int(len(r.var))])
    return keys


def _output_files(output: Path, build: dict) -> list[Path]:
    digest_file = [output / f"gene_digests_{build['name']}.npz"] if build["save_digests"] else []
    return vocab_file_paths(output, build["name"]) + digest_file


def _write(digests: GeneDigests, output: Path, build: dict, overwrite: bool) -> CorpusVocab:
    for p in build["saved"]:
        digests.merge(GeneDigests.load(p))
    vocab = build_vocab(digests, special_tokens=build["special_tokens"], min_cells=build["min_cells"])
    write_vocab(vocab, output, build["name"], counts=digests.counts(), overwrite=overwrite)
    if build["save_digests"]:
        digests.save(output / f"gene_digests_{build['name']}.npz")
    return CorpusVocab(output, digests, vocab)


def build_corpus_vocab(
    inputs: Sequence[Any],
    output: str | os.PathLike,
    *,
    name: str = "custom",
    special_tokens: bool = True,
    min_cells: int = 1,
    saved_digests: Sequence[str | os.PathLike] = (),
    save_digests: bool = False,
    shard: "Shard | str | tuple[int, int] | None" = None,
    overwrite: bool = False,
    **digest_options: Any,
) -> CorpusVocab:
    """Gene medians of a corpus and a vocabulary from them, written to the folder ``output``.

    Args:
        inputs: paths (or AnnData objects) of the corpus.
        output: the vocabulary folder (:func:`write_vocab`'s files, ``gene_stats_NAME.tsv``).
        name: suffix of the dictionary file names.
        special_tokens, min_cells: see :func:`build_vocab`.
        saved_digests: ``.npz`` sketches from earlier corpora (:meth:`GeneDigests.save`) to merge in.
        save_digests: also write ``gene_digests_NAME.npz``.
        shard: ``(i, n)`` or ``"i/n"``: sketch only the ``i``-th of ``n`` slices of the cells into a
            part; ``geneformer.shards.merge(output)`` then writes the vocabulary. A finished shard is
            not redone (unless ``overwrite``).
        overwrite: replace the files of an existing vocabulary in ``output`` (refused otherwise,
            before any work); with ``shard``, redo a finished shard.
        digest_options: the options of :func:`compute_gene_digests` (``exact``, ``nproc``,
            ``gene_filter``, ``chunk_size``, ...).
    """
    output = Path(output)
    build = {"name": name, "special_tokens": bool(special_tokens), "min_cells": int(min_cells),
             "save_digests": bool(save_digests), "saved": [str(p) for p in saved_digests]}
    shard = parse_shard(shard)
    inputs = list(inputs)
    if output.exists() and not output.is_dir():
        raise InputFileError(f"--output {output} is a file; give a folder for the vocabulary files.")
    if shard is None:
        refuse_existing(_output_files(output, build), overwrite)  # before any work
        digests = (compute_gene_digests(inputs, **digest_options) if inputs
                   else GeneDigests(exact=digest_options.get("exact")))
        return _write(digests, output, build, overwrite)
    if not inputs:
        raise OptionError("--shard needs input files (saved digests alone are merged in one run).")
    sketch = {k: digest_options[k] for k in _DIGEST_KEYS if k in digest_options}
    fp = fingerprint(kind=KIND, inputs=_input_keys(inputs, digest_options.get("file_format")), build=build,
                     options={k: v for k, v in digest_options.items() if k not in ("nproc", "progress", "gene_filter")},
                     gene_filter=_filter_key(digest_options.get("gene_filter")))
    part = shard_part(output, shard, ".npz")
    if not overwrite and shard_done(output, shard, fp) and part.is_file():
        logger.info("Shard %s of %s finished before: nothing to do.", shard, output)
        return CorpusVocab(part, GeneDigests.load(part), None)
    digests = compute_gene_digests(inputs, shard=shard, **digest_options)
    digests.save(part)
    mark_shard_done(output, shard, KIND, fp, build=build, sketch=sketch, n_cells=digests.n_cells)
    return CorpusVocab(part, digests, None)


def merge_vocab_shards(output: str | os.PathLike, records: list[dict]) -> Path:
    """Write the vocabulary folder ``output`` from the sketches of its finished shards (in shard order)."""
    output = Path(output)
    total = GeneDigests(**records[0].get("sketch", {}))
    for rec in records:
        total.merge(GeneDigests.load(shard_part(output, Shard(*rec["shard"]), ".npz")))
    result = _write(total, output, records[0]["build"], overwrite=True)  # merge() refused an existing output
    logger.info("Merged %d vocab shards (%d cells, %s medians) into %s.", len(records), total.n_cells,
                total.mode, output)
    return result.path
