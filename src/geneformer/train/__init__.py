"""Training: masked-gene pretraining and continual learning; fine-tuning of cell and gene
classifiers (one path shared by single runs, cross-validation and hyperparameter search), multi-task
training, metrics and the batching pieces (collators, length-grouped sampler, attention dropout)."""

from .._utils import ClassifierDataError, CorpusError
from ..models import GeneformerForMaskedLM, GeneformerMultiTask, load_finetuned, quantize_dynamic_int8
from ._architectures import ARCHITECTURES, architecture_config, load_config
from ._cell_model import cell_model, cell_outputs, cell_targets, load_cell_model, save_cell_model, train_cell_model
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
from ._collators import DataCollatorForCellClassification, DataCollatorForGeneClassification, DataCollatorForMaskedGenes
from ._corpus import add_length_column, check_corpus
from ._dropout_attention import use_fused_attention_dropout
from ._evaluation import evaluate_classifier, evaluate_saved_classifier, load_predictions
from ._finetune import FinetuneResult, finetune, predict
from ._heads import HeadTrainer, RowCollator, RowDataset
from ._hyperopt import HyperoptResult
from ._masked_trainer import MaskedGeneTrainer
from ._multitask import MULTITASK_HYPERPARAMETERS, MULTITASK_MANUAL_HYPERPARAMETERS
from ._multitask_runs import MultiTaskRun, evaluate_multitask, make_output_dirs, run_multitask, run_multitask_study
from ._pretraining import PretrainResult, config_file, pretrain
from ._sampler import LengthGroupedSampler

__all__ = [
    "ARCHITECTURES", "ClassifierDataError", "ClassifierTask", "CorpusError", "DataCollatorForCellClassification",
    "DataCollatorForGeneClassification", "DataCollatorForMaskedGenes", "FinetuneResult", "GeneformerForMaskedLM",
    "GeneformerMultiTask", "HeadTrainer", "HyperoptResult", "LengthGroupedSampler", "MULTITASK_HYPERPARAMETERS",
    "MULTITASK_MANUAL_HYPERPARAMETERS", "MaskedGeneTrainer", "MultiTaskRun", "PreparedData", "PretrainResult",
    "RowCollator", "RowDataset", "TrainingOptions", "add_length_column", "architecture_config", "as_id_class_dict",
    "build_classifier_trainer", "cell_model", "cell_outputs", "cell_targets", "check_corpus", "check_data_options",
    "classifier_output_dir", "classifier_task", "config_file", "cross_validate_classifier", "default_training_args",
    "eval_fraction", "evaluate_classifier", "evaluate_multitask", "evaluate_saved_classifier", "finetune",
    "load_config", "load_cell_model", "load_finetuned", "load_id_class_dict", "load_labelled", "load_predictions",
    "make_output_dirs", "predict", "prepare_classifier_data", "pretrain", "quantize_dynamic_int8", "run_multitask",
    "run_multitask_study", "save_cell_model", "save_trained", "search_classifier", "train_cell_model",
    "train_classifier", "train_classifier_all_data", "use_fused_attention_dropout",
]
