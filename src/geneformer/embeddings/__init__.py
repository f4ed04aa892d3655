"""Cell, ``<cls>`` and gene embeddings, their summaries over cells, state embeddings, attention
weights, and writing embeddings to AnnData, parquet, CSV or tensors."""

from ._attention import CellAttention, attention_network, get_attentions
from ._core import (
    GeneEmbeddings,
    SpecialTokens,
    cell_embeddings,
    check_cls,
    gene_embeddings,
    gene_position_mask,
    gene_states_per_cell,
    mean_over_genes,
    special_flags,
    token_labels,
)
from ._extract import ExtractedEmbeddings, embedding_tensor, extract_embeddings
from ._job import CHUNK_ROWS, embed_to_file, merge_embedding_shards
from ._outputs import (
    OBSM_KEY,
    add_cell_embeddings,
    add_gene_embeddings,
    embedding_frame,
    output_format,
    write_csv,
    write_h5ad,
    write_parquet,
    write_tensor,
)
from ._states import load_state_embs, save_state_embs, state_embeddings
from ._summaries import StreamingGeneSummary, StreamingSummary, check_summary_stat, exact_summary

__all__ = [
    "OBSM_KEY", "CellAttention", "ExtractedEmbeddings", "GeneEmbeddings", "SpecialTokens", "StreamingGeneSummary", "StreamingSummary",
    "add_cell_embeddings", "add_gene_embeddings", "attention_network", "cell_embeddings", "check_cls",
    "check_summary_stat",
    "embedding_frame", "embedding_tensor", "exact_summary", "extract_embeddings", "gene_embeddings", "gene_position_mask", "gene_states_per_cell",
    "get_attentions", "load_state_embs", "mean_over_genes", "save_state_embs", "state_embeddings", "output_format", "special_flags", "token_labels", "write_csv",
    "write_h5ad", "write_parquet", "write_tensor",
    "CHUNK_ROWS", "embed_to_file", "merge_embedding_shards",
]
