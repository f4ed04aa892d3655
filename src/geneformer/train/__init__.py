"""Training: masked-gene pretraining and continual learning; fine-tuning of cell and gene
classifiers (one path shared by single runs, cross-validation and hyperparameter search), multi-task
training, metrics and the batching pieces (collators, length-grouped sampler, attention dropout)."""

from .._utils import ClassifierDataError, CorpusError
from ..models import GeneformerForMaskedLM, GeneformerMultiTask, load_finetuned, quantize_dynamic_int8
from ._architectures import ARCHITECTURES, architecture_config, load_config
from ._collators import DataCollatorForCellClassification, DataCollatorForGeneClassification, DataCollatorForMaskedGenes
from ._dropout_attention import use_fused_attention_dropout
from ._finetune import FinetuneResult, finetune, predict
from ._pretraining import MaskedGeneTrainer, PretrainResult, add_length_column, check_corpus, config_file, pretrain
from ._sampler import LengthGroupedSampler
from ._classification_cv import (
    classifier_output_dir,
    cross_validate_classifier,
    eval_fraction,
    train_classifier_all_data,
)
from ._classification_data import as_id_class_dict, check_data_options, load_id_class_dict, load_labelled
from ._classification_prepare import PreparedData, prepare_classifier_data
from ._classification_search import search_classifier
from ._classification_task import ClassifierTask, TrainingOptions, classifier_task
from ._classification_training import (
    build_classifier_trainer,
    default_training_args,
    save_trained,
    train_classifier,
)
from ._evaluation import evaluate_classifier, evaluate_saved_classifier, load_predictions
from ._hyperopt import HyperoptResult

__all__ = [
    "ARCHITECTURES", "ClassifierDataError", "CorpusError", "DataCollatorForCellClassification",
    "DataCollatorForGeneClassification", "DataCollatorForMaskedGenes", "FinetuneResult", "GeneformerForMaskedLM",
    "GeneformerMultiTask", "LengthGroupedSampler", "MaskedGeneTrainer", "PretrainResult", "add_length_column", "architecture_config",
    "check_corpus", "config_file", "finetune", "load_config", "load_finetuned", "predict", "pretrain",
    "quantize_dynamic_int8", "use_fused_attention_dropout",
    "ClassifierTask", "HyperoptResult", "PreparedData", "TrainingOptions", "as_id_class_dict",
    "build_classifier_trainer", "check_data_options", "classifier_output_dir", "classifier_task",
    "cross_validate_classifier", "default_training_args", "eval_fraction", "evaluate_classifier", "evaluate_saved_classifier", "load_id_class_dict",
    "load_labelled", "load_predictions", "prepare_classifier_data", "save_trained", "search_classifier",
    "train_classifier", "train_classifier_all_data",
]
