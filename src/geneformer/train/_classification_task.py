"""What a classifier learns and how it trains: :class:`ClassifierTask` (cells by a label column, or
genes by class, in one vocabulary) and :class:`TrainingOptions`, shared by single runs,
cross-validation and hyperparameter search; plus the parameter texts their functions share."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, get_args

from .._constants import CLASSIFIER_HEADS, ClassifierKind, ModelKind, ModelVersion
from .._utils import check_choice, check_model_version, check_positive_int
from .._utils._docs import doc_progress
from ._classification_genes import gene_class_tokens, token_classes

logger = logging.getLogger(__name__)

CLASSIFIER_KINDS: tuple[str, ...] = get_args(ClassifierKind)

#: Parameter texts of the classification functions (placed with ``doc_params``).
DOCS = dict(
    model_directory="""model_directory: the pretrained model to fine-tune: a zoo name or a model folder.""",
    num_classes="""num_classes: number of classes (the size of the new head).""",
    train_data="""train_data: labelled training cells (a ``prepare_classifier_data`` output folder or Dataset).""",
    eval_data="""eval_data: labelled evaluation cells, or None (no evaluation during training).""",
    output_directory="""output_directory: where the run writes its model, checkpoints and results.""",
    task="""task: what is classified (:class:`ClassifierTask`).""",
    options="""options: how to train and evaluate (:class:`TrainingOptions`).""",
    id_class_dict="""id_class_dict: ``{class id: label}``, or the path of a ``{prefix}_id_class_dict.pkl``.""",
    progress=doc_progress,
)


@dataclass(frozen=True)
class ClassifierTask:
    """What is classified: cells by the ``state_key`` column, or genes by ``gene_class_tokens``
    (``{class: [token ids]}``), with the ``token_dictionary`` of the model's vocabulary."""

    kind: ClassifierKind
    token_dictionary: Mapping[str, int]
    model_version: ModelVersion = "V2"
    state_key: str | None = None
    gene_class_tokens: Mapping[Any, Sequence[int]] | None = None
    unknown_genes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_choice("classifier", self.kind, CLASSIFIER_KINDS)

    @property
    def model_type(self) -> ModelKind:
        return "cell_classifier" if self.kind == "cell" else "gene_classifier"

    @property
    def label_column(self) -> str:
        return "label" if self.kind == "cell" else "labels"

    @property
    def vocab_size(self) -> int:
        return max(self.token_dictionary.values()) + 1

    def token_names(self) -> dict[int, str] | None:
        """``{token id: gene}`` for gene classifiers (their prediction tables name the genes)."""
        return {v: k for k, v in self.token_dictionary.items()} if self.kind == "gene" else None

    def token_class(self, id_class_dict: Mapping[int, Any] | None = None) -> dict[int, int]:
        """``{token: class id}`` for every class gene (ids from ``id_class_dict``, else the classes' order)."""
        if self.gene_class_tokens is None:
            raise ValueError("token_class is for gene classifiers (gene_class_dict).")
        return token_classes(self.gene_class_tokens, id_class_dict)

    def default_id_class_dict(self) -> dict[int, Any]:
        """Gene classifiers' ``{class id: class}`` in the order of the gene class dictionary."""
        return dict(enumerate(self.gene_class_tokens or {}))

    def collator(self) -> Any:
        from ._collators import DataCollatorForCellClassification, DataCollatorForGeneClassification

        cls = DataCollatorForCellClassification if self.kind == "cell" else DataCollatorForGeneClassification
        return cls(token_dictionary=self.token_dictionary)


def load_token_dictionary(model_version: str = "V2", token_dictionary_file: str | os.PathLike | None = None,
                          ) -> tuple[dict[str, int], dict[str, str] | None]:
    """``(token dictionary, gene symbol -> Ensembl ID or None)``: a custom dictionary file, else the
    published V1/V2 vocabulary (V1 ignores the file, as the reference)."""
    from ..vocab import GeneVocab, load_dict_file

    if token_dictionary_file is not None and model_version != "V1":
        return {str(k): int(v) for k, v in load_dict_file(token_dictionary_file).items()}, None
    if token_dictionary_file is not None:
        logger.warning("token_dictionary_file is ignored with model_version='V1' (as the reference).")
    vocab = GeneVocab.load(model_version)
    return vocab.token_dict, vocab.gene_name_id


def classifier_task(kind: ClassifierKind, *, state_key: str | None = None,
                    gene_class_dict: Mapping[Any, Sequence[str]] | None = None, model_version: str = "V2",
                    token_dictionary_file: str | os.PathLike | None = None) -> ClassifierTask:
    """A :class:`ClassifierTask` with its vocabulary loaded and the gene classes as tokens (genes
    outside the vocabulary are dropped, listed in ``unknown_genes`` and logged)."""
    version = check_model_version(model_version)
    token_dict, gene_name_id = load_token_dictionary(version, token_dictionary_file)
    tokens, unknown = None, []
    if kind == "gene":
        tokens, unknown = gene_class_tokens(gene_class_dict, token_dict, gene_name_id)
    return ClassifierTask(kind, token_dict, version, state_key if kind == "cell" else None, tokens, tuple(unknown))


def check_class_weights(spec: Any) -> Any:
    """None, "balanced", a per-class list or a ``{class id: weight}`` dict."""
    ok = spec == "balanced" if isinstance(spec, str) else spec is None or spec is False or isinstance(
        spec, (Sequence, Mapping))
    if ok:
        return spec
    raise ValueError(f"class_weights must be None, 'balanced', a list or a dict {{class id: weight}}; got {spec!r}.")


@dataclass(frozen=True)
class TrainingOptions:
    """How to fine-tune and evaluate.

    ``training_args``: ``TrainingArguments`` overrides of the reference's defaults; ``freeze_layers``:
    first encoder layers left frozen; ``lora``: True or LoraConfig options (adapters on query/value,
    head trained); ``quantize``: 4-/8-bit loading + LoRA (CUDA); ``class_weights``: None,
    "balanced" or per-class weights of the loss; ``no_eval``: train without evaluation;
    ``seed``: data shuffles, splits and head initialisation; ``report_to``: Trainer loggers;
    ``progress``: progress bars (None: ``settings.progress``); ``resume_from_checkpoint``: True or a
    checkpoint folder; ``forward_batch_size``: cells per prediction batch; ``hyperopt_space``: the
    Optuna search space (:mod:`geneformer.train._hyperopt`; None: the default space); ``head``: the
    cell classifier's pooling ("first" as the reference, "mean", "cls"; see ``models._pooled``);
    ``early_stopping``: stop after this many evaluations without a better validation metric (None:
    train every epoch); ``epoch_summary``: print each evaluation's losses and macro-F1 (when
    progress is shown).
    """

    training_args: Mapping[str, Any] = field(default_factory=dict)
    freeze_layers: int = 0
    lora: Any = False
    quantize: Any = False
    class_weights: Any = None
    no_eval: bool = False
    seed: int = 42
    report_to: str | Sequence[str] = "none"
    progress: bool | None = None
    resume_from_checkpoint: bool | str | os.PathLike | None = None
    forward_batch_size: int = 100
    hyperopt_space: Mapping[str, Any] | None = None
    head: str = "first"
    early_stopping: int | None = None
    epoch_summary: bool = False

    def __post_init__(self) -> None:
        check_choice("head", self.head, CLASSIFIER_HEADS)
        if self.early_stopping is not None:
            check_positive_int("early_stopping", self.early_stopping)
        check_positive_int("freeze_layers", self.freeze_layers, minimum=0)
        check_positive_int("forward_batch_size", self.forward_batch_size)
        check_class_weights(self.class_weights)
