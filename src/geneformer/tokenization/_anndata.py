"""Tokenizing an AnnData for a model, with its genes named in one column: the entry point of the
model-card API, perturbation and the ``embed`` command."""

from __future__ import annotations

import logging
import os
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from .._constants import ROW_COLUMN
from .._utils import doc_params
from ..io import anndata_counts
from ..vocab import GeneVocab, as_vocab
from ._options import DOCS
from ._pipeline import tokenize_anndata

logger = logging.getLogger(__name__)

_GENE_COLUMN = "_gf_gene"  # the var index as a column, when genes are named by the index


class TokenizedAnnData(NamedTuple):
    """The tokenized cells and how many of the AnnData's genes the vocabulary knows."""

    dataset: Any  # datasets.Dataset
    gene_match: tuple[int, int]  # (genes matched, genes of the AnnData)


def _row_totals(X: Any) -> np.ndarray:
    return (np.asarray(X.sum(axis=1)).ravel() if sp.issparse(X) else np.asarray(X).sum(axis=1)).astype(np.float64)


def _gene_match(ids: np.ndarray, looks_ensembl: bool, vocab: GeneVocab) -> tuple[int, int]:
    """How many of ``ids`` (Ensembl IDs, or symbols) are vocabulary genes; logged, with a warning under 20%."""
    ens = ids if looks_ensembl else vocab.symbols_to_ensembl(ids)
    matched = int(sum(1 for m in vocab.canonical_ids(list(ens)) if m))
    name = vocab.version or "custom"
    logger.info("%d of %d genes matched the %s vocabulary.", matched, len(ids), name)
    if len(ids) and matched / len(ids) < 0.2:
        logger.warning(
            "Only %d of %d genes matched the %s vocabulary; check gene_names (Ensembl IDs or symbols of the "
            "right species).", matched, len(ids), name,
        )
    return matched, len(ids)


@doc_params(**DOCS)
def match_and_tokenize(
    adata: Any,
    vocab: GeneVocab | str | os.PathLike | None = "V2",
    *,
    gene_names: str | None = None,
    custom_attr_name_dict: dict[str, str] | None = None,
    row_column: bool = True,
    model_input_size: int | None = None,
    special_token: bool | None = None,
    layer: str | None = None,
    nproc: int | None = None,
    chunk_size: int = 512,
    keep_counts: bool = False,
    collapse_gene_ids: bool = True,
    progress: bool | None = None,
) -> TokenizedAnnData:
    """Tokenize an in-memory AnnData whose genes are named by ``gene_names``; the caller's AnnData is
    not modified.

    Ensembl IDs or symbols are told apart by the names (most starting with "ENS": Ensembl IDs).
    ``n_counts`` is each cell's total when ``obs`` has none.

    Args:
        adata: the AnnData.
        {vocab}
        gene_names: the var column naming the genes, "index" for ``var_names``, or None/"auto" for
            ``var['ensembl_id']`` when present, else the index.
        {custom_attr_name_dict}
        row_column: also carry each cell's obs position as ``_gf_row`` (``_constants.ROW_COLUMN``),
            so results can be written back in place.
        {model_input_size}
        {special_token}
        {layer}
        {nproc}
        {chunk_size}
        {keep_counts}
        {collapse_gene_ids}
        {progress}

    Returns:
        ``(dataset, gene_match)``: an in-memory ``datasets.Dataset`` and (genes matched, genes).
    """
    import anndata as ad

    vocab = as_vocab(vocab)
    X, var = anndata_counts(adata, layer)
    var = var.copy()
    if gene_names in (None, "auto"):
        gene_names = "ensembl_id" if "ensembl_id" in var.columns else "index"
    if gene_names == "index":
        var[_GENE_COLUMN] = var.index.astype(str)
        column = _GENE_COLUMN
    elif gene_names in var.columns:
        column = gene_names
    else:
        raise KeyError(
            f"gene_names={gene_names!r} is neither 'index' nor a var column; var columns: {list(var.columns)}."
        )
    ids = var[column].astype(str).to_numpy()
    # the model-card rule (a prefix test, looser than vocab.looks_like_ensembl's pattern)
    looks_ensembl = bool(np.mean([s.upper().startswith("ENS") for s in ids]) > 0.5) if len(ids) else False
    obs = adata.obs.copy()
    if "n_counts" not in obs.columns:
        obs["n_counts"] = _row_totals(X)
    attrs = dict(custom_attr_name_dict or {})
    if row_column:
        obs[ROW_COLUMN] = np.arange(adata.n_obs, dtype=np.int64)
        attrs[ROW_COLUMN] = ROW_COLUMN
    match = _gene_match(ids, looks_ensembl, vocab)
    light = ad.AnnData(X=X, obs=obs, var=var)  # shares the matrix
    gene_kw = {"gene_id_column": column} if looks_ensembl else {"gene_symbol_column": column}
    dataset = tokenize_anndata(
        light, vocab, custom_attr_name_dict=attrs, model_input_size=model_input_size, special_token=special_token,
        nproc=nproc, chunk_size=chunk_size, keep_counts=keep_counts, collapse_gene_ids=collapse_gene_ids,
        progress=progress, **gene_kw,
    )
    return TokenizedAnnData(dataset, match)
