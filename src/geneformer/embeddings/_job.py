"""Embedding a dataset into a file at any scale: chunks on disk, shards, ranks, one merge.

:func:`embed_to_file` is what ``geneformer embed`` does. The cells it embeds (after ``max_ncells``:
shuffled, kept and sorted as the reference does) are cut into

* **shards** (``shard=(i, n)``, ``--shard I/N``): contiguous slices balanced by attention cost
  (Σ L²), each an independent job whose part is the folder ``X.shards/shard-i-of-n/``;
* **chunks** of ``chunk_rows`` consecutive cells inside a shard: each is embedded (length-sorted
  batches within the chunk) and written as one parquet file in cell order, atomically, so an
  interrupted shard resumes at the first missing chunk and memory holds one chunk at a time;
* **ranks** (``torchrun``): the chunks of a shard are dealt to the processes by cost, each on its
  own device; rank 0 waits for the others (a barrier) and finishes.

A whole run (no shard) writes ``X`` from its chunks itself; shards leave a completion marker and
:func:`merge_embedding_shards` (``geneformer merge X``) writes ``X`` from every shard's chunks in
order. Parquet and CSV are written chunk by chunk; ``.h5ad`` output streams the embeddings into
the file's ``obsm`` (and ``X`` for dataset input) through h5py; ``.pt`` gathers the tensor.
Gene mode keeps per-token sums and counts (a fixed size whatever the number of cells) per rank.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .._constants import ROW_COLUMN
from .._utils import (
    InputError,
    Shard,
    ShardError,
    assign_balanced,
    atomic_path,
    attention_cost,
    barrier,
    check_choice,
    check_positive_int,
    doc_params,
    fingerprint,
    init_distributed,
    mark_shard_done,
    model_digest,
    parse_shard,
    progress_bar,
    rank,
    resolve_device,
    shard_bounds,
    shard_done,
    shard_part,
    shards_dir,
    world_size,
    write_csv,
    write_json,
    write_parquet,
)
from .._utils._docs import doc_batch_size, doc_device, doc_dtype, doc_emb_layer, doc_max_ncells, doc_progress
from ..data import as_sequences, check_columns, column_values, downsample_and_sort, lengths_of, load_tokenized
from . import _outputs as outputs
from ._core import GeneEmbeddings, SpecialTokens, cell_embeddings, gene_embeddings

logger = logging.getLogger(__name__)

__all__ = ["CHUNK_ROWS", "embed_to_file", "merge_embedding_shards"]

SHARD_KIND = "embed"
CHUNK_ROWS = 4096  # cells per chunk file: one chunk's tokens and embeddings are all a process holds
_OBS_ROW = "__obs_row__"  # the cell's obs position in the source AnnData (h5ad output only)
_RUN_FILE = "run.json"
_WHOLE = Shard(0, 1)


@doc_params(emb_layer=doc_emb_layer, max_ncells=doc_max_ncells, batch_size=doc_batch_size, device=doc_device,
            dtype=doc_dtype, progress=doc_progress)
def embed_to_file(
    model: Any,
    data: Any,
    output: str | os.PathLike,
    *,
    mode: str = "cell",
    emb_layer: int = -1,
    labels: Sequence[str] = (),
    max_ncells: int | None = None,
    vocab: Any = None,
    batch_size: int | None = None,
    device: Any = None,
    dtype: Any = None,
    fmt: str | None = None,
    adata: Any = None,
    shard: Any = None,
    resume: bool = True,
    chunk_rows: int = CHUNK_ROWS,
    gene_names: str | None = None,
    progress: bool | None = None,
) -> Path | None:
    """Embed the cells of a tokenized dataset into ``output`` (.parquet, .csv, .h5ad or .pt).

    Cell modes write one row per cell (columns 0..H-1, then ``labels``), in dataset order (after
    ``max_ncells``, in the reference's length-sorted order); gene mode one row per gene (its mean
    state over the cells). Peak memory does not grow with the number of cells (beyond an .h5ad
    source or a .pt output, which are held whole).

    Args:
        model: a loaded model.
        data: a tokenized ``datasets.Dataset`` or its folder.
        output: the output file; its format from ``fmt`` or the extension.
        mode: "cell", "cls" or "gene".
        {emb_layer}
        labels: dataset columns carried into the cell table.
        {max_ncells} None: every cell, in dataset order.
        vocab: the ``<cls>``/``<eos>`` ids ("V1"/"V2", a token dictionary, a ``GeneVocab``; None: the model's).
        {batch_size}
        {device} Under ``torchrun`` each process uses its own GPU (``LOCAL_RANK``).
        {dtype}
        fmt: "h5ad", "parquet", "csv" or "pt" (None/"auto": from the extension).
        adata: for .h5ad output, the AnnData (or its .h5ad path; a path for a sharded run) the
            dataset was tokenized from: the embeddings go into its ``obsm['X_geneformer']`` (NaN
            for cells not embedded). None: a new AnnData of the embeddings and labels.
        shard: ``(i, n)`` or ``"i/n"``: embed only the i-th of n cost-balanced slices of the cells
            and record it; ``geneformer.shards.merge(output)`` writes ``output`` once all are done.
        resume: keep the chunks an interrupted run left (False: redo them).
        chunk_rows: cells per chunk (the unit of resuming and of memory).
        {progress}

    Returns:
        ``output`` (None for a shard, and on ranks other than 0 of a multi-process run).
    """
    check_choice("mode", mode, ("cell", "cls", "gene"))
    check_positive_int("chunk_rows", chunk_rows)
    fmt = outputs.output_format(output, fmt)
    output, shard = Path(output), parse_shard(shard)
    if mode == "gene" and fmt == "h5ad" and adata is None:
        raise InputError("Gene embeddings go to .h5ad only for .h5ad input; use .parquet or .csv.")
    if shard is not None and adata is not None and not isinstance(adata, (str, os.PathLike)):
        raise InputError("A sharded run writes into the .h5ad it reads at merge time: pass adata as its path.")
    init_distributed()
    this_rank, world = rank(), world_size()
    ds = load_tokenized(data)
    labels = check_columns(ds, labels)
    if max_ncells is not None:
        ds = downsample_and_sort(ds, max_ncells)
    lengths = lengths_of(ds)
    if len(lengths) == 0:
        raise InputError("The dataset has no cells.")
    from ..models import model_vocab_version

    special = SpecialTokens.for_model(model, vocab)
    meta = {"mode": mode, "fmt": fmt, "labels": labels, "hidden": int(model.config.hidden_size),
            "n_cells": int(len(lengths)), "fresh_adata": adata is None or max_ncells is not None,
            "adata": os.path.abspath(adata) if isinstance(adata, (str, os.PathLike)) else None,
            "vocab_version": model_vocab_version(model), "gene_names": gene_names}
    fp = fingerprint(settings={**meta, "emb_layer": emb_layer, "max_ncells": max_ncells, "chunk_rows": chunk_rows,
                               "special": [special.cls_id, special.eos_id, special.pad_id]},
                     model=model_digest(model), cells=_cells_digest(ds, lengths))
    if shard is not None and resume and shard_done(output, shard, fp):
        logger.info("Shard %s of %s is already complete; nothing to do.", shard, output)
        return None
    work = shard_part(output, shard or _WHOLE)
    _open_work(work, fp, resume, this_rank)
    lo, hi = shard_bounds(attention_cost(lengths), shard)
    chunks = [(a, min(a + chunk_rows, hi)) for a in range(lo, hi, chunk_rows)]
    dev = resolve_device(device)
    model.to(dev)
    kw = dict(emb_layer=emb_layer, vocab=special, batch_size=batch_size, device=dev, amp_dtype=dtype, progress=False)
    costs = [attention_cost(lengths[a:b]).sum() for a, b in chunks]
    mine = assign_balanced(costs, world)[this_rank].tolist() if chunks else []
    t0 = time.perf_counter()
    try:
        if mode == "gene":
            _gene_chunks(model, ds, chunks, mine, _genes_path(work, this_rank, world), kw, progress)
        else:
            _cell_chunks(model, ds, chunks, mine, work, mode, labels, meta["fresh_adata"] or fmt != "h5ad", kw,
                         progress)
    except BaseException:
        _drop_if_unstarted(work, output, this_rank)  # bad input found in the first batch leaves no trace
        raise
    logger.info("rank %d embedded %d chunk(s) in %.1f s", this_rank, len(mine), time.perf_counter() - t0)
    if world > 1:
        barrier()
        if this_rank != 0:
            return None
    if shard is not None:
        mark_shard_done(output, shard, SHARD_KIND, fp, **meta, n_chunks=len(chunks), ranks=world)
        logger.info("Shard %s done (cells %d-%d); merge with: geneformer merge %s", shard, lo, hi, output)
        return None
    _assemble(output, {**meta, "work": [str(work)], "chunks": [len(chunks)], "ranks": [world]}, adata)
    shutil.rmtree(work, ignore_errors=True)
    _remove_if_empty(shards_dir(output))
    return output


def merge_embedding_shards(output: str | os.PathLike, records: list[dict]) -> Path:
    """``output`` from the finished shards of one ``embed`` run (``records``: their completion
    markers in shard order, see ``geneformer.shards.merge``): what the single run writes."""
    output = Path(output)
    first = records[0]
    # the parts lie beside the output that merge is given (wherever the shards ran from)
    work = [str(shard_part(output, Shard(*r["shard"]))) for r in records]
    meta = {**first, "work": work, "chunks": [int(r["n_chunks"]) for r in records],
            "ranks": [int(r["ranks"]) for r in records]}
    _assemble(output, meta, first.get("adata"))
    return output


# ---------------------------------------------------------------------------------------------
# computing the chunks
# ---------------------------------------------------------------------------------------------
def _cells_digest(ds: Any, lengths: np.ndarray) -> bytes:
    """The cells' identity: every length and the tokens of a strided sample of cells (cheap, and the
    same in every process, unlike an in-memory dataset's random fingerprint)."""
    pick = np.unique(np.linspace(0, len(lengths) - 1, num=min(len(lengths), 64)).astype(np.int64))
    sample = as_sequences(ds.select(pick.tolist()))
    return lengths.tobytes() + sample.values.tobytes()


def _open_work(work: Path, fp: str, resume: bool, this_rank: int) -> None:
    """The part folder of this run: reused when it holds the same run, else an error (resume) or cleared."""
    run_file = work / _RUN_FILE
    if run_file.is_file():
        import json

        same = json.loads(run_file.read_text()).get("fingerprint") == fp
        if same and resume:
            return
        if resume:
            raise ShardError(f"{work} holds a part of a different run (other data, model or settings). "
                             "Use another output, or start afresh (resume=False / --overwrite).")
        if this_rank == 0:
            shutil.rmtree(work, ignore_errors=True)
    if world_size() > 1:
        barrier()  # nobody writes before rank 0 has cleared a stale folder
    work.mkdir(parents=True, exist_ok=True)
    if this_rank == 0:
        write_json(run_file, {"fingerprint": fp})


def _drop_if_unstarted(work: Path, output: str | os.PathLike, this_rank: int) -> None:
    """Remove a part folder that holds no finished chunk yet (nothing to resume)."""
    if this_rank == 0 and work.is_dir() and {p.name for p in work.iterdir()} <= {_RUN_FILE}:
        shutil.rmtree(work, ignore_errors=True)
        _remove_if_empty(shards_dir(output))


def _chunk_path(work: Path, k: int) -> Path:
    return work / f"chunk-{k:06d}.parquet"


def _cell_chunks(model, ds, chunks, mine, work, mode, labels, fresh, kw, progress) -> None:
    import pyarrow as pa

    todo = [k for k in mine if not _chunk_path(work, k).is_file()]
    if len(todo) < len(mine):
        logger.info("Resuming: %d of %d chunk(s) already done.", len(mine) - len(todo), len(mine))
    bar = progress_bar(total=sum(chunks[k][1] - chunks[k][0] for k in todo), desc=f"{mode} embeddings",
                       unit="cell", progress=progress)
    try:
        for k in todo:
            a, b = chunks[k]
            sub = ds.select(range(a, b))
            embs = cell_embeddings(model, as_sequences(sub), mode=mode, **kw)
            cols = {str(j): pa.array(embs[:, j]) for j in range(embs.shape[1])}
            for c in labels:
                cols[c] = pa.array(column_values(sub, c))
            if not fresh:
                if ROW_COLUMN not in sub.column_names:
                    raise InputError(f"The dataset has no {ROW_COLUMN!r} column to place the embeddings in the AnnData.")
                cols[_OBS_ROW] = pa.array(np.asarray(column_values(sub, ROW_COLUMN), dtype=np.int64))
            write_parquet(_chunk_path(work, k), pa.table(cols))
            _chunk_done_hook(k)
            bar.update(b - a)
    finally:
        bar.close()


def _chunk_done_hook(k: int) -> None:
    """Called after each chunk is safely on disk (tests replace it to simulate a crash)."""


def _genes_path(work: Path, this_rank: int, world: int) -> Path:
    # named by the number of ranks too: which chunks a rank sums depends on it
    return work / f"genes-rank{this_rank:05d}-of-{world:05d}.npz"


def _gene_chunks(model, ds, chunks, mine, path, kw, progress) -> None:
    """Per-token sums and counts over this rank's chunks, kept in one file per rank."""
    if path.is_file():
        return
    vocab_size, hidden = int(model.config.vocab_size), int(model.config.hidden_size)
    sums = np.zeros((vocab_size, hidden), dtype=np.float64)
    counts = np.zeros(vocab_size, dtype=np.float64)
    bar = progress_bar(total=sum(chunks[k][1] - chunks[k][0] for k in mine), desc="gene embeddings", unit="cell",
                       progress=progress)
    for k in mine:
        a, b = chunks[k]
        g = gene_embeddings(model, as_sequences(ds.select(range(a, b))), **kw)
        sums[g.token_ids] += g.sums
        counts[g.token_ids] += g.counts
        bar.update(b - a)
    bar.close()
    seen = np.flatnonzero(counts)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, tokens=seen, sums=sums[seen], counts=counts[seen])

    with atomic_path(path) as tmp:
        write(tmp)


# ---------------------------------------------------------------------------------------------
# writing the output from the chunks
# ---------------------------------------------------------------------------------------------
def _iter_chunks(meta: dict) -> Iterator[Any]:
    """Every chunk of every part, in cell order, as Arrow tables (naming a missing one)."""
    import pyarrow.parquet as pq

    for work, n in zip(meta["work"], meta["chunks"]):
        for k in range(n):
            path = _chunk_path(Path(work), k)
            if not path.is_file():
                raise ShardError(f"Chunk {path} is missing; rerun the shard that wrote {work}.")
            yield pq.read_table(path)


def _assemble(output: Path, meta: dict, adata: Any) -> None:
    if meta["mode"] == "gene":
        _write_genes(output, meta, adata)
    elif meta["fmt"] == "parquet":
        _stream_parquet(output, meta)
    elif meta["fmt"] == "csv":
        _stream_csv(output, meta)
    elif meta["fmt"] == "h5ad":
        _stream_h5ad(output, meta, adata)
    else:
        import pandas as pd

        frames = [t.to_pandas() for t in _iter_chunks(meta)]
        outputs.write_tensor(pd.concat(frames, ignore_index=True), output)
    logger.info("Wrote %s", output)


def _stream_parquet(output: Path, meta: dict) -> None:
    import pyarrow.parquet as pq

    writer = None
    with atomic_path(output) as tmp:
        try:
            for table in _iter_chunks(meta):
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()


def _stream_csv(output: Path, meta: dict) -> None:
    """Columns 0..H-1, then the labels (no index column), one chunk at a time."""
    start = 0
    with atomic_path(output) as tmp, open(tmp, "w", newline="") as fh:
        for table in _iter_chunks(meta):
            df = table.to_pandas()
            df.index = range(start, start + len(df))
            df.to_csv(fh, header=start == 0, index=False)  # the columns say what each is: no unnamed index
            start += len(df)


def _stream_h5ad(output: Path, meta: dict, adata: Any) -> None:
    """An AnnData holding the embeddings in ``obsm['X_geneformer']``, written chunk by chunk.

    Dataset input (or ``max_ncells``): a new AnnData (X = the embeddings, obs = the labels); else the
    source AnnData with NaN rows for the cells that were not embedded."""
    import anndata as ad
    import h5py
    import pandas as pd
    import pyarrow.parquet as pq

    hidden, n = int(meta["hidden"]), int(meta["n_cells"])
    emb_cols = [str(j) for j in range(hidden)]
    if meta["fresh_adata"]:
        labels = {c: [] for c in meta["labels"]}
        for work, k in ((w, k) for w, c in zip(meta["work"], meta["chunks"]) for k in range(c)):
            t = pq.read_table(_chunk_path(Path(work), k), columns=meta["labels"]) if meta["labels"] else None
            for c in meta["labels"]:
                labels[c].extend(t.column(c).to_pylist())
        obs = pd.DataFrame({c: np.asarray(v) for c, v in labels.items()}, index=[str(i) for i in range(n)])
        skeleton = ad.AnnData(obs=obs, var=pd.DataFrame(index=emb_cols))
        targets, n_obs = ("X", f"obsm/{outputs.OBSM_KEY}"), n
    else:  # written as it is, its old embeddings (if any) replaced below
        skeleton = ad.read_h5ad(adata) if isinstance(adata, (str, os.PathLike)) else adata
        targets, n_obs = (f"obsm/{outputs.OBSM_KEY}",), skeleton.n_obs
    with atomic_path(output) as tmp:
        skeleton.write_h5ad(tmp)
        del skeleton
        with h5py.File(tmp, "a") as f:
            dsets = []
            for name in targets:
                if name in f:
                    del f[name]
                d = f.create_dataset(name, shape=(n_obs, hidden), dtype="float32",
                                     fillvalue=np.nan if not meta["fresh_adata"] else 0.0)
                d.attrs["encoding-type"], d.attrs["encoding-version"] = "array", "0.2.0"
                dsets.append(d)
            start = 0
            for table in _iter_chunks(meta):
                embs = np.stack([table.column(c).to_numpy() for c in emb_cols], axis=1).astype(np.float32)
                if meta["fresh_adata"]:
                    for d in dsets:
                        d[start:start + len(embs)] = embs
                else:
                    rows = table.column(_OBS_ROW).to_numpy()
                    order = np.argsort(rows, kind="stable")  # h5py writes at increasing positions
                    dsets[0][rows[order]] = embs[order]
                start += len(embs)


def _write_genes(output: Path, meta: dict, adata: Any) -> None:
    hidden = int(meta["hidden"])
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, float] = {}
    for work, ranks in zip(meta["work"], meta["ranks"]):
        for r in range(int(ranks)):
            path = _genes_path(Path(work), r, int(ranks))
            if not path.is_file():
                raise ShardError(f"{path} is missing; rerun the shard that wrote {work}.")
            with np.load(path) as z:
                for t, s, c in zip(z["tokens"].tolist(), z["sums"], z["counts"].tolist()):
                    sums[t] = sums[t] + s if t in sums else s.copy()
                    counts[t] = counts.get(t, 0.0) + c
    tokens = np.array(sorted(sums), dtype=np.int64)
    g = GeneEmbeddings(tokens, np.stack([sums[t] for t in tokens.tolist()]) if len(tokens) else
                       np.zeros((0, hidden)), np.array([counts[t] for t in tokens.tolist()]))
    df = g.to_frame(meta.get("vocab_version"))
    if meta["fmt"] == "h5ad":
        import anndata as ad

        from ..tokenization import anndata_gene_ids

        target = ad.read_h5ad(adata) if isinstance(adata, (str, os.PathLike)) else adata
        # back to the var rows by the rule that matched them (the ID where present, else the symbol)
        ids = (anndata_gene_ids(target, meta["vocab_version"], meta.get("gene_names"))
               if meta.get("vocab_version") else None)
        outputs.add_gene_embeddings(target, df, gene_ids=ids)
        outputs.write_h5ad(target, output)
    elif meta["fmt"] == "csv":
        write_csv(output, outputs.gene_table(df, meta.get("vocab_version")), index=False)
    elif meta["fmt"] == "parquet":
        outputs.write_parquet(outputs.gene_table(df, meta.get("vocab_version")), output)
    else:
        outputs.write_tensor(df, output)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
