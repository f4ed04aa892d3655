"""Geneformer: rank value encoding, embeddings, in silico perturbation and fine-tuning.

Three front doors onto one core (see the README's "Architecture"):

- the reference package's classes (``TranscriptomeTokenizer``, ``EmbExtractor``,
  ``InSilicoPerturber``, ``InSilicoPerturberStats``, ``Classifier``, ``MTLClassifier``,
  ``GeneformerPretrainer``, the collators, ``get_embs``), from :mod:`geneformer.compat`;
- the model-card API (``GeneformerConfig``, ``Geneformer``, ``GeneformerFineTuningModel``), from
  :mod:`geneformer.api`;
- our short functions (``tokenize_anndata``, ``tokenize_files``, ``estimate_gene_medians``,
  ``build_vocab``, ``load_model``, ``cell_embeddings``, ``perturb``, ``finetune``, ``predict``,
  ``pretrain``), from the stage packages.

``geneformer.settings`` holds the package-wide defaults. Public names are imported lazily so that
``import geneformer`` stays fast and light.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._settings import settings  # noqa: F401  (in __all__, built at runtime)

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # reference-compatible classes
    "TranscriptomeTokenizer": "geneformer.compat",
    "EmbExtractor": "geneformer.compat",
    "get_embs": "geneformer.compat",
    "InSilicoPerturber": "geneformer.compat",
    "InSilicoPerturberStats": "geneformer.compat",
    "Classifier": "geneformer.compat",
    "MTLClassifier": "geneformer.compat",
    "GeneformerPretrainer": "geneformer.compat",
    "DataCollatorForCellClassification": "geneformer.train",
    "DataCollatorForGeneClassification": "geneformer.train",
    # the model-card API
    "Geneformer": "geneformer.api",
    "GeneformerConfig": "geneformer.api",
    "GeneformerFineTuningModel": "geneformer.api",
    # vocabularies and tokenization
    "GeneVocab": "geneformer.vocab",
    "load_vocab": "geneformer.vocab",
    "estimate_gene_medians": "geneformer.vocab",
    "build_vocab": "geneformer.vocab",
    "tokenize_anndata": "geneformer.tokenization",
    "tokenize_files": "geneformer.tokenization",
    "rank_value_encode": "geneformer.tokenization",
    # models, embeddings, perturbation, training
    "load_model": "geneformer.models",
    "MODEL_ZOO": "geneformer.models",
    "cell_embeddings": "geneformer.embeddings",
    "gene_embeddings": "geneformer.embeddings",
    "finetune": "geneformer.train",
    "predict": "geneformer.train",
    "pretrain": "geneformer.train",
    # errors
    "GeneformerError": "geneformer._utils",
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

__all__ = sorted(["settings", *_EXPORTS, *_DICT_CONSTANTS])


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
