"""``Classifier``: fine-tune Geneformer to classify cells or genes (reference-compatible, SPEC 5).

Typical use (the reference's notebooks run unchanged)::

    cc = Classifier(classifier="cell", cell_state_dict={"state_key": "cell_type", "states": "all"},
                    training_args={"num_train_epochs": 1}, num_crossval_splits=1)
    cc.prepare_data("pbmc.dataset", "out", "pbmc")               # labels, splits, id_class_dict
    metrics = cc.validate("model_dir", "out/pbmc_labeled_train.dataset",
                          "out/pbmc_id_class_dict.pkl", "out", "pbmc")
    cc.evaluate_saved_model(".../ksplit1", "out/pbmc_id_class_dict.pkl",
                            "out/pbmc_labeled_test.dataset", "out", "pbmc")

Differences from the reference (all fixes): class ids follow the sorted labels; ``rare_threshold``
works; splits are stratified by class; the attribute-balanced split uses the best trial; every
evaluation example is scored and ties go to the lowest class id; unknown genes of a gene-class
dictionary are listed and dropped; cross-validation folds are stratified (by patient groups when
``attr_to_split`` is given); hyperparameter search uses Optuna (no Ray); LoRA keeps the head trainable.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .. import plotting
from ..data import as_sequences, filter_by_dict, load_tokenized
from ..inference import validate_sequences
from ..train import DataCollatorForCellClassification, DataCollatorForGeneClassification
from ..train import _classification_data as cd
from ..train import _evaluation as ev

if TYPE_CHECKING:  # pragma: no cover
    from transformers import Trainer, TrainingArguments

    from ..train._trainer import ClassifierTrainer

# the Trainer stack is imported only when training starts, so data preparation stays light
_LAZY = {"ClassifierTrainer", "trainer_metrics", "training_arguments"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from ..train import _trainer as classifier_trainer

        return getattr(classifier_trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin")


def _has_final_model(folder: Path) -> bool:
    return any((folder / w).is_file() for w in WEIGHT_FILES)


def _move_contents(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        target = dst / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    src.rmdir()


# ------------------------------------------------------------------------------------------------
# Classifier
# ------------------------------------------------------------------------------------------------
class Classifier:
    """Fine-tune and evaluate cell (sequence) or gene (token) classifiers; see the module docstring.

    Reference arguments (SPEC 5.1) keep their meaning and defaults. Extra keyword arguments:
    ``lora`` (True / LoraConfig options: LoRA adapters on query/value, head trained),
    ``class_weights`` (None, "balanced" or per-class list: weighted cross-entropy),
    ``hyperopt_space`` (Optuna search space, see :mod:`geneformer.train.hyperopt`; ``ray_config``
    is accepted in the same format), ``seed`` (data shuffles and splits, default 42),
    ``resume_from_checkpoint`` (True or a checkpoint folder), ``report_to`` ("none", "tensorboard", ...)
    and ``progress`` (progress bars).
    """

    valid_option_dict = {
        "classifier": {"cell", "gene"},
        "model_version": {"V1", "V2"},
    }

    def __init__(
        self,
        classifier: str | None = None,
        quantize: bool | int | Mapping = False,
        cell_state_dict: Mapping | None = None,
        gene_class_dict: Mapping | None = None,
        filter_data: Mapping | None = None,
        rare_threshold: float = 0,
        max_ncells: int | None = None,
        max_ncells_per_class: int | None = None,
        training_args: Mapping | None = None,
        ray_config: Mapping | None = None,
        freeze_layers: int = 0,
        num_crossval_splits: int = 1,
        split_sizes: Mapping[str, float] | None = None,
        stratify_splits_col: str | None = None,
        no_eval: bool = False,
        forward_batch_size: int = 100,
        model_version: str = "V2",
        token_dictionary_file: str | os.PathLike | None = None,
        nproc: int = 4,
        ngpu: int = 1,
        *,
        lora: bool | Mapping | Any = False,
        class_weights: str | Sequence[float] | Mapping | None = None,
        hyperopt_space: Mapping | None = None,
        seed: int = 42,
        resume_from_checkpoint: bool | str | os.PathLike | None = None,
        report_to: str | Sequence[str] = "none",
        progress: bool = True,
    ) -> None:
        self.classifier = classifier
        self.quantize = quantize
        self.cell_state_dict = dict(cell_state_dict) if cell_state_dict else None
        self.gene_class_dict = gene_class_dict
        self.filter_data = dict(filter_data) if filter_data else None
        self.rare_threshold = rare_threshold
        self.max_ncells = max_ncells
        self.max_ncells_per_class = max_ncells_per_class
        self.training_args = dict(training_args or {})
        self.ray_config = ray_config
        self.freeze_layers = freeze_layers
        self.num_crossval_splits = num_crossval_splits
        self.split_sizes = dict(split_sizes) if split_sizes is not None else {"train": 0.8, "valid": 0.1, "test": 0.1}
        self.stratify_splits_col = stratify_splits_col
        self.no_eval = no_eval
        self.forward_batch_size = forward_batch_size
        self.model_version = model_version
        self.token_dictionary_file = token_dictionary_file
        self.nproc = nproc
        self.ngpu = ngpu
        self.lora = lora
        self.class_weights = class_weights
        self.hyperopt_space = hyperopt_space if hyperopt_space is not None else ray_config
        self.seed = int(seed)
        self.resume_from_checkpoint = resume_from_checkpoint
        self.report_to = report_to
        self.progress = progress
        self.validate_options()
        self._load_dictionary()
        self.gene_class_tokens: dict[Any, list[int]] | None = None
        self.unknown_genes: list[str] = []
        if self.classifier == "gene":
            gene_name_id = getattr(self, "_gene_name_id", None)
            self.gene_class_tokens, self.unknown_genes = cd.gene_class_tokens(
                self.gene_class_dict, self.token_dictionary, gene_name_id)
        self._id_class_dict: dict[int, Any] | None = None

    # ---- options -------------------------------------------------------------------------------
    @property
    def model_type(self) -> str:
        return "cell_classifier" if self.classifier == "cell" else "gene_classifier"

    @property
    def label_column(self) -> str:
        return "label" if self.classifier == "cell" else "labels"

    @property
    def state_key(self) -> str | None:
        return self.cell_state_dict["state_key"] if self.cell_state_dict else None

    def validate_options(self) -> None:
        """Raise ValueError/TypeError naming the bad option and its valid values."""
        if self.classifier not in self.valid_option_dict["classifier"]:
            raise ValueError(f"classifier must be 'cell' or 'gene', got {self.classifier!r}.")
        if self.model_version not in self.valid_option_dict["model_version"]:
            raise ValueError(f"model_version must be 'V1' or 'V2', got {self.model_version!r}.")
        if self.quantize:
            from ..models import check_quantization_available

            check_quantization_available()
        if self.classifier == "cell":
            if not self.cell_state_dict or set(self.cell_state_dict) != {"state_key", "states"}:
                raise ValueError(
                    "A cell classifier needs cell_state_dict={'state_key': <label column>, 'states': 'all' or "
                    f"[list of >= 2 states]}}; got {self.cell_state_dict!r}."
                )
            states = self.cell_state_dict["states"]
            if states != "all":
                if isinstance(states, str) or not isinstance(states, Sequence) or len(set(states)) < 2:
                    raise ValueError(
                        f"cell_state_dict['states'] must be 'all' or a list of >= 2 states, got {states!r}.")
                self.filter_data = dict(self.filter_data or {})
                key = self.cell_state_dict["state_key"]
                if key in self.filter_data:
                    keep = [s for s in states if s in set(self.filter_data[key])]
                    self.filter_data[key] = keep
                else:
                    self.filter_data[key] = list(states)
            if self.gene_class_dict is not None:
                logger.warning("gene_class_dict is ignored by a cell classifier.")
        else:
            if self.gene_class_dict is None:
                raise ValueError("A gene classifier needs gene_class_dict={class label: [Ensembl IDs]}.")
            if self.cell_state_dict is not None:
                logger.warning("cell_state_dict is ignored by a gene classifier.")
        if self.filter_data:
            fixed = {}
            for k, v in self.filter_data.items():
                if isinstance(v, (str, int, float)) or v is None:
                    logger.warning("filter_data[%r] is a single value; using [%r].", k, v)
                    v = [v]
                fixed[k] = list(v)
            self.filter_data = fixed
        for name in ("max_ncells", "max_ncells_per_class"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, np.integer)) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}.")
        if not isinstance(self.rare_threshold, (int, float)) or not 0 <= self.rare_threshold < 1:
            raise ValueError(f"rare_threshold must be a fraction in [0, 1), got {self.rare_threshold!r}.")
        if not isinstance(self.num_crossval_splits, (int, np.integer)) or self.num_crossval_splits < 0:
            raise ValueError("num_crossval_splits must be 0 (train on all data), 1 or k >= 2, "
                             f"got {self.num_crossval_splits!r}.")
        if not isinstance(self.freeze_layers, (int, np.integer)) or self.freeze_layers < 0:
            raise ValueError(f"freeze_layers must be an integer >= 0, got {self.freeze_layers!r}.")
        sizes = self.split_sizes
        if set(sizes) != {"train", "valid", "test"} or any(v < 0 for v in sizes.values()):
            raise ValueError(f"split_sizes needs non-negative 'train', 'valid' and 'test' fractions, got {sizes!r}.")
        if not math.isclose(sum(sizes.values()), 1.0, abs_tol=1e-6):
            raise ValueError(f"split_sizes must sum to 1, got {sum(sizes.values())} ({sizes}).")
        if sizes["train"] <= 0 or sizes["train"] + sizes["valid"] <= 0:
            raise ValueError("split_sizes['train'] must be > 0.")
        if self.forward_batch_size < 1:
            raise ValueError("forward_batch_size must be >= 1.")
        if self.class_weights is not None and not (self.class_weights == "balanced" or
                                                    isinstance(self.class_weights, (Sequence, Mapping))):
            raise ValueError("class_weights must be None, 'balanced', a list or a dict {class id: weight}.")

    @property
    def eval_size(self) -> float:
        s = self.split_sizes
        return s["valid"] / (s["train"] + s["valid"])

    def _load_dictionary(self) -> None:
        from ..vocab import GeneVocab, load_dict_file

        if self.token_dictionary_file is not None and self.model_version != "V1":
            self.token_dictionary = {str(k): int(v) for k, v in load_dict_file(self.token_dictionary_file).items()}
            self._gene_name_id = None
        else:
            if self.token_dictionary_file is not None:
                logger.warning("token_dictionary_file is ignored with model_version='V1' (as the reference).")
            vocab = GeneVocab.load(self.model_version)
            self.token_dictionary = vocab.token_dict
            self._gene_name_id = vocab.gene_name_id
        self.vocab_size = max(self.token_dictionary.values()) + 1

    # ---- data ----------------------------------------------------------------------------------
    def _load(self, path_or_ds: Any) -> Any:
        ds = load_tokenized(path_or_ds)
        if "length" not in ds.column_names:
            ds = cd.with_column(ds, "length", as_sequences(ds).lengths)
        return ds

    def _token_class(self, id_class_dict: Mapping[int, Any] | None = None) -> dict[int, int]:
        """``{token: class id}`` for every class gene (class ids follow gene_class_dict's order)."""
        assert self.gene_class_tokens is not None
        classes = list(self.gene_class_tokens)
        if id_class_dict is not None:
            name_id = {v: k for k, v in id_class_dict.items()}
            missing = [c for c in classes if c not in name_id]
            if missing:
                raise cd.ClassifierDataError(f"Classes {missing} are not in the id_class_dict {id_class_dict}.")
        else:
            name_id = {c: i for i, c in enumerate(classes)}
        return {t: name_id[c] for c, toks in self.gene_class_tokens.items() for t in toks}

    def prepare_data(
        self,
        input_data_file: str | os.PathLike | Any,
        output_directory: str | os.PathLike,
        output_prefix: str,
        split_id_dict: Mapping | None = None,
        test_size: float | None = None,
        attr_to_split: str | None = None,
        attr_to_balance: Sequence[str] | None = None,
        max_trials: int = 100,
        pval_threshold: float = 0.1,
        id_class_dict_path: str | os.PathLike | None = None,
    ) -> dict[str, Path]:
        """Filter, label and split a tokenized dataset; write the datasets and ``{prefix}_id_class_dict.pkl``.

        Returns the written paths: ``id_class_dict`` and ``train``/``test`` or ``labeled``.
        """
        out_dir = Path(output_directory)
        out_dir.mkdir(parents=True, exist_ok=True)
        ds = self._load(input_data_file)
        forbidden = self.label_column
        if forbidden in ds.column_names:
            raise ValueError(
                f"The dataset already has a {forbidden!r} column, which the {self.classifier} classifier creates; "
                f"rename or remove it (e.g. dataset.rename_column('{forbidden}', 'orig_{forbidden}'))."
            )
        if self.classifier == "cell":
            cd.check_label_column(ds, self.state_key, what=f"dataset {input_data_file}")
        ds = filter_by_dict(ds, self.filter_data, nproc=None)
        paths: dict[str, Path] = {}
        if self.classifier == "cell":
            key = self.state_key
            cd.check_label_column(ds, key, what="filtered dataset")
            ds = cd.remove_rare(ds, key, self.rare_threshold)
            ds = cd.downsample(ds, key, self.max_ncells, self.max_ncells_per_class, seed=self.seed)
            cd.check_label_column(ds, key, what="filtered and downsampled dataset")
            given = cd.load_id_class_dict(id_class_dict_path) if id_class_dict_path else None
            ds, id_class_dict = cd.encode_labels(ds, key, given)
        else:
            given = cd.load_id_class_dict(id_class_dict_path) if id_class_dict_path else None
            token_class = self._token_class(given)
            keep = cd.cells_with_tokens(ds, token_class)
            if not keep.any():
                raise cd.ClassifierDataError("No cell contains any gene of gene_class_dict; check the gene IDs and "
                                             "the vocabulary version of the data.")
            ds = cd.select_rows(ds, np.flatnonzero(keep))
            ds = cd.downsample(ds, None, self.max_ncells, None, seed=self.seed)
            ds = cd.label_gene_tokens(ds, token_class, self.vocab_size)
            id_class_dict = given or {i: c for i, c in enumerate(self.gene_class_tokens)}
        self._id_class_dict = id_class_dict
        paths["id_class_dict"] = cd.save_pickle(id_class_dict, out_dir / f"{output_prefix}_id_class_dict.pkl")

        if test_size is None:
            test_size = self.split_sizes["test"]
        if split_id_dict is not None:
            tr, te = cd.ids_split(ds, split_id_dict, ("train", "test"))
        elif self.classifier == "cell" and 0 < test_size < 1:
            if attr_to_split is not None:
                table = self._split_table(ds, attr_to_split, attr_to_balance)
                train_ids, test_ids, bdf = cd.balance_attr_splits(
                    table, attr_to_split, attr_to_balance, test_size, max_trials, pval_threshold, "label")
                cd.write_csv(bdf, out_dir / f"{output_prefix}_train_test_balance_df.csv", index=False)
                tr = cd.rows_for_ids(ds, attr_to_split, train_ids)
                te = cd.rows_for_ids(ds, attr_to_split, test_ids)
            else:
                strat_col = self.stratify_splits_col or "label"
                strat = cd.column(ds, "label" if strat_col == self.state_key else strat_col)
                cd.check_split_counts(strat, test_size, "train/test split", id_class_dict if strat_col in
                                      ("label", self.state_key) else None)
                tr, te = cd.stratified_split(strat, test_size, seed=self.seed)
        else:
            paths["labeled"] = cd.save_dataset(ds, out_dir / f"{output_prefix}_labeled.dataset")
            return paths
        paths["train"] = cd.save_dataset(cd.select_rows(ds, tr), out_dir / f"{output_prefix}_labeled_train.dataset")
        paths["test"] = cd.save_dataset(cd.select_rows(ds, te), out_dir / f"{output_prefix}_labeled_test.dataset")
        return paths

    def _split_table(self, ds: Any, attr_to_split: str, attr_to_balance: Sequence[str] | None) -> pd.DataFrame:
        cols = [attr_to_split, *(attr_to_balance or [])]
        from ..data import check_columns

        check_columns(ds, cols, what="attr_to_split / attr_to_balance")
        table = pd.DataFrame({c: cd.column(ds, c) for c in cols})
        if "label" in ds.column_names:
            table["label"] = cd.column(ds, "label")
        return table

    # ---- training ------------------------------------------------------------------------------
    def _training_columns(self, ds: Any) -> Any:
        keep = [c for c in (self.label_column, "input_ids", "length") if c in ds.column_names]
        if self.label_column not in keep:
            raise KeyError(
                f"The dataset has no {self.label_column!r} column; run prepare_data first (columns: {ds.column_names})."
            )
        drop = [c for c in ds.column_names if c not in keep]
        return ds.remove_columns(drop) if drop else ds

    def default_training_args(self, model: Any, n_train: int) -> dict[str, Any]:
        """The reference's defaults (SPEC 5.4), before ``training_args`` overrides."""
        cell = self.classifier == "cell"
        args: dict[str, Any] = dict(
            per_device_train_batch_size=12,
            per_device_eval_batch_size=12,
            num_train_epochs=10 if cell else 1,
            eval_strategy="epoch" if cell else "no",
            load_best_model_at_end=cell,
            metric_for_best_model="macro_f1",
            greater_is_better=True,
            save_strategy="epoch",
            save_total_limit=1,
            weight_decay=0.001,
            length_column_name="length",
            learning_rate=5e-5,
            lr_scheduler_type="linear",
            warmup_steps=0,
        )
        if int(model.config.num_hidden_layers) == 6:  # the V1 6-layer model's published recipe
            args.update(learning_rate=5e-5, lr_scheduler_type="linear", warmup_steps=500)
        return args

    def _build_args(self, model: Any, n_train: int, output_directory: Path, has_eval: bool,
                    overrides: Mapping[str, Any] | None = None) -> "TrainingArguments":
        args = self.default_training_args(model, n_train)
        args.update(self.training_args)
        args.update(overrides or {})
        args.pop("freeze_layers", None)
        if "evaluation_strategy" in args:
            args["eval_strategy"] = args.pop("evaluation_strategy")
        bs = int(args.get("per_device_train_batch_size", 12))
        args["logging_steps"] = max(1, round(n_train / bs / 10))
        args["output_dir"] = str(output_directory)
        if not has_eval:
            args["eval_strategy"] = "no"
            args["load_best_model_at_end"] = False
        if args.get("load_best_model_at_end") and args.get("save_strategy") != args.get("eval_strategy"):
            args["save_strategy"] = args.get("eval_strategy")
        args.setdefault("seed", self.seed)
        args.setdefault("report_to", self.report_to)
        args.setdefault("disable_tqdm", not self.progress)
        args.setdefault("use_cpu", not torch.cuda.is_available())
        args.setdefault("dataloader_pin_memory", torch.cuda.is_available())
        from ..train._trainer import training_arguments

        return training_arguments(**args)

    def _load_training_model(self, model_directory: Any, num_classes: int) -> Any:
        from ..models import load_classifier

        return load_classifier(model_directory, self.model_type, num_classes, quantize=self.quantize,
                               lora=self.lora, id2label=self._id_class_dict)

    def _collator(self):
        cls = DataCollatorForCellClassification if self.classifier == "cell" else DataCollatorForGeneClassification
        return cls(token_dictionary=self.token_dictionary)

    def build_trainer(self, model_directory: Any, num_classes: int, train_data: Any, eval_data: Any,
                      output_directory: str | os.PathLike, *, overrides: Mapping[str, Any] | None = None,
                      callbacks: Sequence[Any] | None = None) -> "ClassifierTrainer":
        """A ready ``Trainer`` (model loaded, layers frozen, arguments resolved); nothing trained yet."""
        train_data = self._training_columns(self._load(train_data))
        eval_data = None if (self.no_eval or eval_data is None) else self._training_columns(self._load(eval_data))
        # the new head (and pooler) are initialised from the global RNG: seed it for reproducible runs
        from transformers import set_seed

        set_seed(int({**self.training_args, **(overrides or {})}.get("seed", self.seed)))
        model = self._load_training_model(model_directory, num_classes)
        validate_sequences(as_sequences(train_data), model, what="the training data")
        if eval_data is not None:
            validate_sequences(as_sequences(eval_data), model, what="the evaluation data")
        labels = np.asarray(cd.column(train_data, self.label_column), dtype=object)
        flat = np.concatenate([np.asarray(x, dtype=np.int64).ravel() for x in labels]) if self.classifier == "gene" \
            else labels.astype(np.int64)
        if flat.max(initial=-1) >= num_classes:
            raise cd.ClassifierDataError(
                f"The training labels go up to {int(flat.max())} but num_classes={num_classes}.")
        from ..models import freeze_encoder_layers
        from ..train import use_fused_attention_dropout
        from ..train._trainer import ClassifierTrainer, trainer_metrics

        n_freeze = (overrides or {}).get("freeze_layers", self.freeze_layers)
        freeze_encoder_layers(model, n_freeze)
        use_fused_attention_dropout(model)  # exact attention dropout at the fused kernel's speed on CPU
        args = self._build_args(model, len(train_data), Path(output_directory), eval_data is not None, overrides)
        weights = cd.class_weights_for(flat, num_classes, self.class_weights)
        return ClassifierTrainer(model=model, args=args, data_collator=self._collator(), train_dataset=train_data,
                                 eval_dataset=eval_data, compute_metrics=trainer_metrics, class_weights=weights,
                                 callbacks=list(callbacks or []))

    def train_classifier(
        self,
        model_directory: str | os.PathLike,
        num_classes: int,
        train_data: Any,
        eval_data: Any,
        output_directory: str | os.PathLike,
        predict: bool = False,
    ) -> "ClassifierTrainer":
        """Fine-tune on ``train_data`` (evaluating on ``eval_data`` each epoch for cell classifiers), save the
        final model (or LoRA adapter) in ``output_directory`` and return the trainer.

        Checkpoints go to ``output_directory/checkpoint-*``; with ``resume_from_checkpoint`` set on the
        Classifier the run continues from the last (or the given) checkpoint.
        """
        from transformers.trainer_utils import get_last_checkpoint

        out = Path(output_directory)
        resume = self.resume_from_checkpoint
        if resume is True:
            resume = get_last_checkpoint(str(out)) if out.is_dir() else None
            if resume is None:
                raise ValueError(f"No checkpoint-* folder in {out} to resume from.")
        if _has_final_model(out) and not resume:
            raise ValueError(
                f"{out} already holds a trained model; choose another output_directory, delete it, or set "
                "resume_from_checkpoint=True to continue from its checkpoints."
            )
        out.mkdir(parents=True, exist_ok=True)
        trainer = self.build_trainer(model_directory, num_classes, train_data, eval_data, out)
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        self.save_trained(trainer, out, model_directory, num_classes)
        if predict and trainer.eval_dataset is not None:
            preds = trainer.predict(trainer.eval_dataset)
            cd.save_pickle(preds, out / "predictions.pkl")
            trainer.save_metrics("eval", preds.metrics)
        return trainer

    def save_trained(self, trainer: "Trainer", out: Path, model_directory: Any, num_classes: int) -> None:
        """Write the final weights atomically into ``out`` plus ``geneformer_finetune.json`` and the state."""
        from ..models import write_finetune_meta

        tmp = out / ".final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        trainer.save_model(str(tmp))
        _move_contents(tmp, out)
        base = Path(str(model_directory))
        write_finetune_meta(
            out, kind=self.model_type, num_labels=int(num_classes),
            id2label={int(k): str(v) for k, v in (self._id_class_dict or {}).items()},
            base_model=str(base.resolve()) if base.exists() else str(model_directory),
            lora=bool(self.lora) or bool(self.quantize), model_version=self.model_version,
        )
        trainer.save_state()

    # ---- evaluation ----------------------------------------------------------------------------
    def evaluate_model(
        self,
        model: Any,
        num_classes: int,
        id_class_dict: Mapping[int, Any],
        eval_data: Any,
        predict: bool = False,
        output_directory: str | os.PathLike | None = None,
        output_prefix: str | None = None,
        predict_metadata: Sequence[str] | None = None,
    ) -> dict:
        """Score ``eval_data``: ``{"conf_mat", "macro_f1", "acc", "roc_metrics", "roc_auc", "class_report"}``.

        With ``predict``: writes ``{prefix}_pred_dict.pkl`` (pred_ids, label_ids, predictions, cell_ids,
        prediction_metadata) and ``{prefix}_predictions.csv`` in ``output_directory``.
        """
        eval_data = self._load(eval_data)
        if predict_metadata:
            from ..data import check_columns

            check_columns(eval_data, predict_metadata, what="predict_metadata")
        if len(id_class_dict) != num_classes:
            raise ValueError(f"id_class_dict has {len(id_class_dict)} classes but num_classes={num_classes}.")
        pred = ev.predict(model, eval_data, batch_size=self.forward_batch_size,
                          kind="cell" if self.classifier == "cell" else "gene", progress=self.progress)
        result = ev.compute_metrics(pred, id_class_dict)
        if predict:
            if output_directory is None or output_prefix is None:
                raise ValueError("predict=True needs output_directory and output_prefix.")
            token_names = None
            if self.classifier == "gene":
                token_names = {v: k for k, v in self.token_dictionary.items()}
            ev.save_predictions(pred, eval_data, id_class_dict, Path(output_directory), output_prefix,
                                predict_metadata, token_names)
        return result

    def evaluate_saved_model(
        self,
        model_directory: str | os.PathLike,
        id_class_dict_file: str | os.PathLike,
        test_data_file: str | os.PathLike | Any,
        output_directory: str | os.PathLike,
        output_prefix: str,
        predict: bool = True,
        predict_metadata: Sequence[str] | None = None,
    ) -> dict:
        """Evaluate a fine-tuned folder on held-out data; writes ``{prefix}_test_metrics_dict.pkl``."""
        from ..models import load_finetuned

        id_class_dict = cd.load_id_class_dict(id_class_dict_file)
        test_data = self._load(test_data_file)
        if predict_metadata:
            from ..data import check_columns

            check_columns(test_data, predict_metadata, what="predict_metadata")
        model = load_finetuned(model_directory, self.model_type, num_labels=len(id_class_dict))
        out = Path(output_directory)
        out.mkdir(parents=True, exist_ok=True)
        r = self.evaluate_model(model, len(id_class_dict), id_class_dict, test_data, predict, out, output_prefix,
                                predict_metadata)
        roc = r["roc_metrics"]
        all_roc = None
        if roc is not None:
            all_roc = {"mean_tpr": roc["interp_tpr"], "mean_fpr": np.linspace(0, 1, ev.N_ROC_POINTS),
                       "all_roc_auc": roc["auc"], "roc_auc": roc["auc"], "roc_auc_sd": 0.0}
        metrics = {"conf_matrix": r["conf_mat"], "macro_f1": r["macro_f1"], "acc": r["acc"],
                   "all_roc_metrics": all_roc, "roc_auc": r["roc_auc"], "class_report": r["class_report"]}
        cd.save_pickle(metrics, out / f"{output_prefix}_test_metrics_dict.pkl")
        return metrics

    # ---- validation / cross-validation ---------------------------------------------------------
    def _output_dir(self, output_directory: str | os.PathLike, output_prefix: str) -> Path:
        stamp = datetime.datetime.now().strftime("%y%m%d")
        out = Path(output_directory) / f"{stamp}_geneformer_{self.classifier}Classifier_{output_prefix}"
        out.mkdir(parents=True, exist_ok=True)
        return out

    def _train_or_search(self, model_directory, num_classes, train_ds, eval_ds, ksplit_dir: Path,
                         n_hyperopt_trials: int, predict_trainer: bool):
        """Train one split (or search hyperparameters); returns the trained model in eval mode."""
        if n_hyperopt_trials > 0:
            result = self.hyperopt_classifier(model_directory, num_classes, train_ds, eval_ds, ksplit_dir,
                                              n_trials=n_hyperopt_trials)
            from ..models import load_finetuned

            return load_finetuned(result.best_model_dir, self.model_type, num_labels=num_classes)
        trainer = self.train_classifier(model_directory, num_classes, train_ds, eval_ds, ksplit_dir,
                                        predict=predict_trainer and self.classifier == "cell")
        return trainer.model.eval()

    def validate(
        self,
        model_directory: str | os.PathLike,
        prepared_input_data_file: str | os.PathLike | Any,
        id_class_dict_file: str | os.PathLike,
        output_directory: str | os.PathLike,
        output_prefix: str,
        split_id_dict: Mapping | None = None,
        attr_to_split: str | None = None,
        attr_to_balance: Sequence[str] | None = None,
        gene_balance: bool = False,
        max_trials: int = 100,
        pval_threshold: float = 0.1,
        save_eval_output: bool = True,
        predict_eval: bool = True,
        predict_trainer: bool = False,
        n_hyperopt_trials: int = 0,
        save_gene_split_datasets: bool = True,
        debug_gene_split_datasets: bool = False,
    ) -> dict:
        """Train and evaluate on one split or k cross-validation folds; returns (and pickles as
        ``{prefix}_eval_metrics_dict.pkl``) the summed confusion matrix and per-fold macro-F1/accuracy.

        Output goes to ``{output_directory}/{YYMMDD}_geneformer_{cell|gene}Classifier_{prefix}/ksplit{i}/``.
        With ``n_hyperopt_trials > 0`` each split runs an Optuna search; the best trial's model is evaluated.
        """
        if self.num_crossval_splits == 0:
            raise ValueError("num_crossval_splits=0 means training on all data: use train_all_data().")
        if gene_balance and self.classifier == "gene" and len(self.gene_class_tokens or {}) != 2:
            raise ValueError("gene_balance is only for binary gene classifiers.")
        id_class_dict = cd.load_id_class_dict(id_class_dict_file)
        self._id_class_dict = id_class_dict
        num_classes = len(id_class_dict)
        ds = self._load(prepared_input_data_file)
        ds = cd.select_rows(ds, cd.shuffle_rows(len(ds), self.seed))
        out = self._output_dir(output_directory, output_prefix)
        if self.classifier == "cell":
            splits = self._cell_splits(ds, out, output_prefix, split_id_dict, attr_to_split, attr_to_balance,
                                       max_trials, pval_threshold)
            results = []
            for i, (tr, te) in enumerate(splits, start=1):
                ksplit = out / f"ksplit{i}"
                train_ds, eval_ds = cd.select_rows(ds, tr), cd.select_rows(ds, te)
                model = self._train_or_search(model_directory, num_classes, train_ds, eval_ds, ksplit,
                                              n_hyperopt_trials, predict_trainer)
                results.append(self.evaluate_model(model, num_classes, id_class_dict, eval_ds, predict_eval,
                                                   ksplit, output_prefix))
        else:
            results, test_results = self._validate_gene(ds, model_directory, id_class_dict, out, output_prefix,
                                                        gene_balance, predict_eval, n_hyperopt_trials,
                                                        save_gene_split_datasets, debug_gene_split_datasets)
            if test_results:
                test_metrics = ev.aggregate_folds(test_results)
                if save_eval_output:
                    cd.save_pickle(test_metrics, out / f"{output_prefix}_test_metrics_dict.pkl")
        metrics = ev.aggregate_folds(results)
        if save_eval_output:
            cd.save_pickle(metrics, out / f"{output_prefix}_eval_metrics_dict.pkl")
        logger.info("validation macro-F1 per split: %s", [round(x, 4) for x in metrics["macro_f1"]])
        return metrics

    def _cell_splits(self, ds, out: Path, prefix: str, split_id_dict, attr_to_split, attr_to_balance,
                     max_trials, pval_threshold) -> list[tuple[np.ndarray, np.ndarray]]:
        labels = cd.column(ds, "label")
        k = int(self.num_crossval_splits)
        if k == 1:
            if split_id_dict is not None:
                return [cd.ids_split(ds, split_id_dict, ("train", "eval"))]
            if attr_to_split is not None:
                table = self._split_table(ds, attr_to_split, attr_to_balance)
                train_ids, eval_ids, bdf = cd.balance_attr_splits(table, attr_to_split, attr_to_balance,
                                                                  self.eval_size, max_trials, pval_threshold, "label")
                cd.write_csv(bdf, out / f"{prefix}_train_valid_balance_df.csv", index=False)
                return [(cd.rows_for_ids(ds, attr_to_split, train_ids), cd.rows_for_ids(ds, attr_to_split, eval_ids))]
            cd.check_split_counts(labels, self.eval_size, "train/validation split", self._id_class_dict)
            return [cd.stratified_split(labels, self.eval_size, seed=self.seed)]
        from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

        y = np.asarray(labels)
        if attr_to_split is not None:
            groups = np.asarray(cd.column(ds, attr_to_split), dtype=object).astype(str)
            if len(set(groups)) < k:
                raise cd.ClassifierDataError(
                    f"{k}-fold cross-validation by {attr_to_split!r} needs at least {k} distinct values; "
                    f"found {len(set(groups))}."
                )
            splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=self.seed)
            folds = list(splitter.split(np.zeros(len(y)), y, groups))
        else:
            counts = pd.Series(y).value_counts()
            small = {self._id_class_dict.get(c, c) if self._id_class_dict else c: int(n)
                     for c, n in counts.items() if n < k}
            if small:
                raise cd.ClassifierDataError(
                    f"Too few cells per class for {k}-fold cross-validation: {small} (each class needs >= {k}). "
                    "Use fewer folds, or drop rare classes (rare_threshold / filter_data)."
                )
            folds = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=self.seed).split(np.zeros(len(y)), y))
        return [(np.sort(tr), np.sort(te)) for tr, te in folds]

    def _prep_gene_split(self, ds: Any, token_class: Mapping[int, int], balance: bool) -> Any:
        keep = cd.cells_with_tokens(ds, token_class)
        if not keep.any():
            raise cd.ClassifierDataError("No cell contains a gene of this split; add cells or genes.")
        sub = cd.select_rows(ds, np.flatnonzero(keep))
        if balance:
            token_class = cd.balance_gene_classes(sub, dict(token_class))
            keep = cd.cells_with_tokens(sub, token_class)
            sub = cd.select_rows(sub, np.flatnonzero(keep))
        sub = cd.downsample(sub, None, self.max_ncells, None, seed=self.seed)
        return cd.label_gene_tokens(sub, token_class, self.vocab_size)

    def _validate_gene(self, ds, model_directory, id_class_dict, out: Path, prefix: str, gene_balance: bool,
                       predict_eval: bool, n_hyperopt_trials: int, save_splits: bool, debug: bool):
        token_class = self._token_class(id_class_dict)
        counts = pd.Series(list(token_class.values())).value_counts()
        s = self.split_sizes
        k = int(self.num_crossval_splits)
        n_splits = k if k > 1 else max(2, int(round(1 / max(1 - s["train"], 1e-9))))
        if (counts < n_splits).any():
            names = {id_class_dict[int(c)]: int(n) for c, n in counts.items()}
            raise cd.ClassifierDataError(
                f"Gene classes need at least {n_splits} genes in the vocabulary for {n_splits}-fold splitting of "
                f"genes; got {names}."
            )
        folds = cd.gene_folds(token_class, n_splits, s["valid"], s["test"], seed=0)
        results, test_results = [], []
        num_classes = len(id_class_dict)
        for i, (tr, va, te) in enumerate(folds[: max(k, 1)], start=1):
            ksplit = out / f"ksplit{i}"
            train_ds = self._prep_gene_split(ds, {t: token_class[t] for t in tr}, gene_balance)
            eval_ds = self._prep_gene_split(ds, {t: token_class[t] for t in va}, False)
            test_ds = self._prep_gene_split(ds, {t: token_class[t] for t in te}, False) if te else None
            if save_splits:
                for name, d in (("train", train_ds), ("valid", eval_ds), ("test", test_ds)):
                    if d is not None:
                        cd.save_dataset(d, ksplit / f"{prefix}_{name}_gene_labeled_ksplit{i}.dataset")
            if debug:
                logger.info("ksplit%d: %d train, %d valid, %d test cells", i, len(train_ds), len(eval_ds),
                            len(test_ds) if test_ds is not None else 0)
            model = self._train_or_search(model_directory, num_classes, train_ds, eval_ds, ksplit,
                                          n_hyperopt_trials, False)
            results.append(self.evaluate_model(model, num_classes, id_class_dict, eval_ds, predict_eval, ksplit,
                                               prefix))
            if test_ds is not None:
                test_results.append(self.evaluate_model(model, num_classes, id_class_dict, test_ds, predict_eval,
                                                        ksplit, f"{prefix}_test"))
        return results, test_results

    def train_all_data(
        self,
        model_directory: str | os.PathLike,
        prepared_input_data_file: str | os.PathLike | Any,
        id_class_dict_file: str | os.PathLike,
        output_directory: str | os.PathLike,
        output_prefix: str,
        save_eval_output: bool = True,
        gene_balance: bool = False,
    ) -> "ClassifierTrainer":
        """Train on every prepared cell (no evaluation split); returns the trainer."""
        id_class_dict = cd.load_id_class_dict(id_class_dict_file)
        self._id_class_dict = id_class_dict
        ds = self._load(prepared_input_data_file)
        ds = cd.select_rows(ds, cd.shuffle_rows(len(ds), self.seed))
        if self.classifier == "gene":
            ds = self._prep_gene_split(ds, self._token_class(id_class_dict), gene_balance)
        out = self._output_dir(output_directory, output_prefix)
        no_eval, self.no_eval = self.no_eval, True
        try:
            return self.train_classifier(model_directory, len(id_class_dict), ds, None, out)
        finally:
            self.no_eval = no_eval

    # ---- hyperparameter search -----------------------------------------------------------------
    def hyperopt_classifier(
        self,
        model_directory: str | os.PathLike,
        num_classes: int,
        train_data: Any,
        eval_data: Any,
        output_directory: str | os.PathLike,
        n_trials: int = 100,
        *,
        direction: str = "maximize",
        metric: str = "eval_macro_f1",
        pruner: Any = "median",
    ):
        """Optuna search maximising eval macro-F1 (Median pruning at each epoch's evaluation).

        The best trial's model is saved in ``output_directory/best_trial`` (reload it with
        :func:`geneformer.train.lora.load_finetuned`) and described in ``best_trial.json``; all
        trials are in ``trials.csv`` and the study in ``optuna.db``. Returns a HyperoptResult.
        """
        import optuna

        from ..train import _hyperopt as ho

        if eval_data is None or self.no_eval:
            raise ValueError("Hyperparameter search needs evaluation data (no_eval must be False).")
        out = Path(output_directory)
        out.mkdir(parents=True, exist_ok=True)
        train_data, eval_data = self._load(train_data), self._load(eval_data)
        probe = self._load_training_model(model_directory, num_classes)
        n_layers = int(probe.config.num_hidden_layers)
        del probe
        epochs = int(self.training_args.get("num_train_epochs", 1))
        bs = int(self.training_args.get("per_device_train_batch_size", 12))
        space = ho.normalise_space(self.hyperopt_space or ho.default_space(n_layers, epochs, bs))
        best_dir = out / "best_trial"
        state = {"best": None}
        if (out / "best_trial.json").is_file() and best_dir.is_dir():  # a resumed study keeps its best model
            state["best"] = float(ho.read_best(out)["value"])

        def objective(trial):
            params = ho.trainer_params(ho.suggest(trial, space))
            trial_dir = out / f"trial_{trial.number}"
            overrides = {**params, "eval_strategy": "epoch", "save_strategy": "no", "load_best_model_at_end": False}
            trainer = self.build_trainer(model_directory, num_classes, train_data, eval_data, trial_dir,
                                         overrides=overrides, callbacks=[ho.OptunaPruningCallback(trial, metric)])
            try:
                trainer.train()
                value = float(trainer.evaluate()[metric])
                better = state["best"] is None or (value > state["best"] if direction == "maximize"
                                                   else value < state["best"])
                if better:
                    state["best"] = value
                    self.save_trained(trainer, trial_dir, model_directory, num_classes)
                    shutil.rmtree(best_dir, ignore_errors=True)
                    os.replace(trial_dir, best_dir)
                    ho.write_best(out, {"trial": trial.number, "value": value, "params": params,
                                        "metric": metric, "model_dir": str(best_dir)})
                return value
            finally:
                shutil.rmtree(trial_dir, ignore_errors=True)
                del trainer

        study = ho.run_search(objective, n_trials, out, direction=direction, seed=self.seed, pruner=pruner,
                              study_name=f"geneformer_{self.classifier}_classifier")
        best = ho.read_best(out)
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        return ho.HyperoptResult(best_params=best["params"], best_value=best["value"], best_trial=best["trial"],
                                 best_model_dir=Path(best["model_dir"]), study=study,
                                 trials=study.trials_dataframe() if done else None)

    # ---- plots ---------------------------------------------------------------------------------
    def plot_conf_mat(self, conf_mat_dict: Mapping[str, pd.DataFrame] | pd.DataFrame, output_directory,
                      output_prefix: str, custom_class_order: Sequence[Any] | None = None,
                      fmt: str = "pdf") -> list[Path]:
        """Row-normalised confusion matrices: ``{prefix}_conf_mat.{fmt}`` (``{prefix}_{name}_conf_mat`` when
        several models are given)."""
        fmt = plotting.check_plot_format(fmt)
        if isinstance(conf_mat_dict, pd.DataFrame):
            conf_mat_dict = {"Geneformer": conf_mat_dict}
        paths = []
        for name, cm in conf_mat_dict.items():
            if isinstance(cm, Mapping):  # an eval/test metrics dict
                cm = cm.get("conf_matrix", cm.get("conf_mat"))
            stem = f"{output_prefix}_conf_mat" if len(conf_mat_dict) == 1 else f"{output_prefix}_{name}_conf_mat"
            paths.append(plotting.plot_confusion_matrix(cm, name, Path(output_directory) / f"{stem}.{fmt}",
                                                  custom_class_order))
        return paths

    def plot_roc(self, roc_metric_dict: Mapping[str, dict], model_style_dict: Mapping[str, dict] | None,
                 title: str, output_directory, output_prefix: str, fmt: str = "pdf") -> Path:
        """Mean ROC curves of binary classifiers: ``{prefix}_roc.{fmt}``."""
        fmt = plotting.check_plot_format(fmt)
        usable = {k: v for k, v in roc_metric_dict.items() if v is not None}
        if not usable:
            raise ValueError("No ROC metrics to plot (ROC curves exist for binary classifiers only).")
        return plotting.plot_roc(usable, model_style_dict, title, Path(output_directory) / f"{output_prefix}_roc.{fmt}")

    def plot_predictions(self, predictions_file, id_class_dict_file, title: str, output_directory,
                         output_prefix: str, custom_class_order: Sequence[Any] | None = None,
                         kwargs_dict: Mapping[str, Any] | None = None, fmt: str = "pdf") -> Path:
        """Heat map of the predicted logits per item, grouped by true class: ``{prefix}_pred.{fmt}``."""
        fmt = plotting.check_plot_format(fmt)
        return plotting.plot_predictions(predictions_file, id_class_dict_file, title,
                                   Path(output_directory) / f"{output_prefix}_pred.{fmt}", custom_class_order,
                                   kwargs_dict)


__all__ = ["Classifier"]
