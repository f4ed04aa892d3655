"""Masked-gene pretraining and continual learning with the Hugging Face ``Trainer``.

:func:`pretrain` is the one-call entry point; :class:`MaskedGeneTrainer` is the ``Trainer``
subclass it runs (the reference's ``GeneformerPretrainer`` is a thin translator onto it).

Multi-GPU / multi-node: run the same script or ``geneformer pretrain`` under ``torchrun`` or
``accelerate launch``; the shipped configurations are found with :func:`config_file`:

- ``config_file("deepspeed_zero2.json")``: DeepSpeed ZeRO stage 2 (pass to ``deepspeed=``);
  every batch/optimizer field is ``"auto"`` and filled from the training arguments;
- ``config_file("accelerate_multi_gpu.yaml")``: one node, all GPUs, bf16
  (``accelerate launch --config_file ... -m geneformer.cli.pretrain DATASET --output DIR``);
- ``config_file("accelerate_deepspeed_zero2.yaml")``: the same through DeepSpeed ZeRO-2.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from transformers import BertConfig, Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from .._constants import IGNORE_INDEX
from .._utils import CorpusError
from ..data import load_dataset_folder
from ..models import GeneformerForMaskedLM, load_model
from ..vocab import GeneVocab, as_vocab
from ._architectures import load_config, preset_vocab_version
from ._collators import DataCollatorForMaskedGenes
from ._dropout_attention import use_fused_attention_dropout
from ._sampler import LengthGroupedSampler
from ._trainer import training_arguments

logger = logging.getLogger(__name__)

#: Vocabulary sizes of the published vocabularies, to recognise the vocabulary of a checkpoint.
_PUBLISHED_SIZES = {25426: "V1", 20275: "V2"}
#: Default architecture per vocabulary version.
_DEFAULT_ARCH = {"V1": "gf-6L-30M-i2048", "V2": "gf-12L-95M-i4096"}
FINAL_MODEL_DIR = "model"


def config_file(name: str) -> Path:
    """Path of a shipped DeepSpeed / accelerate configuration (see the module docstring)."""
    path = Path(str(resources.files("geneformer.train") / "configs" / name))
    if not path.is_file():
        available = sorted(p.name for p in path.parent.iterdir()) if path.parent.is_dir() else []
        raise FileNotFoundError(f"No shipped config {name!r}; available: {', '.join(available)}.")
    return path


# ------------------------------------------------------------------------------------------------
# Dataset helpers
# ------------------------------------------------------------------------------------------------
def column_array(dataset, column: str) -> np.ndarray:
    """One scalar column as a numpy array, read through Arrow without loading other columns."""
    return np.asarray(dataset.with_format("numpy", columns=[column])[:][column])


def add_length_column(dataset, num_proc: int | None = None):
    """Return ``dataset`` with a ``length`` column (number of tokens of each cell)."""
    kwargs: dict[str, Any] = {"batched": True, "num_proc": num_proc}
    if not _cache_writable(dataset):
        kwargs["keep_in_memory"] = True
    return dataset.map(lambda b: {"length": [len(x) for x in b["input_ids"]]}, **kwargs)


def _cache_writable(dataset) -> bool:
    files = getattr(dataset, "cache_files", None) or []
    return all(os.access(Path(f["filename"]).parent, os.W_OK) for f in files)


def load_corpus(data, *, compute_length: bool = False):
    """Open a tokenized corpus: a path (``load_from_disk``, memory-mapped), a ``Dataset`` or a
    ``DatasetDict``. Returns ``(train, eval_or_None)``."""
    import datasets

    if isinstance(data, (str, os.PathLike)):
        data = load_dataset_folder(data)
    eval_ds = None
    if isinstance(data, datasets.DatasetDict):
        if "train" not in data:
            raise ValueError(f"The DatasetDict has splits {list(data)}; it needs a 'train' split.")
        eval_ds = next((data[k] for k in ("validation", "test", "eval") if k in data), None)
        data = data["train"]
    if not isinstance(data, datasets.Dataset):
        raise TypeError(f"Expected a dataset path, Dataset or DatasetDict, got {type(data).__name__}.")
    out = []
    for ds in (data, eval_ds):
        if ds is None:
            out.append(None)
            continue
        if "input_ids" not in ds.column_names:
            raise ValueError(f"The dataset has no 'input_ids' column (columns: {ds.column_names}).")
        if "length" not in ds.column_names:
            if not compute_length:
                raise ValueError(
                    "The dataset has no 'length' column, which length-grouped batching needs. Add it with "
                    "geneformer.train.add_length_column(dataset) (or pass compute_length=True / --compute-length)."
                )
            ds = add_length_column(ds)
        out.append(ds)
    if len(out[0]) == 0:
        raise ValueError("The training dataset is empty.")
    return out[0], out[1]


def check_corpus(dataset, *, vocab_size: int, has_cls_eos: bool, cls_id: int | None, eos_id: int | None,
                 max_positions: int, n_check: int = 2000, seed: int = 0, what: str = "corpus") -> None:
    """Fail early and clearly when a corpus cannot feed the model.

    Checks every cell's ``length`` against ``max_positions``, and on up to ``n_check`` random
    cells: token ids below ``vocab_size``, ``length`` equal to the number of tokens, and the
    presence of ``<cls>``/``<eos>`` matching the vocabulary (V2 corpora start with ``<cls>`` and
    end with ``<eos>``; V1 corpora have neither).
    """
    lengths = column_array(dataset, "length")
    if lengths.size and int(lengths.max()) > max_positions:
        n_long = int((lengths > max_positions).sum())
        raise CorpusError(
            f"{n_long} cells of the {what} are longer than the model's max_position_embeddings "
            f"({int(lengths.max())} > {max_positions} tokens). Tokenize with model_input_size={max_positions} "
            "or choose an architecture with more positions."
        )
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(dataset), size=min(n_check, len(dataset)), replace=False))
    sample = dataset.select(idx, keep_in_memory=True)["input_ids"]
    max_id, starts_cls, ends_eos = -1, 0, 0
    for i, ids in zip(idx, sample):
        ids = np.asarray(ids)
        if len(ids) != lengths[i]:
            raise CorpusError(
                f"Cell {int(i)} of the {what} has {len(ids)} tokens but its 'length' says {int(lengths[i])}; "
                "recompute the column with geneformer.train.add_length_column."
            )
        if len(ids):
            max_id = max(max_id, int(ids.max()))
            starts_cls += int(ids[0] == (cls_id if cls_id is not None else 2))
            ends_eos += int(ids[-1] == (eos_id if eos_id is not None else 3))
    if max_id >= vocab_size:
        raise CorpusError(
            f"The {what} holds token id {max_id} but the model's vocabulary has {vocab_size} tokens: it was "
            "tokenized with another gene vocabulary. Use the matching vocabulary/model (V1 vs V2) or re-tokenize."
        )
    n = len(sample)
    with_specials = starts_cls == n and ends_eos == n
    if has_cls_eos and not with_specials:
        raise CorpusError(
            f"The model's vocabulary uses <cls>/<eos> (V2) but {n - min(starts_cls, ends_eos)} of {n} sampled cells "
            f"of the {what} do not start with <cls> and end with <eos>: the corpus was tokenized for V1 or "
            "without special tokens. Re-tokenize with the V2 vocabulary (special_token=True) or use a V1 model."
        )
    if not has_cls_eos and n and starts_cls >= 0.9 * n and ends_eos >= 0.9 * n:
        raise CorpusError(
            f"The model's vocabulary has no <cls>/<eos> (V1) but the {what} cells start with token 2 and end with "
            "token 3, as V2 corpora tokenized with <cls>/<eos> do. Use a V2 model/vocabulary or re-tokenize for V1."
        )


# ------------------------------------------------------------------------------------------------
# Trainer
# ------------------------------------------------------------------------------------------------
class _CollatorEpochCallback(TrainerCallback):
    """Tells the masking collator which epoch starts, so cells get new masks every epoch."""

    def __init__(self, collator: DataCollatorForMaskedGenes) -> None:
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.set_epoch(int(math.floor(state.epoch or 0.0)))


def masked_gene_metrics(eval_pred) -> dict[str, float]:
    """``compute_metrics`` for :class:`MaskedGeneTrainer`: accuracy over masked genes."""
    stats = np.asarray(eval_pred.predictions, dtype=np.float64).reshape(-1, 3)
    total = stats[:, 1].sum()
    return {
        "masked_accuracy": float(stats[:, 0].sum() / total) if total else float("nan"),
        "masked_gene_loss": float(stats[:, 2].sum() / total) if total else float("nan"),
        "masked_genes": float(total),
    }


class MaskedGeneTrainer(Trainer):
    """``Trainer`` for masked-gene modelling.

    ``lengths``: the training cells' lengths for length grouping (default: the dataset's ``length``
    column, else the cells are measured). With length grouping on (``group_by_length=True`` on
    transformers 4, ``train_sampling_strategy="group_by_length"`` on 5) the sampler is a seeded
    :class:`LengthGroupedSampler`. Evaluation reports ``eval_masked_accuracy`` and
    ``eval_masked_gene_loss`` on fixed masks.

    ``fused_attention_dropout`` (default True): a model on ``sdpa`` attention trains with
    :mod:`._dropout_attention`, exact attention dropout at the speed of PyTorch's fused CPU kernel
    (plain ``sdpa`` falls back to a ~3x slower path on CPU when attention dropout is on; GPUs
    and evaluation are unaffected). Saved checkpoints stay plain BERT.
    """

    def __init__(self, model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None,
                 *rest, lengths: Sequence[int] | np.ndarray | None = None, fused_attention_dropout: bool = True,
                 **kwargs: Any) -> None:
        if kwargs.get("compute_metrics") is None and isinstance(data_collator, DataCollatorForMaskedGenes):
            kwargs["compute_metrics"] = masked_gene_metrics
        if model is not None:
            use_fused_attention_dropout(model, fused_attention_dropout)
        super().__init__(model, args, data_collator, train_dataset, eval_dataset, *rest, **kwargs)
        self._example_lengths = None
        if lengths is not None:
            self._example_lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
            if train_dataset is not None and len(self._example_lengths) != len(train_dataset):
                raise ValueError(
                    f"{len(self._example_lengths)} cell lengths were given but the training dataset has "
                    f"{len(train_dataset)} cells."
                )
        if isinstance(self.data_collator, DataCollatorForMaskedGenes):
            self.add_callback(_CollatorEpochCallback(self.data_collator))

    # ---- sampling ----------------------------------------------------------------------------
    def _group_by_length(self) -> bool:
        return bool(getattr(self.args, "group_by_length", False)) or (
            getattr(self.args, "train_sampling_strategy", None) == "group_by_length"
        )

    def _lengths(self, dataset) -> np.ndarray:
        col = getattr(self.args, "length_column_name", "length")
        if col in getattr(dataset, "column_names", ()):
            return column_array(dataset, col)
        logger.warning("No %r column: measuring every cell for length grouping (slow on large corpora).", col)
        return np.asarray([len(x["input_ids"]) for x in dataset], dtype=np.int64)

    def _get_train_sampler(self, *args: Any, **kwargs: Any):
        ds = self.train_dataset
        if not self._group_by_length() or ds is None or not hasattr(ds, "__len__"):
            return super()._get_train_sampler(*args, **kwargs)
        # self.train_dataset still has the length column the Trainer strips before sampling
        lengths = self._example_lengths if self._example_lengths is not None else self._lengths(ds)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return LengthGroupedSampler(lengths, self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                    seed=seed)

    def _get_eval_sampler(self, eval_dataset):
        source = self.eval_dataset if self.eval_dataset is not None and len(self.eval_dataset) == len(eval_dataset) \
            else eval_dataset
        if not hasattr(source, "column_names") or "length" not in source.column_names:
            return super()._get_eval_sampler(eval_dataset)
        # longest first: little padding, deterministic order
        return np.argsort(-column_array(source, "length"), kind="stable").tolist()

    # ---- evaluation ----------------------------------------------------------------------------
    def get_eval_dataloader(self, eval_dataset=None):
        collator = self.data_collator
        if isinstance(collator, DataCollatorForMaskedGenes):
            self.data_collator = collator.for_evaluation()  # the same masks at every evaluation
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = collator

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        labels = inputs.get("labels")
        if labels is None or not isinstance(self.data_collator, DataCollatorForMaskedGenes):
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        labels = inputs["labels"]
        with torch.no_grad():
            with self.compute_loss_context_manager():
                loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[1]
        selected = labels != IGNORE_INDEX
        if logits.dim() == 3:
            logits = logits[selected]
        total = selected.sum()
        correct = (logits.argmax(-1) == labels[selected]).sum()
        loss = loss.detach().float()
        stats = torch.stack([correct.float(), total.float(), loss * total.float()]).reshape(1, 3)
        # the per-batch statistics travel as "predictions"; labels as their counts (tiny)
        return loss, stats, total.reshape(1, 1)


# ------------------------------------------------------------------------------------------------
# One-call pretraining
# ------------------------------------------------------------------------------------------------
@dataclass
class PretrainResult:
    """What :func:`pretrain` produced."""

    output_dir: Path
    model_dir: Path
    global_step: int
    train_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    log_history: list[dict] = field(default_factory=list)


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"Output folder {folder} is not writable: {exc}. Choose another --output.") from exc


def _checkpoint_vocab(folder: Path, cfg: BertConfig, vocab) -> GeneVocab:
    """The vocabulary a checkpoint was trained with (explicit ``vocab`` must agree with it)."""
    if vocab is not None:
        v = as_vocab(vocab)
        if v.size != cfg.vocab_size:
            raise ValueError(
                f"The checkpoint {folder} has a {cfg.vocab_size}-token vocabulary but the given vocabulary has "
                f"{v.size} tokens; continual learning keeps the checkpoint's vocabulary (omit --vocab)."
            )
        return v
    if (folder / "vocab").is_dir():
        return GeneVocab.from_dir(folder / "vocab")
    version = getattr(cfg, "geneformer_vocab", None) or _PUBLISHED_SIZES.get(cfg.vocab_size)
    if version not in ("V1", "V2"):
        raise ValueError(
            f"Cannot tell which gene vocabulary the checkpoint {folder} uses (vocab_size {cfg.vocab_size}); "
            "pass it with vocab= (a GeneVocab or a folder saved with GeneVocab.save)."
        )
    return GeneVocab.load(version)


def _report_to(report_to: str | Sequence[str]) -> list[str] | str:
    if report_to != "auto":
        return report_to
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        warnings.warn("tensorboard is not installed: no TensorBoard logs (pip install tensorboard).", stacklevel=3)
        return "none"
    return ["tensorboard"]


def pretrain(
    dataset,
    output_dir: str | os.PathLike,
    *,
    config: str | os.PathLike | BertConfig | dict | None = None,
    vocab: GeneVocab | str | os.PathLike | None = None,
    from_checkpoint: str | os.PathLike | None = None,
    max_steps: int | None = None,
    epochs: float = 1.0,
    batch_size: int = 12,
    learning_rate: float = 1e-3,
    warmup: int | float = 0.01,
    weight_decay: float = 0.001,
    lr_scheduler: str = "linear",
    gradient_accumulation_steps: int = 1,
    mlm_probability: float = 0.15,
    seed: int = 42,
    eval_fraction: float = 0.0,
    eval_steps: int | None = None,
    save_steps: int = 1000,
    save_total_limit: int | None = 3,
    logging_steps: int = 50,
    bf16: bool | None = None,
    deepspeed: str | os.PathLike | None = None,
    resume_from_checkpoint: bool | str | os.PathLike | None = None,
    dataloader_num_workers: int = 0,
    compute_length: bool = False,
    report_to: str | Sequence[str] = "auto",
    callbacks: Sequence[TrainerCallback] | None = None,
    disable_tqdm: bool | None = None,
    training_args: Mapping[str, Any] | None = None,
    fused_attention_dropout: bool = True,
) -> PretrainResult:
    """Pretrain a Geneformer from scratch or continue training a checkpoint (continual learning).

    ``dataset``: a tokenized corpus (folder saved with ``save_to_disk``, read memory-mapped, or a
    ``Dataset``/``DatasetDict``) with ``input_ids`` and ``length`` columns.
    ``config``: preset name (see ``ARCHITECTURES``), JSON file, dict or ``BertConfig``; defaults to
    the smallest published architecture of the vocabulary. ``vocab``: "V1", "V2", a folder or a
    ``GeneVocab`` (default: the preset's, else V1). ``from_checkpoint``: a local model folder whose
    weights and vocabulary are kept; the corpus must be tokenized with that vocabulary.
    ``warmup``: steps (int) or a fraction of the steps (float < 1). ``bf16``: default on where the
    GPU supports it. ``deepspeed``: a DeepSpeed JSON config, or "zero2" for the shipped one.
    ``resume_from_checkpoint``: True for the last ``checkpoint-*`` in ``output_dir``, or a path.
    ``training_args``: extra ``TrainingArguments`` fields (override the ones set here).
    ``fused_attention_dropout``: train with the exact fused-speed attention dropout of
    :mod:`.dropout_attention` (CPU; False for PyTorch's own ``sdpa`` dropout path).

    The final model is written to ``output_dir/model`` (safetensors, plain ``BertForMaskedLM``).
    """
    from transformers import set_seed

    output_dir = Path(output_dir).expanduser()
    _check_writable(output_dir)
    train_ds, eval_ds = load_corpus(dataset, compute_length=compute_length)

    # ---- model and vocabulary --------------------------------------------------------------
    set_seed(seed)
    if from_checkpoint is not None:
        ckpt = Path(from_checkpoint).expanduser()
        if not (ckpt / "config.json").is_file():
            raise ValueError(f"{ckpt} is not a model folder (no config.json); pass a local checkpoint folder.")
        if config is not None:
            raise ValueError("config cannot be changed when continuing from a checkpoint; drop config=.")
        ckpt_cfg = BertConfig.from_pretrained(str(ckpt))
        gene_vocab = _checkpoint_vocab(ckpt, ckpt_cfg, vocab)
        model = load_model(ckpt, model_class=GeneformerForMaskedLM, eval_mode=False, device="cpu")
    else:
        version = None
        if isinstance(config, str) and not Path(config).exists():
            try:
                version = preset_vocab_version(config)
            except ValueError:
                version = None
        gene_vocab = as_vocab(vocab if vocab is not None else (version or "V1"))
        default_arch = _DEFAULT_ARCH["V2" if gene_vocab.has_cls_eos else "V1"]
        cfg = load_config(config, gene_vocab.size, pad_token_id=gene_vocab.pad_id, default=default_arch)
        if gene_vocab.version in ("V1", "V2"):
            cfg.geneformer_vocab = gene_vocab.version
        model = GeneformerForMaskedLM(cfg)
    cfg = model.config
    if cfg.vocab_size != gene_vocab.size:
        raise ValueError(f"Model vocab_size {cfg.vocab_size} differs from the vocabulary's {gene_vocab.size} tokens.")

    what = "corpus" if from_checkpoint is None else f"corpus (continuing {from_checkpoint})"
    for ds, name in ((train_ds, what), (eval_ds, "evaluation corpus")):
        if ds is not None:
            check_corpus(ds, vocab_size=cfg.vocab_size, has_cls_eos=gene_vocab.has_cls_eos,
                         cls_id=gene_vocab.cls_id, eos_id=gene_vocab.eos_id,
                         max_positions=cfg.max_position_embeddings, seed=seed, what=name)

    # ---- held-out split ----------------------------------------------------------------------
    if eval_ds is None and eval_fraction:
        if not 0 < eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}.")
        n_eval = max(1, int(round(len(train_ds) * eval_fraction)))
        if n_eval >= len(train_ds):
            raise ValueError(f"eval_fraction {eval_fraction} leaves no training cells out of {len(train_ds)}.")
        perm = np.random.default_rng(seed).permutation(len(train_ds))
        eval_ds = train_ds.select(np.sort(perm[:n_eval]), keep_in_memory=True)
        train_ds = train_ds.select(np.sort(perm[n_eval:]), keep_in_memory=True)

    # ---- training arguments --------------------------------------------------------------------
    if deepspeed is not None:
        try:
            import deepspeed as _ds  # noqa: F401
        except ImportError as exc:
            raise ValueError("deepspeed= needs the deepspeed package (pip install deepspeed).") from exc
        deepspeed = str(config_file("deepspeed_zero2.json")) if str(deepspeed) == "zero2" else str(deepspeed)
    if bf16 is None:
        bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    resume = resume_from_checkpoint
    if resume is True:
        resume = get_last_checkpoint(str(output_dir))
        if resume is None:
            raise ValueError(f"No checkpoint-* folder in {output_dir} to resume from; run without --resume.")
    elif resume:
        resume = str(Path(resume).expanduser())
        if not Path(resume).is_dir():
            raise ValueError(f"Checkpoint folder {resume} does not exist.")
    else:
        resume = None
        if get_last_checkpoint(str(output_dir)) is not None:
            logger.warning("%s already holds checkpoints; they may be overwritten (pass --resume to continue).",
                           output_dir)
    distributed_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    args_kw: dict[str, Any] = dict(
        output_dir=str(output_dir),
        max_steps=max_steps if max_steps else -1,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        learning_rate=learning_rate,
        warmup=warmup,
        weight_decay=weight_decay,
        lr_scheduler_type=lr_scheduler,
        seed=seed,
        data_seed=seed,
        bf16=bf16,
        deepspeed=deepspeed,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=save_total_limit,
        logging_steps=logging_steps,
        eval_strategy="steps" if eval_ds is not None else "no",
        eval_steps=eval_steps or save_steps,
        length_column_name="length",
        dataloader_num_workers=dataloader_num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        report_to=_report_to(report_to),
        disable_tqdm=disable_tqdm,
        ddp_backend="gloo" if distributed_cpu else None,
        use_cpu=distributed_cpu or not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,
    )
    warmup_value = args_kw.pop("warmup")
    args_kw["warmup_ratio" if isinstance(warmup_value, float) and 0 < warmup_value < 1 else "warmup_steps"] = warmup_value
    args_kw.update(group_by_length=True, save_safetensors=True)
    args_kw.update(training_args or {})
    args = training_arguments(**args_kw)

    collator = DataCollatorForMaskedGenes(gene_vocab, mlm_probability, seed=seed)
    trainer = MaskedGeneTrainer(
        model=model, args=args, data_collator=collator, train_dataset=train_ds, eval_dataset=eval_ds,
        callbacks=list(callbacks or []), fused_attention_dropout=fused_attention_dropout,
    )
    train_out = trainer.train(resume_from_checkpoint=resume)
    eval_metrics = trainer.evaluate() if eval_ds is not None else {}

    # the final model: every process takes part in saving (DeepSpeed gathers), rank 0 writes
    model_dir = output_dir / FINAL_MODEL_DIR
    tmp = output_dir / f".{FINAL_MODEL_DIR}.tmp"
    main = trainer.is_world_process_zero()
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    trainer.accelerator.wait_for_everyone()
    if main:
        if gene_vocab.version not in ("V1", "V2"):
            gene_vocab.save(tmp / "vocab")
        if model_dir.exists():
            shutil.rmtree(model_dir)
        os.replace(tmp, model_dir)
        trainer.save_state()
    trainer.accelerator.wait_for_everyone()
    return PretrainResult(
        output_dir=output_dir,
        model_dir=model_dir,
        global_step=trainer.state.global_step,
        train_metrics=dict(train_out.metrics),
        eval_metrics=dict(eval_metrics),
        log_history=list(trainer.state.log_history),
    )
