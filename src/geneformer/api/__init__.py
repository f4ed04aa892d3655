"""The model-card API (Helical style): :class:`GeneformerConfig`, :class:`Geneformer` and
:class:`GeneformerFineTuningModel`; ``Geneformer`` also carries our short forms
(``from_pretrained``, ``tokenize``, ``embed``, ``perturb``, ``finetune``)."""

from ._config import GeneformerConfig
from ._finetune import GeneformerFineTuningModel
from ._model import Geneformer

__all__ = ["Geneformer", "GeneformerConfig", "GeneformerFineTuningModel"]
