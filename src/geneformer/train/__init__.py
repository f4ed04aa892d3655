"""Training: masked-gene pretraining and continual learning, and fine-tuning (classifiers, MTL, LoRA).

Names are imported lazily, so that using a collator does not import the ``Trainer`` stack.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ARCHITECTURES": "architectures",
    "architecture_config": "architectures",
    "load_config": "architectures",
    "DataCollatorForMaskedGenes": "collators",
    "DataCollatorForCellClassification": "collators",
    "DataCollatorForGeneClassification": "collators",
    "GeneformerForMaskedLM": "mlm",
    "LengthGroupedSampler": "sampler",
    "CorpusError": "pretraining",
    "GeneformerPretrainer": "pretraining",
    "PretrainResult": "pretraining",
    "add_length_column": "pretraining",
    "check_corpus": "pretraining",
    "config_file": "pretraining",
    "pretrain": "pretraining",
    "Classifier": "classifier",
    "MTLClassifier": "mtl",
    "GeneformerMultiTask": "mtl",
    "finetune": "finetune",
    "predict": "finetune",
    "load_finetuned": "lora",
    "quantize_dynamic_int8": "lora",
    "use_fused_attention_dropout": "dropout_attention",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
