"""Running a perturbation: model and cells, the resumable parts, several processes, final outputs.

:func:`run_perturbation` does, for a :class:`~._spec.PerturbSpec`:

1. load/check the model against the vocabulary, select the cells (``_selection``), derive the
   engine's settings and a fingerprint of everything that decides the result;
2. a finished run with the same fingerprint is not recomputed (its raw pickles are rewritten if a
   crash left them missing);
3. cut the run into parts (``_engine.plan_parts``); a shard (``shard=(i, n)``) keeps the i-th
   contiguous slice of them, balanced by attention cost (Σ L² over the perturbed sequences); skip
   the parts already on disk (``resume``) and compute the rest; with several processes
   (``torchrun``: the process group is joined from its environment) the parts are dealt to the ranks
   by cost (largest first to the least loaded), each rank on its own GPU (``LOCAL_RANK``);
4. rank 0 waits for every part (a barrier when a process group is initialised, else by polling the
   folder), writes the tidy table and the reference's raw pickles, and removes the parts. A shard
   instead records that its parts are complete (``X.shards/``, X the tidy table's path), and
   :func:`merge_perturb_shards` (``geneformer merge X``) writes the outputs once every shard is.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .._settings import settings
from .._utils import (
    ModelLoadError,
    Shard,
    ShardError,
    assign_balanced,
    attention_cost,
    barrier,
    compute_dtype,
    doc_params,
    init_distributed,
    itemsize,
    mark_shard_done,
    model_digest,
    parse_shard,
    progress_bar,
    rank,
    resolve_device,
    shard_bounds,
    shard_done,
    world_size,
)
from .._utils._device import torch_threads
from .._utils._docs import doc_device, doc_dtype, doc_progress
from ..data import as_sequences, load_tokenized
from ..inference import auto_token_budget, validate_sequences
from ..models import check_vocab_matches, load_model, model_vocab_version
from ._engine import build_part, plan_parts, run_part
from ._spec import PerturbSpec, run_settings, select_for
from ._store import GeneLabels, RunStore, fingerprint, part_table, raw_file_names
from ._vocab_meta import write_run_vocab

logger = logging.getLogger(__name__)

__all__ = ["merge_perturb_shards", "run_perturbation"]

SHARD_KIND = "perturb"


def _part_done_hook(part_index: int) -> None:
    """Called after each part is safely on disk (tests replace it to simulate a crash)."""


def _load(model: Any, spec: PerturbSpec, kind: str, num_labels: int | None, device: torch.device) -> Any:
    """The model (loaded when a path or name), checked against the spec's vocabulary, in eval mode."""
    named = isinstance(model, (str, os.PathLike))
    source = f"Model {model}" if named else "The model"
    if named:
        model = load_model(model, kind=kind, num_labels=num_labels, device=device)
    if not isinstance(spec.vocab, dict):
        check_vocab_matches(model, spec.vocab, source=source)
    elif int(model.config.vocab_size) < max(spec.vocab.values()) + 1:
        raise ModelLoadError(f"The model's vocab_size {model.config.vocab_size} is smaller than the token "
                             f"dictionary ({max(spec.vocab.values()) + 1} ids).")
    if hasattr(model, "eval"):
        model.eval()
    return model


@doc_params(device=doc_device, dtype=doc_dtype, progress=doc_progress)
def run_perturbation(
    model: Any,
    data: Any,
    output_dir: str | os.PathLike,
    output_prefix: str,
    spec: PerturbSpec,
    *,
    model_kind: str = "pretrained",
    num_labels: int | None = None,
    device: Any = None,
    dtype: Any = None,
    resume: bool = True,
    keep_parts: bool = False,
    write_raw: bool = True,
    reference_file_names: bool = True,
    n_threads: int | None = None,
    progress: bool | None = None,
    shard: Shard | str | tuple[int, int] | None = None,
) -> Path | None:
    """Perturb the cells ``spec`` selects and write ``{output_dir}/in_silico_{type}_{prefix}.parquet``
    (the tidy table) and, with ``write_raw``, the reference's ``*_raw.pickle`` dictionaries.

    Args:
        model: a loaded model, or a model folder / zoo name loaded as ``model_kind`` (with ``num_labels``).
        data: a tokenized ``datasets.Dataset`` or its ``save_to_disk`` folder.
        output_dir, output_prefix: where the outputs go (see ``_store``).
        spec: the run, from :func:`perturbation_spec`.
        {device}
        {dtype}
        resume: reuse the finished parts of an interrupted run with the same fingerprint (False: start afresh).
        keep_parts: keep the parts folder after the merge.
        write_raw: write the reference's raw pickles too.
        reference_file_names: name a group run's raw pickles as the reference does, the token list
            in brackets (``..._cell_embs_dict_[15627]_raw.pickle``); False: ``..._dict_15627_raw.pickle``.
        n_threads: CPU threads of the forward passes (capped at the CPUs the process may use; restored
            afterwards); None: torch's setting.
        {progress}
        shard: ``(i, n)`` or ``"i/n"``: compute only the i-th of n slices of the run (see the module
            docstring); merge the shards with :func:`merge_perturb_shards`.

    Returns:
        The tidy table's path (None on ranks other than 0 of a multi-process run, and for a shard).
    """
    shard = parse_shard(shard)
    init_distributed()
    this_rank, world = rank(), world_size()
    opp = f"in_silico_{spec.perturb_type}_{output_prefix}"
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # a shard never clears the parts folder it shares with the other shards (only rank 0 of a whole run does)
    store = RunStore(out_dir, opp, rank=this_rank if shard is None else 1 + this_rank)

    dev = resolve_device(device)
    model = _load(model, spec, model_kind, num_labels, dev)
    model.to(dev)
    ds = load_tokenized(data)
    what = f"{data}" if isinstance(data, (str, os.PathLike)) else "the dataset"
    try:
        sel = select_for(spec, ds)
    except ValueError:
        # "no cell expresses GENE" is what data of another vocabulary looks like: say that instead
        validate_sequences(as_sequences(ds.select(range(min(len(ds), 1000)))), model, what=what)
        raise
    validate_sequences(sel.seqs, model, what=what)
    rs = run_settings(spec, model, sel)
    state_embs = spec.state_matrix
    if state_embs is not None and state_embs.shape[1] != int(model.config.hidden_size):
        raise ValueError(f"State embeddings have {state_embs.shape[1]} dimensions but the model's hidden "
                         f"size is {model.config.hidden_size}; make them with this model.")

    fp = fingerprint(
        settings=asdict(rs), states=spec.state_labels, state_embs=state_embs.numpy().tobytes()
        if state_embs is not None else b"", model=model_digest(model), rows=sel.rows.tobytes(),
        tokens=sel.seqs.values.tobytes(), offsets=sel.seqs.offsets.tobytes(),
        rows_per_part=spec.rows_per_part, cell_ids=sel.cell_id_column,
    )
    names = raw_file_names(out_dir, opp, spec.tokens, reference=reference_file_names)
    state_objects = {str(s): s for s in spec.state_list} or None
    if resume and store.final_fingerprint() == fp:
        logger.info("%s is already complete; nothing to do.", store.final)
        if this_rank != 0:
            return None
        wanted = [names["cell"]] + ([names["gene"]] if rs.gene_level else [])
        if write_raw and not all(p.is_file() for p in wanted):  # a crash after the table was written
            store.write_raw(names, state_objects)
        if not keep_parts:
            store.remove_parts()
        write_run_vocab(out_dir, opp, model.config.vocab_size, model_vocab_version(model))
        return store.final

    if shard is not None and resume and shard_done(store.final, shard, fp):
        logger.info("Shard %s of %s is already complete; nothing to do.", shard, store.final)
        return None
    parts = plan_parts(sel.seqs.lengths, rs, spec.rows_per_part)
    costs = _part_costs(parts, sel.seqs.lengths)
    first, stop = shard_bounds(costs, shard)
    amp = compute_dtype(dtype, dev)
    max_pert_len = int(sel.seqs.lengths.max()) + (len(spec.tokens or ()) if spec.perturb_type == "overexpress" else 0)
    budget = spec.token_budget or settings.token_budget or auto_token_budget(
        model, min(max_pert_len, rs.max_len), dev, itemsize=itemsize(amp))
    run = store.open(fp, parts, {"token_budget": int(budget), "max_rows": spec.batch_size, "n_cells": len(sel)},
                     resume=resume)
    budget, max_rows = int(run["token_budget"]), run["max_rows"]
    if shard is not None and not resume:
        store.remove_part_files(range(first, stop))
    done = store.done_parts(len(parts))
    dealt = assign_balanced(costs[first:stop], world)[this_rank] + first
    mine = [int(i) for i in dealt if i not in done]
    if done:
        logger.info("Resuming: %d of %d parts already done.", len(done), len(parts))
    total = sum(r1 - r0 for i in mine for _, r0, r1 in parts[i])
    bar = progress_bar(total=total, desc=f"in silico {spec.perturb_type}", unit="pert", progress=progress)
    t0 = time.perf_counter()
    try:
        with torch_threads(n_threads):
            workspace: dict = {}  # the layers' scratch buffers, kept from part to part
            labels = GeneLabels(spec.vocab)
            for i in mine:
                plan = build_part(sel.seqs, parts[i], rs)
                result = run_part(model, plan, rs, device=dev, token_budget=budget, max_rows=max_rows,
                                  state_embs=state_embs, amp_dtype=amp, on_batch=bar.update, workspace=workspace)
                table = part_table(plan, result, rows=sel.rows, cell_ids=sel.cell_ids, state_labels=spec.state_labels,
                                   labels=labels)
                store.write_part(i, table, fp, [list(map(int, s)) for s in parts[i]])
                _part_done_hook(i)
    finally:
        bar.close()
    if mine:
        logger.info("%d perturbations in %.1f s", total, time.perf_counter() - t0)
    if world > 1:
        barrier()
        if this_rank != 0:
            return None
        _wait_for_parts(store, range(first, stop))
    if shard is not None:
        mark_shard_done(store.final, shard, SHARD_KIND, fp, prefix=opp,
                        n_parts=len(parts), parts=[first, stop], write_raw=bool(write_raw),
                        keep_parts=bool(keep_parts), raw_names={k: v.name for k, v in names.items()},
                        states=list(state_objects.values()) if state_objects else None)
        logger.info("Shard %s done (parts %d-%d of %d); merge with: geneformer merge %s",
                    shard, first, stop, len(parts), store.final)
        return None
    store.write_final(len(parts), fp)
    write_run_vocab(out_dir, opp, model.config.vocab_size, model_vocab_version(model))
    if write_raw:
        store.write_raw(names, state_objects)
    if not keep_parts:
        store.remove_parts()
    logger.info("Wrote %s", store.final)
    return store.final


def _part_costs(parts: list, lengths: Any) -> Any:
    """Forward cost of each part: every perturbed sequence is about as long as its cell (Σ L²)."""
    import numpy as np

    cell_cost = attention_cost(lengths)
    return np.array([sum((r1 - r0 + 1) * cell_cost[c] for c, r0, r1 in part) for part in parts], dtype=np.float64)


def _wait_for_parts(store: RunStore, wanted: Any, poll_s: float = 5.0) -> None:
    """Rank 0 waits until every wanted part file exists (other ranks write theirs)."""
    wanted = list(wanted)
    missing = [i for i in wanted if not store.part_path(i).is_file()]
    while missing:
        logger.info("Waiting for %d part(s) from the other processes...", len(missing))
        time.sleep(poll_s)
        missing = [i for i in missing if not store.part_path(i).is_file()]


def merge_perturb_shards(output: str | os.PathLike, records: list[dict]) -> Path:
    """The tidy table ``output`` and the reference's raw pickles from the finished shards of one run
    (``records``: their completion markers in shard order, see ``geneformer.shards.merge``)."""

    first = records[0]
    directory = Path(output).parent  # the tidy table's folder, wherever the shards ran from
    store = RunStore(directory, first["prefix"])
    n_parts = int(first["n_parts"])
    missing = sorted(set(range(n_parts)) - store.done_parts(n_parts))
    if missing:
        raise ShardError(f"{len(missing)} part(s) of {output} are missing from {store.parts_dir} "
                         f"(e.g. {missing[:5]}); rerun the shards that cover them, then merge again.")
    store.write_final(n_parts, first["fingerprint"])
    if first.get("write_raw", True):
        states = first.get("states")
        store.write_raw({k: directory / v for k, v in first["raw_names"].items()},
                        {str(s): s for s in states} if states else None)
    if not first.get("keep_parts", False):
        store.remove_parts()
    logger.info("Wrote %s", store.final)
    return store.final
