"""Cell, ``<cls>`` and gene embeddings, summaries, attention, and the reference-compatible EmbExtractor."""

from .attention import CellAttention, attention_network, get_attentions
from .core import (
    GeneEmbeddings,
    SpecialTokens,
    cell_embeddings,
    gene_embeddings,
    gene_states_per_cell,
    special_flags,
    token_labels,
)
from .extractor import EmbExtractor, get_embs, load_state_embs, validate_cell_states_to_model
from .outputs import (
    OBSM_KEY,
    add_cell_embeddings,
    add_gene_embeddings,
    embedding_frame,
    write_csv,
    write_parquet,
    write_tensor,
)
from .summaries import StreamingGeneSummary, StreamingSummary, exact_summary

__all__ = [
    "OBSM_KEY",
    "CellAttention",
    "EmbExtractor",
    "GeneEmbeddings",
    "SpecialTokens",
    "StreamingGeneSummary",
    "StreamingSummary",
    "add_cell_embeddings",
    "add_gene_embeddings",
    "attention_network",
    "cell_embeddings",
    "embedding_frame",
    "exact_summary",
    "gene_embeddings",
    "gene_states_per_cell",
    "get_attentions",
    "get_embs",
    "load_state_embs",
    "special_flags",
    "token_labels",
    "validate_cell_states_to_model",
    "write_csv",
    "write_parquet",
    "write_tensor",
]
