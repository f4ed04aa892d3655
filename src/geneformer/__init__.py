"""Geneformer: rank value encoding, embeddings, in silico perturbation and fine-tuning.

Public names are imported lazily so that ``import geneformer`` stays fast and light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # vocabularies
    "GeneVocab": "geneformer.vocab",
    "load_vocab": "geneformer.vocab",
    # tokenization
    "TranscriptomeTokenizer": "geneformer.tokenizer",
    "tokenize_anndata": "geneformer.tokenizer",
    "tokenize_files": "geneformer.tokenizer",
    "rank_value_encode": "geneformer.encode",
    # corpus statistics
    "estimate_gene_medians": "geneformer.corpus",
    "build_vocab": "geneformer.corpus",
    # models and embeddings
    "load_model": "geneformer.models",
    "MODEL_ZOO": "geneformer.models",
    "EmbExtractor": "geneformer.embeddings",
    "get_embs": "geneformer.embeddings",
    "Geneformer": "geneformer.api",
    "GeneformerConfig": "geneformer.api",
    # perturbation
    "InSilicoPerturber": "geneformer.perturb.perturber",
    "InSilicoPerturberStats": "geneformer.perturb.stats",
    # pretraining
    "GeneformerPretrainer": "geneformer.train.pretraining",
    "pretrain": "geneformer.train.pretraining",
    "DataCollatorForCellClassification": "geneformer.train.collators",
    "DataCollatorForGeneClassification": "geneformer.train.collators",
    # fine-tuning
    "Classifier": "geneformer.train.classifier",
    "MTLClassifier": "geneformer.train.mtl",
    "GeneformerFineTuningModel": "geneformer.api_finetune",
}

# module constants naming the published dictionary files, resolved on first access
_DICT_CONSTANTS = {
    "GENE_MEDIAN_FILE": ("gene_median", "V2"),
    "TOKEN_DICTIONARY_FILE": ("token_dictionary", "V2"),
    "ENSEMBL_DICTIONARY_FILE": ("gene_name_id", "V2"),
    "ENSEMBL_MAPPING_FILE": ("ensembl_mapping", "V2"),
    "GENE_MEDIAN_FILE_30M": ("gene_median", "V1"),
    "TOKEN_DICTIONARY_FILE_30M": ("token_dictionary", "V1"),
    "ENSEMBL_DICTIONARY_FILE_30M": ("gene_name_id", "V1"),
    "ENSEMBL_MAPPING_FILE_30M": ("ensembl_mapping", "V1"),
}

__all__ = sorted(list(_EXPORTS) + list(_DICT_CONSTANTS))


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _DICT_CONSTANTS:
        from .vocab import resolve_dict_file

        kind, version = _DICT_CONSTANTS[name]
        return resolve_dict_file(kind, version)
    raise AttributeError(f"module 'geneformer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
