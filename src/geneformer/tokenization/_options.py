"""What a tokenization depends on (:class:`TokenizerSettings`, resolved from a vocabulary by
:func:`tokenizer_settings`) and what it reports per input (:class:`FileReport`)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields

from .._constants import MODEL_INPUT_SIZE
from .._utils import OptionError, check_attr_map, check_positive_int, doc_params
from .._utils._docs import doc_file_format, doc_nproc, doc_progress, doc_shard
from ..vocab import GeneVocab, as_vocab

logger = logging.getLogger(__name__)

#: Parameter texts shared by the tokenization entry points (see ``_utils._docs``).
DOCS = {
    "file_format": doc_file_format, "nproc": doc_nproc, "progress": doc_progress, "shard": doc_shard,
    "vocab": """vocab: a version name ("V1"/"V2"), a vocabulary folder, or a ``GeneVocab``.""",
    "model_input_size": """model_input_size: most tokens per cell, special tokens included (None: 4,096 with
            special tokens, else 2,048).""",
    "special_token": """special_token: wrap cells in ``<cls>`` ... ``<eos>`` (None: when the vocabulary has them).""",
    "custom_attr_name_dict": """custom_attr_name_dict: cell attributes to carry, ``{input column: output column}``.""",
    "chunk_size": """chunk_size: cells encoded at a time (a worker task is two chunks).""",
    "gene_id_column": """gene_id_column: the gene table column of Ensembl IDs (default: ``var['ensembl_id']``,
            else the index when it holds Ensembl IDs). Genes whose ID is empty are named by their symbol.""",
    "gene_symbol_column": """gene_symbol_column: the column of gene symbols ("index" for the index) naming the genes
            without an Ensembl ID (default: a ``gene_symbol``-like column, else the index when it holds no IDs).""",
    "symbol_fallback": """symbol_fallback: name genes whose Ensembl ID is empty by their symbol (False: the IDs alone,
            as the reference tokenizer).""",
    "layer": """layer: read counts from this layer ("raw" for ``raw.X``; None: X or the loom matrix).""",
    "keep_counts": """keep_counts: also write ``counts``, each token's ``x / n_counts * 10,000``.""",
    "collapse_gene_ids": """collapse_gene_ids: map IDs through the Ensembl mapping and sum the columns of one gene
            (False: duplicated genes are an error).""",
}


@dataclass
class TokenizerSettings:
    """Everything the encoding of one cell depends on."""

    vocab: GeneVocab
    model_input_size: int
    special_token: bool
    collapse_gene_ids: bool = True
    keep_counts: bool = False
    chunk_size: int = 512
    gene_id_column: str | None = None
    gene_symbol_column: str | None = None
    use_h5ad_index: bool = False
    layer: str | None = None
    symbol_fallback: bool = True
    attr_map: dict[str, str] = field(default_factory=dict)  # input column -> output column
    read_options: dict = field(default_factory=dict)  # more reader options (e.g. a SOMA value_filter)

    @property
    def max_genes(self) -> int:
        return self.model_input_size - 2 if self.special_token else self.model_input_size

    @property
    def reader_options(self) -> dict:
        """Keyword arguments of :func:`geneformer.io.open_reader`."""
        return {**({"layer": self.layer} if self.layer is not None else {}), **self.read_options}


@doc_params(**DOCS)
def tokenizer_settings(
    vocab: GeneVocab | str | os.PathLike | None = "V2",
    *,
    model_input_size: int | None = None,
    special_token: bool | None = None,
    custom_attr_name_dict: dict[str, str] | None = None,
    chunk_size: int = 512,
    gene_id_column: str | None = None,
    gene_symbol_column: str | None = None,
    use_h5ad_index: bool = False,
    layer: str | None = None,
    keep_counts: bool = False,
    collapse_gene_ids: bool = True,
    reader_options: dict | None = None,
    symbol_fallback: bool = True,
) -> TokenizerSettings:
    """Settings from a vocabulary: input size and special tokens follow it unless given.

    Args:
        {vocab}
        {model_input_size}
        {special_token}
        {custom_attr_name_dict}
        {chunk_size}
        {gene_id_column}
        {gene_symbol_column}
        use_h5ad_index: read Ensembl IDs from the var index.
        {layer}
        {keep_counts}
        {collapse_gene_ids}
        reader_options: more keyword arguments of :func:`geneformer.io.open_reader`, e.g. for a SOMA
            experiment ``measurement``, ``value_filter`` and ``var_id_column``.
        {symbol_fallback}
    """
    vocab = as_vocab(vocab)
    if special_token is None:
        special_token = vocab.has_cls_eos
    if special_token and not vocab.has_cls_eos:
        raise OptionError("special_token=True needs <cls> and <eos> in the token dictionary; "
                          "use model_version='V1' or special_token=False for a V1-style vocabulary.")
    if not special_token and vocab.has_cls_eos:
        logger.warning("The token dictionary has <cls>/<eos> but special_token=False: cells get no <cls>/<eos>.")
    if model_input_size is None:
        model_input_size = MODEL_INPUT_SIZE["V2" if special_token else "V1"]
    return TokenizerSettings(
        vocab=vocab, model_input_size=check_positive_int("model_input_size", model_input_size),
        special_token=bool(special_token), collapse_gene_ids=bool(collapse_gene_ids), keep_counts=bool(keep_counts),
        chunk_size=check_positive_int("chunk_size", chunk_size), gene_id_column=gene_id_column,
        gene_symbol_column=gene_symbol_column, use_h5ad_index=bool(use_h5ad_index), layer=layer,
        symbol_fallback=bool(symbol_fallback), attr_map=check_attr_map(custom_attr_name_dict),
        read_options=dict(reader_options or {}),
    )


@dataclass
class ChunkStats:
    """Cells of a chunk (or a whole input) that were not written, and why."""

    n_filtered: int = 0  # filter_pass other than 1
    n_empty: int = 0  # no expressed vocabulary gene
    n_bad_counts: int = 0  # n_counts missing or <= 0
    non_integer: bool = False  # counts that are not whole numbers were seen

    def add(self, other: ChunkStats) -> None:
        """Add ``other``'s counts to these (also used by :class:`FileReport`, which has the same fields)."""
        for f in fields(ChunkStats):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            setattr(self, f.name, (mine or theirs) if isinstance(mine, bool) else mine + theirs)


@dataclass
class FileReport:
    """What the tokenization of one input did."""

    path: str
    n_cells: int = 0
    n_written: int = 0
    n_filtered: int = 0
    n_empty: int = 0
    n_bad_counts: int = 0
    non_integer: bool = False
    gene_overlap: float = 0.0
    n_counts_source: str = ""
    gene_source: str = ""

    add = ChunkStats.add
