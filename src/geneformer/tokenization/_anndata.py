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
from ..vocab import GeneVocab, as_vocab, match_genes
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


def _gene_columns(gene_names: str | None, var: Any) -> dict[str, Any]:
    """The ``match_genes`` choice a ``gene_names`` argument makes: which source it names (IDs or symbols)."""
    if gene_names in (None, "auto"):
        return {}
    if gene_names == "index":
        values = var.index.astype(str)
    elif gene_names in var.columns:
        values = var[gene_names].astype(str)
    else:
        raise KeyError(
            f"gene_names={gene_names!r} is neither 'index' nor a var column; var columns: {list(var.columns)}."
        )
    # the model-card rule (a prefix test, looser than vocab.looks_like_ensembl's pattern)
    looks_ensembl = bool(np.mean([s.upper().startswith("ENS") for s in values]) > 0.5) if len(values) else False
    if gene_names == "index":
        return {"use_index": True} if looks_ensembl else {"gene_symbol_column": "index"}
    return {"gene_id_column": gene_names} if looks_ensembl else {"gene_symbol_column": gene_names}


def anndata_gene_ids(adata: Any, vocab: GeneVocab | str | os.PathLike | None = "V2",
                     gene_names: str | None = None) -> np.ndarray:
    """The vocabulary Ensembl ID of each var row (``""`` where none) by :func:`match_and_tokenize`'s rule:
    where its gene embeddings go back in the AnnData."""
    vocab = as_vocab(vocab)
    var, choice = _gene_choice(gene_names, adata.var)
    return vocab.canonical_ids(match_genes(var, vocab, **choice).ids)


def _gene_choice(gene_names: str | None, var: Any) -> tuple[Any, dict[str, Any]]:
    """``var`` (with the index as a column when it names the IDs) and the ``match_genes`` keywords."""
    choice = _gene_columns(gene_names, var)
    if choice.pop("use_index", False):  # tokenize_anndata takes an ID column: the index as one
        var = var.copy()
        var[_GENE_COLUMN] = var.index.astype(str)
        choice["gene_id_column"] = _GENE_COLUMN
    return var, choice


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

    Genes follow the one rule of :func:`geneformer.vocab.match_genes`: the Ensembl ID where present,
    the symbol for the rest. ``gene_names`` names one of the two sources; whether it holds Ensembl IDs
    or symbols is told by the names (most starting with "ENS": Ensembl IDs). ``n_counts`` is each
    cell's total when ``obs`` has none.

    Args:
        adata: the AnnData.
        {vocab}
        gene_names: the var column of Ensembl IDs or symbols, "index" for ``var_names``, or None/"auto":
            ``var['ensembl_id']`` where present, symbols (a symbol column or the index) for the rest.
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
    var, choice = _gene_choice(gene_names, var)
    gm = match_genes(var, vocab, **choice)
    match = (gm.n_matched, gm.n_genes)
    if gm.n_genes and gm.n_matched / gm.n_genes < 0.2:
        logger.warning(
            "Only %d of %d genes matched the %s vocabulary; check gene_names (Ensembl IDs or symbols of the "
            "right species).", gm.n_matched, gm.n_genes, vocab.version or "custom",
        )
    obs = adata.obs.copy()
    if "n_counts" not in obs.columns:
        obs["n_counts"] = _row_totals(X)
    attrs = dict(custom_attr_name_dict or {})
    if row_column:
        obs[ROW_COLUMN] = np.arange(adata.n_obs, dtype=np.int64)
        attrs[ROW_COLUMN] = ROW_COLUMN
    light = ad.AnnData(X=X, obs=obs, var=var)  # shares the matrix
    dataset = tokenize_anndata(
        light, vocab, custom_attr_name_dict=attrs, model_input_size=model_input_size, special_token=special_token,
        nproc=nproc, chunk_size=chunk_size, keep_counts=keep_counts, collapse_gene_ids=collapse_gene_ids,
        progress=progress, **choice,
    )
    return TokenizedAnnData(dataset, match)
