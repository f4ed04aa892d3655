"""Writing embeddings: AnnData (obsm/varm/uns), parquet, the reference's CSV layout, torch tensors.

Every file is written under a temporary name and renamed when complete (``_utils._atomic``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .._utils import _atomic

OBSM_KEY = "X_geneformer"
GENE_KEY = "X_geneformer"
UNS_GENE_KEY = "geneformer_gene_embeddings"


def embedding_frame(embs: np.ndarray, labels: Mapping[str, Sequence] | pd.DataFrame | None = None,
                    index: Sequence | None = None) -> pd.DataFrame:
    """The reference layout: integer columns 0..H-1, then one column per label."""
    df = pd.DataFrame(np.asarray(embs), columns=range(np.asarray(embs).shape[1]), index=index)
    if labels is not None:
        labels_df = labels if isinstance(labels, pd.DataFrame) else pd.DataFrame(dict(labels))
        for col in labels_df.columns:
            df[col] = np.asarray(labels_df[col])
    return df


def gene_table(df: pd.DataFrame, vocab: Any = None) -> pd.DataFrame:
    """Gene embeddings as a table: ``ensembl_id``, ``symbol`` (empty where unknown), then 0..H-1."""
    from ..vocab import as_vocab

    to_symbol = as_vocab(vocab).ensembl_to_symbol if vocab is not None else {}
    table = df.reset_index(names="ensembl_id")
    table.insert(1, "symbol", [to_symbol.get(str(g), "") for g in table["ensembl_id"]])
    return table


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """CSV with the index, as the reference writes ``{prefix}.csv`` (atomically)."""
    return _atomic.write_csv(path, df)


def write_parquet(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Parquet (column names become strings, the index is kept), atomically."""
    out = df.copy()
    out.columns = [str(c) for c in out.columns]
    return _atomic.write_parquet(path, out)


def write_tensor(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` of a tensor or a dict of tensors (CPU), atomically."""
    import torch

    if isinstance(obj, np.ndarray):
        obj = torch.from_numpy(obj)
    elif isinstance(obj, pd.DataFrame):
        obj = torch.from_numpy(obj.select_dtypes("number").to_numpy(np.float32))
    return _atomic.write_with(path, lambda tmp: torch.save(obj, tmp))


def write_h5ad(adata: Any, path: str | os.PathLike) -> Path:
    """``adata.write_h5ad``, atomically."""
    return _atomic.write_with(path, adata.write_h5ad)


def add_cell_embeddings(adata: Any, embs: np.ndarray, key: str = OBSM_KEY,
                        rows: np.ndarray | None = None) -> Any:
    """Write (N, H) cell embeddings into ``adata.obsm[key]``.

    ``rows`` gives each embedding's obs position when not every cell was embedded (the others get NaN).
    """
    embs = np.asarray(embs, dtype=np.float32)
    if rows is None:
        if embs.shape[0] != adata.n_obs:
            raise ValueError(
                f"{embs.shape[0]} embeddings for {adata.n_obs} cells; pass rows= to say which cells they belong to."
            )
        adata.obsm[key] = embs
        return adata
    full = np.full((adata.n_obs, embs.shape[1]), np.nan, dtype=np.float32)
    full[np.asarray(rows, dtype=np.int64)] = embs
    adata.obsm[key] = full
    return adata


def add_gene_embeddings(adata: Any, gene_df: pd.DataFrame, key: str = GENE_KEY,
                        gene_id_column: str | None = None, gene_ids: Any = None) -> Any:
    """Store gene embeddings (rows indexed by Ensembl ID).

    When the var names (or ``var[gene_id_column]``, or ``gene_ids``: one Ensembl ID per var row, e.g.
    from :func:`geneformer.tokenization.anndata_gene_ids`) are Ensembl IDs matching the rows, the embeddings go
    to ``adata.varm[key]`` aligned to var (NaN for genes without an embedding); the full table is
    always kept in ``adata.uns['geneformer_gene_embeddings']``.
    """
    if gene_ids is not None:
        ids = pd.Index(np.asarray(gene_ids, dtype=object).astype(str))
    else:
        ids = adata.var[gene_id_column].astype(str) if gene_id_column else adata.var_names.astype(str)
    emb_cols = [c for c in gene_df.columns if np.issubdtype(gene_df[c].dtype, np.number)]
    table = gene_df[emb_cols]
    matched = pd.Index(ids).isin(table.index)
    if matched.any():
        aligned = table.reindex(pd.Index(ids)).to_numpy(np.float32)
        adata.varm[key] = aligned
    uns_df = table.copy()
    uns_df.columns = [str(c) for c in uns_df.columns]
    adata.uns[UNS_GENE_KEY] = uns_df
    return adata


def output_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """The output format named by ``fmt`` or by the file extension."""
    if fmt and fmt != "auto":
        fmt = fmt.lower()
    else:
        suffix = Path(path).suffix.lower()
        fmt = {".h5ad": "h5ad", ".parquet": "parquet", ".pq": "parquet", ".csv": "csv",
               ".pt": "pt", ".pth": "pt"}.get(suffix)
        if fmt is None:
            raise ValueError(
                f"Cannot tell the output format of {path}; use a .h5ad, .parquet, .csv or .pt name "
                "(or pass the format)."
            )
    if fmt not in ("h5ad", "parquet", "csv", "pt"):
        raise ValueError(f"Unknown output format {fmt!r}; use h5ad, parquet, csv or pt.")
    return fmt
