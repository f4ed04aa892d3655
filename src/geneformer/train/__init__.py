"""Training: masked-gene pretraining and continual learning; fine-tuning of cell and gene
classifiers (one path shared by single runs, cross-validation and hyperparameter search), multi-task
training, metrics and the batching pieces (collators, length-grouped sampler, attention dropout)."""

from .._utils import ClassifierDataError, CorpusError
from ..models import GeneformerForMaskedLM, GeneformerMultiTask, load_finetuned, quantize_dynamic_int8
from ._architectures import ARCHITECTURES, architecture_config, load_config
from ._collators import DataCollatorForCellClassification, DataCollatorForGeneClassification, DataCollatorForMaskedGenes
from ._corpus import add_length_column, check_corpus
from ._dropout_attention import use_fused_attention_dropout
from ._finetune import FinetuneResult, finetune, predict
from ._masked_trainer import MaskedGeneTrainer
from ._pretraining import PretrainResult, config_file, pretrain
from ._sampler import LengthGroupedSampler

__all__ = [
    "ARCHITECTURES", "ClassifierDataError", "CorpusError", "DataCollatorForCellClassification",
    "DataCollatorForGeneClassification", "DataCollatorForMaskedGenes", "FinetuneResult", "GeneformerForMaskedLM",
    "GeneformerMultiTask", "LengthGroupedSampler", "MaskedGeneTrainer", "PretrainResult", "add_length_column", "architecture_config",
    "check_corpus", "config_file", "finetune", "load_config", "load_finetuned", "predict", "pretrain",
    "quantize_dynamic_int8", "use_fused_attention_dropout",
]
