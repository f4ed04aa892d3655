"""Which vocabulary gene each column of a file is: ID resolution, mapping and duplicate summing."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._utils import InputFileError
from ..io import select_columns
from ._vocab import GeneVocab

logger = logging.getLogger(__name__)

_ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$", re.IGNORECASE)
SYMBOL_COLUMNS = ("gene_symbol", "gene_symbols", "gene_name", "gene_names", "feature_name", "symbol")


def looks_like_ensembl(ids: Iterable[Any]) -> float:
    """Fraction of non-empty IDs that look like Ensembl gene IDs."""
    ids = [str(i) for i in ids if i is not None and str(i) not in ("", "nan")]
    if not ids:
        return 0.0
    return sum(bool(_ENSEMBL_RE.match(i)) for i in ids) / len(ids)


def _strip_version(ids: np.ndarray) -> np.ndarray:
    # ENSG00000123456.7 -> ENSG00000123456
    return np.array([i.split(".")[0] if _ENSEMBL_RE.match(i) else i for i in ids], dtype=object)


def file_gene_ids(
    var: pd.DataFrame,
    vocab: GeneVocab,
    *,
    gene_id_column: str | None = None,
    gene_symbol_column: str | None = None,
    use_index: bool = False,
    source: str = "input",
) -> tuple[np.ndarray, str]:
    """Ensembl IDs of a file's genes (``""`` where unknown) and a phrase saying where they came from.

    Order of preference: ``gene_symbol_column`` (symbols mapped through the vocabulary), ``use_index``,
    ``gene_id_column``, ``var['ensembl_id']``, the var index when it holds Ensembl IDs, then a
    symbol column or the index read as gene symbols.
    """
    def col(name: str) -> np.ndarray:
        if name not in var.columns:
            raise InputFileError(
                f"{source} has no gene column {name!r}; its gene columns are {list(var.columns)}."
            )
        return var[name].astype(object).where(var[name].notna(), "").astype(str).to_numpy(dtype=object)

    index = var.index.astype(str).to_numpy(dtype=object)
    if gene_symbol_column is not None:
        symbols = index if gene_symbol_column == "index" else col(gene_symbol_column)
        return vocab.symbols_to_ensembl(symbols), f"gene symbols in {gene_symbol_column!r}"
    if use_index:
        return _strip_version(index), "the var index"
    if gene_id_column is not None:
        return _strip_version(col(gene_id_column)), f"var[{gene_id_column!r}]"
    if "ensembl_id" in var.columns:
        return _strip_version(col("ensembl_id")), "var['ensembl_id']"
    if looks_like_ensembl(index) > 0.5:
        return _strip_version(index), "the var index (Ensembl IDs)"
    for name in SYMBOL_COLUMNS:
        if name in var.columns:
            return vocab.symbols_to_ensembl(col(name)), f"gene symbols in var[{name!r}]"
    return vocab.symbols_to_ensembl(index), "gene symbols in the var index"


@dataclass
class GeneMap:
    """Maps a file's gene columns onto the vocabulary genes it contains.

    ``genes`` are the vocabulary genes present, in the order of their first column in the file;
    ``column`` gives, for every file column, its position in ``genes`` or -1 when it is not a
    vocabulary gene. Columns that map to the same gene are summed.
    """

    genes: np.ndarray
    column: np.ndarray
    token_ids: np.ndarray
    medians: np.ndarray
    n_file_genes: int
    source: str = ""

    @classmethod
    def build(cls, ensembl_ids: np.ndarray, vocab: GeneVocab, collapse: bool = True, source: str = "") -> "GeneMap":
        canonical = vocab.canonical_ids(ensembl_ids, collapse=collapse)
        present = canonical != ""
        uniq, first = np.unique(canonical[present], return_index=True)
        genes = uniq[np.argsort(first)]  # first-occurrence order
        pos = {g: i for i, g in enumerate(genes)}
        column = np.array([pos.get(g, -1) for g in canonical], dtype=np.int64)
        tokens = np.array([vocab.token_dict[g] for g in genes], dtype=np.int64)
        medians = np.array([vocab.gene_medians[g] for g in genes], dtype=np.float64)
        if not collapse:
            dup = pd.Series(canonical[present]).duplicated()
            if dup.any():
                raise InputFileError(
                    f"{source}: gene IDs {sorted(set(canonical[present][dup.to_numpy()]))[:5]} occur more than once; "
                    "use collapse_gene_ids=True to sum them."
                )
        return cls(genes, column, tokens, medians, len(ensembl_ids), source)

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def overlap(self) -> float:
        """Fraction of the file's genes that are vocabulary genes."""
        return float((self.column >= 0).sum()) / max(self.n_file_genes, 1)

    @property
    def needs_sum(self) -> bool:
        return int((self.column >= 0).sum()) != self.n_genes

    def apply(self, counts: sp.csr_matrix) -> sp.csr_matrix:
        """Cells × file genes → cells × :attr:`genes`, dropping other genes and summing duplicates."""
        counts = sp.csr_matrix(counts)
        if self.needs_sum:
            rows = np.flatnonzero(self.column >= 0)
            agg = sp.csr_matrix(
                (np.ones(len(rows), dtype=counts.dtype), (rows, self.column[rows])),
                shape=(counts.shape[1], self.n_genes),
            )
            out = (counts @ agg).tocsr()
            out.sort_indices()
            return out
        # first-occurrence order is monotone in file order here, so sorted input stays sorted
        return select_columns(counts, self.column, self.n_genes)
