"""Gene vocabularies: the published V1/V2 dictionaries (token ids, gene medians, symbol and Ensembl
maps) and where they are found, which vocabulary gene each gene of a file is, and new vocabularies
from the gene medians of a corpus."""

from .._utils import VocabularyError
from ._build import build_vocab, vocab_file_paths, write_vocab
from ._corpus import GeneFilter, compute_gene_digests, estimate_gene_medians
from ._corpus_vocab import CorpusVocab, build_corpus_vocab, merge_vocab_shards
from ._digests import GeneDigests
from ._genes import SYMBOL_COLUMNS, GeneMap, GeneMatch, file_gene_ids, looks_like_ensembl, match_genes
from ._vocab import (
    DICT_FILES,
    HUB_SUBFOLDERS,
    GeneVocab,
    as_vocab,
    convert_dict_file,
    load_dict_file,
    load_vocab,
    resolve_dict_file,
)

__all__ = [
    "CorpusVocab", "DICT_FILES", "HUB_SUBFOLDERS", "SYMBOL_COLUMNS", "GeneDigests", "GeneFilter", "GeneMap", "GeneMatch",
    "GeneVocab", "VocabularyError", "as_vocab", "build_corpus_vocab", "build_vocab", "compute_gene_digests",
    "convert_dict_file", "estimate_gene_medians", "file_gene_ids", "load_dict_file", "load_vocab", "looks_like_ensembl",
    "match_genes", "merge_vocab_shards", "resolve_dict_file", "vocab_file_paths", "write_vocab",
]
