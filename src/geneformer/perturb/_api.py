"""``perturb``: our short API for in silico perturbation (AnnData or tokenized cells in, tidy table out)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .._constants import ROW_COLUMN, PerturbEmbMode, PerturbType
from .._utils import check_model_version, doc_params
from .._utils._docs import (
    doc_batch_size,
    doc_device,
    doc_dtype,
    doc_emb_layer,
    doc_filter_data,
    doc_max_ncells,
    doc_progress,
    doc_token_budget,
)
from ..embeddings import save_state_embs, state_embeddings
from ._run import run_perturbation
from ._spec import (
    doc_anchor,
    doc_cell_inds,
    doc_combos,
    doc_emb_mode,
    doc_genes,
    doc_perturb_type,
    doc_rank_shift,
    doc_rows_per_part,
    perturbation_spec,
)

logger = logging.getLogger(__name__)

__all__ = ["annotate_genes", "perturb", "read_results"]


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """Read a perturber's tidy parquet: ``perturbed`` as an int token (tuple for several genes),
    ``affected`` as nullable Int64 (<NA> for the cell-level value), the other columns as written
    (gene names, state, cell, row, cell_id, ``cosine_similarity`` / ``shift_toward_state``; tables
    from before those names hold ``value``)."""
    import pyarrow.parquet as pq

    from ._store import _key_codes

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Perturbation results {p} do not exist.")
    table = pq.read_table(p)
    codes, key_objs = _key_codes(table.column("perturbed")) if table.num_rows else (np.zeros(0, np.int64), [])
    keys = np.empty(len(key_objs), dtype=object)
    keys[:] = key_objs
    df = table.drop(["perturbed"]).to_pandas()
    df.insert(0, "perturbed", keys[codes] if len(codes) else np.zeros(0, object))
    df["affected"] = df["affected"].astype("Int64")
    return df


def annotate_genes(df: pd.DataFrame, vocab: Any) -> pd.DataFrame:
    """Add Ensembl IDs and symbols of the perturbed and affected genes ("+"-joined for groups).

    Tables the perturber writes hold them already (returned unchanged); this is for older ones.
    """
    if {"perturbed_gene", "affected_gene"} <= set(df.columns):
        return df
    inv = vocab.id_to_token
    sym = vocab.ensembl_to_symbol

    def ens(t):
        return inv.get(int(t), str(t))

    def label(key, f):
        return "+".join(f(t) for t in key) if isinstance(key, tuple) else f(key)

    uniq = pd.unique(df["perturbed"]) if len(df) else []
    p_ens = {k: label(k, ens) for k in uniq}
    p_sym = {k: label(k, lambda t: sym.get(ens(t), ens(t))) for k in uniq}
    out = df.copy()
    out.insert(1, "perturbed_gene", out["perturbed"].map(p_ens))
    out.insert(2, "perturbed_symbol", out["perturbed"].map(p_sym))
    aff = out["affected"]
    a_uniq = pd.unique(aff.dropna()) if len(out) else []
    a_ens = {int(t): ens(t) for t in a_uniq}
    a_sym = {int(t): sym.get(ens(t), ens(t)) for t in a_uniq}
    pos = out.columns.get_loc("affected") + 1
    out.insert(pos, "affected_gene", aff.map(lambda t: a_ens.get(int(t)) if pd.notna(t) else None))
    out.insert(pos + 1, "affected_symbol", aff.map(lambda t: a_sym.get(int(t)) if pd.notna(t) else None))
    return out


_NAME_COLUMNS = ("perturbed_gene", "perturbed_symbol", "affected_gene", "affected_symbol")

# reference names perturb() accepts for its own arguments
_REFERENCE_NAMES = {"perturb_rank_shift": "rank_shift", "forward_batch_size": "batch_size",
                    "clear_mem_ncells": "rows_per_part", "nproc": "n_threads"}


@doc_params(perturb_type=doc_perturb_type, genes=doc_genes, emb_mode=doc_emb_mode, rank_shift=doc_rank_shift,
            combos=doc_combos, anchor=doc_anchor, max_ncells=doc_max_ncells, emb_layer=doc_emb_layer,
            batch_size=doc_batch_size, device=doc_device, dtype=doc_dtype, filter_data=doc_filter_data,
            cell_inds=doc_cell_inds, rows_per_part=doc_rows_per_part, token_budget=doc_token_budget,
            progress=doc_progress)
def perturb(
    data: Any,
    model: Any,
    genes: str | Sequence[str] = "all",
    perturb_type: PerturbType = "delete",
    *,
    emb_mode: PerturbEmbMode | None = None,
    rank_shift: int | None = None,
    combos: int = 0,
    anchor_gene: str | None = None,
    state_key: str | None = None,
    start_state: Any = None,
    goal_state: Any = None,
    alt_states: Sequence[Any] = (),
    state_embs: Any = None,
    max_ncells: int | None = None,
    emb_layer: int = -1,
    model_version: str | None = None,
    vocab: Any = None,
    batch_size: int | None = None,
    device: Any = None,
    dtype: Any = None,
    output_dir: str | os.PathLike | None = None,
    prefix: str = "perturb",
    gene_names: str | None = None,
    annotate: bool = True,
    return_frame: bool = True,
    filter_data: Mapping[str, Any] | None = None,
    cell_inds_to_perturb: str | Mapping[str, int] = "all",
    rows_per_part: int = 1000,
    token_budget: int | None = None,
    cell_id_column: str | None = None,
    resume: bool = True,
    keep_parts: bool = False,
    write_raw: bool = True,
    n_threads: int | None = None,
    progress: bool | None = None,
    shard: Any = None,
    **reference_names: Any,
) -> pd.DataFrame | Path | None:
    """Perturb genes in silico and return the tidy results.

    Args:
        data: an AnnData (tokenized for the model on the fly; ``gene_names`` names the var column of
            gene IDs/symbols), an ``.h5ad`` path, a tokenized ``datasets.Dataset`` or its folder.
        model: a zoo name, a model folder or a loaded model.
        {genes}
        {perturb_type}
        {emb_mode} Default "cls" for V2 models, "cell" for V1.
        {rank_shift}
        {combos}
        {anchor}
        state_key, start_state, goal_state, alt_states: goal-state modelling: only ``start_state``
            cells are perturbed and the shift towards each state is measured. ``state_embs``
            ({state: vector} or a pickle path) defaults to mean embeddings of each state's cells
            (written to ``state_embs.safetensors`` in the output folder).
        {max_ncells}
        {emb_layer}
        model_version: "V1"/"V2" (default: from the model's vocabulary size).
        vocab: the gene vocabulary: a ``GeneVocab``, a vocabulary folder, or a token dictionary
            (token → id); None: the published ``model_version`` one.
        {batch_size}
        {device}
        {dtype}
        output_dir, prefix: where the results go (a temporary folder when None, and the table is
            returned); with ``return_frame=False`` the tidy parquet's path is returned instead.
        {filter_data}
        {cell_inds}
        {rows_per_part}
        {token_budget}
        annotate: keep the gene-name columns (``perturbed_gene``/``perturbed_symbol``,
            ``affected_gene``/``affected_symbol``; written into the parquet too); False drops them.
        cell_id_column: the dataset's cell-identifier column (None: detect).
        resume, keep_parts, write_raw, n_threads: see :func:`run_perturbation`. Group runs' raw
            pickles are named without brackets (``..._cell_embs_dict_15627_raw.pickle``).
        {progress}
        shard: ``(i, n)`` or ``"i/n"``: run only the i-th of n cost-balanced slices of the cells
            (returns None); ``geneformer.shards.merge(path of the tidy table)`` writes the outputs
            once every shard has finished. Under ``torchrun`` the ranks share the work by themselves.
        reference_names: ``perturb_rank_shift``, ``forward_batch_size``, ``clear_mem_ncells`` and
            ``nproc`` are accepted for ``rank_shift``, ``batch_size``, ``rows_per_part`` and ``n_threads``,
            ``token_dictionary_file`` (a token dictionary's path) for ``vocab``.

    Returns:
        The tidy DataFrame (``perturbed``, gene IDs/symbols, ``affected``, gene IDs/symbols,
        ``state``, ``cell``, ``row`` — the row in ``data`` — ``cell_id``, then ``cosine_similarity``
        and, in goal-state runs, ``shift_toward_state`` for the cell-level rows), the same table
        the parquet holds; or the parquet path (None on ranks other
        than 0 of a multi-process run, and for a shard).
    """
    token_file = reference_names.pop("token_dictionary_file", None)
    unknown = sorted(set(reference_names) - set(_REFERENCE_NAMES))
    if unknown:
        raise TypeError(f"perturb() got unexpected keyword argument(s) {unknown}.")
    if token_file is not None:
        from ..vocab import load_dict_file

        vocab = load_dict_file(token_file)
    given = {_REFERENCE_NAMES[k]: v for k, v in reference_names.items()}
    rank_shift = given.get("rank_shift", rank_shift)
    batch_size = given.get("batch_size", batch_size)
    rows_per_part = given.get("rows_per_part", rows_per_part)
    n_threads = given.get("n_threads", n_threads)

    from ..models import load_model, model_vocab_version

    loaded = load_model(model, device=device) if isinstance(model, (str, os.PathLike)) else model
    version = check_model_version(model_version or model_vocab_version(loaded) or "V2")
    vocab = version if vocab is None else vocab
    dataset, obs_rows = _as_dataset(data, loaded, version, state_key, gene_names)
    if emb_mode is None:
        emb_mode = "cls" if version == "V2" else "cell"
    states = None
    if any(v is not None for v in (state_key, start_state, goal_state)):
        states = {"state_key": state_key, "start_state": start_state, "goal_state": goal_state,
                  "alt_states": list(alt_states)}
    tmp = tempfile.TemporaryDirectory(prefix="gf-perturb-") if output_dir is None else None
    out_dir = Path(tmp.name if tmp else output_dir)
    try:
        if states is not None and state_embs is None:
            logger.info("Computing state embeddings for %s", states)
            state_embs = state_embeddings(loaded, dataset, states, mode="cls" if emb_mode.startswith("cls") else "cell",
                                          emb_layer=emb_layer, vocab=vocab, device=device, progress=progress)
            save_state_embs(state_embs, out_dir / "state_embs.safetensors")
        spec = perturbation_spec(
            perturb_type, genes, rank_shift=rank_shift, combos=combos, anchor_gene=anchor_gene, emb_mode=emb_mode,
            cell_states_to_model=states, state_embs=state_embs, filter_data=filter_data, max_ncells=max_ncells,
            cell_inds_to_perturb=cell_inds_to_perturb, emb_layer=emb_layer, batch_size=batch_size,
            rows_per_part=rows_per_part, token_budget=token_budget, vocab=vocab, cell_id_column=cell_id_column,
        )
        path = run_perturbation(loaded, dataset, out_dir, prefix, spec, device=device, dtype=dtype, resume=resume,
                                keep_parts=keep_parts, write_raw=write_raw, reference_file_names=False,
                                n_threads=n_threads, progress=progress, shard=shard)
        if path is None or not return_frame:
            return path
        df = read_results(path)
        if obs_rows is not None:
            df["row"] = obs_rows[df["row"].to_numpy()]
        if not annotate:
            df = df.drop(columns=[c for c in _NAME_COLUMNS if c in df.columns])
        return df
    finally:
        if tmp is not None:
            tmp.cleanup()


def _as_dataset(data: Any, model: Any, version: str, state_key: str | None, gene_names: str | None):
    """A tokenized dataset, and for AnnData input the obs position of each dataset row."""
    import anndata as ad

    from ..data import load_tokenized
    from ..models import model_input_size
    from ..tokenization import match_and_tokenize

    if isinstance(data, (str, os.PathLike)) and Path(data).suffix == ".h5ad":
        data = ad.read_h5ad(data)
    if not isinstance(data, ad.AnnData):
        return load_tokenized(data), None
    adata = data
    obs_cols = {}
    if state_key is not None:
        if state_key not in adata.obs.columns:
            raise KeyError(f"state_key {state_key!r} is not an obs column; columns: {list(adata.obs.columns)}.")
        obs_cols[state_key] = state_key
    light = ad.AnnData(X=adata.X, obs=adata.obs.copy(), var=adata.var)
    light.obs["cell_id"] = adata.obs_names.astype(str)
    obs_cols["cell_id"] = "cell_id"
    ds, _ = match_and_tokenize(light, version, gene_names=gene_names, custom_attr_name_dict=obs_cols,
                               model_input_size=model_input_size(model))
    rows = np.asarray(ds[ROW_COLUMN], dtype=np.int64) if ROW_COLUMN in ds.column_names else None
    return ds, rows
