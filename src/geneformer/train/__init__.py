"""Training: masked-gene pretraining and continual learning; fine-tuning of cell and gene
classifiers (one path shared by single runs, cross-validation and hyperparameter search), multi-task
training, metrics and the batching pieces (collators, length-grouped sampler, attention dropout)."""

from .._utils import ClassifierDataError, CorpusError
from ..models import GeneformerForMaskedLM, GeneformerMultiTask, load_finetuned, quantize_dynamic_int8
from ._architectures import ARCHITECTURES, architecture_config, load_config
from ._cell_model import cell_model, cell_outputs, cell_targets, load_fine_tuned, save_fine_tuned, train_cell_model
from ._collators import DataCollatorForCellClassification, DataCollatorForGeneClassification, DataCollatorForMaskedGenes
from ._corpus import add_length_column, check_corpus
from ._dropout_attention import use_fused_attention_dropout
from ._finetune import FinetuneResult, finetune, predict
from ._heads import HeadTrainer, RowCollator, RowDataset
from ._masked_trainer import MaskedGeneTrainer
from ._multitask import MULTITASK_HYPERPARAMETERS, MULTITASK_MANUAL_HYPERPARAMETERS
from ._multitask_runs import MultiTaskRun, evaluate_multitask, make_output_dirs, run_multitask, run_multitask_study
from ._pretraining import PretrainResult, config_file, pretrain
from ._sampler import LengthGroupedSampler

__all__ = [
    "ARCHITECTURES", "ClassifierDataError", "CorpusError", "DataCollatorForCellClassification",
    "DataCollatorForGeneClassification", "DataCollatorForMaskedGenes", "FinetuneResult", "GeneformerForMaskedLM",
    "GeneformerMultiTask", "LengthGroupedSampler", "MaskedGeneTrainer", "PretrainResult", "add_length_column", "architecture_config",
    "check_corpus", "config_file", "finetune", "load_config", "load_finetuned", "predict", "pretrain",
    "quantize_dynamic_int8", "use_fused_attention_dropout",
    "HeadTrainer", "MULTITASK_HYPERPARAMETERS", "MULTITASK_MANUAL_HYPERPARAMETERS", "MultiTaskRun", "RowCollator",
    "RowDataset", "cell_model", "cell_outputs", "cell_targets", "evaluate_multitask", "load_fine_tuned",
    "make_output_dirs", "run_multitask", "run_multitask_study", "save_fine_tuned", "train_cell_model",
]
