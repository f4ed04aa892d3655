"""The reference package's classes, with its arguments and defaults, as thin translators onto the
core: :class:`TranscriptomeTokenizer`, :class:`EmbExtractor` (and ``get_embs``),
:class:`InSilicoPerturber`, :class:`InSilicoPerturberStats`, :class:`Classifier`,
:class:`MTLClassifier` and :class:`GeneformerPretrainer`."""

from ._classifier import Classifier
from ._emb_extractor import EmbExtractor, get_embs
from ._mtl_classifier import MTLClassifier
from ._perturber import InSilicoPerturber
from ._perturber_stats import InSilicoPerturberStats
from ._pretrainer import GeneformerPretrainer
from ._tokenizer import TranscriptomeTokenizer

__all__ = [
    "Classifier", "EmbExtractor", "GeneformerPretrainer", "InSilicoPerturber", "InSilicoPerturberStats",
    "MTLClassifier", "TranscriptomeTokenizer", "get_embs",
]
