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


@dataclass
class GeneMatch:
    """A file's genes as Ensembl IDs (``""`` where unknown), and how many each source matched.

    ``ids`` holds one entry per file gene: the Ensembl ID of the ID source where it is non-empty,
    else the symbol source's symbol mapped through the vocabulary. ``n_by_id``/``n_by_symbol``
    count file genes that are vocabulary genes through each; ``n_symbol_unused`` counts genes with an
    empty ID whose symbol is a vocabulary gene but was not used (``symbol_fallback=False``).
    """

    ids: np.ndarray
    id_source: str | None  # e.g. "var['ensembl_id']"; None: symbols only
    symbol_source: str | None  # e.g. "the var index"; None: Ensembl IDs only
    n_by_id: int
    n_by_symbol: int
    n_symbol_unused: int = 0

    @property
    def n_genes(self) -> int:
        return len(self.ids)

    @property
    def n_matched(self) -> int:
        return self.n_by_id + self.n_by_symbol

    def describe(self) -> str:
        """Where the genes came from and how many each source matched, in a few words."""
        parts = []
        if self.id_source is not None:
            parts.append(f"Ensembl IDs in {self.id_source} ({self.n_by_id:,} matched)")
        if self.symbol_source is not None:
            rest = " for the empty IDs" if self.id_source is not None else ""
            parts.append(f"gene symbols in {self.symbol_source}{rest} ({self.n_by_symbol:,} matched)")
        return " and ".join(parts) or "no gene source"


def _clean(values: Any) -> np.ndarray:
    s = pd.Series(values, dtype=object)
    return s.where(s.notna(), "").astype(str).str.strip().replace({"nan": "", "None": ""}).to_numpy(dtype=object)


def match_genes(
    var: pd.DataFrame,
    vocab: GeneVocab,
    *,
    gene_id_column: str | None = None,
    gene_symbol_column: str | None = None,
    use_index: bool = False,
    symbol_fallback: bool = True,
    source: str = "input",
) -> GeneMatch:
    """The one rule naming a file's genes: the Ensembl ID where present (non-empty), symbols for the rest.

    The ID source is ``use_index`` (the var index), ``gene_id_column``, ``var['ensembl_id']``, or the
    var index when it holds Ensembl IDs; the symbol source is ``gene_symbol_column`` ("index" for the
    index), a column named like :data:`SYMBOL_COLUMNS`, or the var index when it does not hold IDs.
    Without an ID source, symbols name every gene; ``symbol_fallback=False`` uses the IDs alone (the
    reference tokenizer's rule), counting in ``n_symbol_unused`` what the symbols would have added.
    """
    def col(name: str) -> np.ndarray:
        if name not in var.columns:
            raise InputFileError(
                f"{source} has no gene column {name!r}; its gene columns are {list(var.columns)}."
            )
        return _clean(var[name].astype(object).to_numpy())

    index = _clean(var.index.astype(str).to_numpy(dtype=object))
    index_is_ids = looks_like_ensembl(index) > 0.5
    id_name: str | None = None
    if use_index:
        id_name, raw_ids = "the var index", index
    elif gene_id_column is not None:
        id_name, raw_ids = f"var[{gene_id_column!r}]", col(gene_id_column)
    elif "ensembl_id" in var.columns and gene_symbol_column != "ensembl_id":
        id_name, raw_ids = "var['ensembl_id']", col("ensembl_id")
    elif index_is_ids and gene_symbol_column != "index":
        id_name, raw_ids = "the var index", index
    sym_name: str | None = None
    if gene_symbol_column is not None:
        sym_name = "the var index" if gene_symbol_column == "index" else f"var[{gene_symbol_column!r}]"
        symbols = index if gene_symbol_column == "index" else col(gene_symbol_column)
    else:
        name = next((n for n in SYMBOL_COLUMNS if n in var.columns), None)
        if name is not None:
            sym_name, symbols = f"var[{name!r}]", col(name)
        elif not index_is_ids and id_name != "the var index":
            sym_name, symbols = "the var index", index

    if id_name is None:
        ids = vocab.symbols_to_ensembl(symbols)
        return GeneMatch(ids, None, sym_name, 0, int((vocab.canonical_ids(ids) != "").sum()))
    ids = _strip_version(raw_ids)
    by_id = vocab.canonical_ids(ids) != ""
    empty = ids == ""
    if sym_name is None or not empty.any():
        return GeneMatch(ids, id_name, None, int(by_id.sum()), 0)
    filled = np.array(ids, dtype=object)
    filled[empty] = vocab.symbols_to_ensembl(symbols[empty])
    by_symbol = int((vocab.canonical_ids(filled[empty]) != "").sum())
    if not symbol_fallback:
        return GeneMatch(ids, id_name, None, int(by_id.sum()), 0, n_symbol_unused=by_symbol)
    return GeneMatch(filled, id_name, sym_name, int(by_id.sum()), by_symbol)


def file_gene_ids(
    var: pd.DataFrame,
    vocab: GeneVocab,
    *,
    gene_id_column: str | None = None,
    gene_symbol_column: str | None = None,
    use_index: bool = False,
    source: str = "input",
    symbol_fallback: bool = True,
) -> tuple[np.ndarray, str]:
    """Ensembl IDs of a file's genes (``""`` where unknown) and a phrase saying where they came from:
    :func:`match_genes`'s rule (the Ensembl ID where present, symbols for the rest)."""
    m = match_genes(var, vocab, gene_id_column=gene_id_column, gene_symbol_column=gene_symbol_column,
                    use_index=use_index, symbol_fallback=symbol_fallback, source=source)
    return m.ids, m.describe()


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
