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
import os
import pickle
import shutil
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from transformers import BertConfig, TrainerCallback

from .._utils import InputFileError, OutputExistsError, bf16_supported, check_positive_int, rank, trainer_device_args
from ..models import GeneformerForMaskedLM, load_model, vocab_version_for_size
from ..vocab import GeneVocab, as_vocab
from ._architectures import load_config, preset_vocab_version
from ._checkpoints import check_checkpoint, checkpoint_folders, last_complete_checkpoint
from ._collators import DataCollatorForMaskedGenes
from ._corpus import check_corpus, load_corpus
from ._masked_trainer import MaskedGeneTrainer
from ._trainer import training_arguments

logger = logging.getLogger(__name__)

#: Vocabulary sizes of the published vocabularies, to recognise the vocabulary of a checkpoint.
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


def _resume_point(output_dir: Path, resume: bool | str | os.PathLike | None, overwrite: bool) -> str | None:
    """The checkpoint to resume from (None: start afresh, after clearing a previous run's outputs)."""
    if resume is True:
        found = last_complete_checkpoint(output_dir)
        if found is None:
            raise ValueError(f"No checkpoint in {output_dir} to resume from (no complete checkpoint-* folder); "
                             "run without --resume.")
        return str(found)
    if resume:
        return str(check_checkpoint(Path(resume).expanduser()))
    previous = checkpoint_folders(output_dir) + [p for p in [output_dir / FINAL_MODEL_DIR] if p.exists()]
    if previous and not overwrite:
        raise OutputExistsError(
            f"{output_dir} already holds a pretraining run ({', '.join(p.name for p in previous[:3])}). Pass "
            "--resume (resume_from_checkpoint=True) to continue it, or --overwrite (overwrite=True) to start afresh.")
    if previous and rank() == 0:
        for p in previous:
            shutil.rmtree(p)
    return None


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
    version = getattr(cfg, "geneformer_vocab", None) or vocab_version_for_size(cfg.vocab_size)
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
    dataset: Any,
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
    overwrite: bool = False,
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
    ``resume_from_checkpoint``: True for the newest complete ``checkpoint-*`` in ``output_dir``
    (incomplete ones, from a kill mid-save, are skipped with a warning), or a path (which must be
    complete). Without it, an ``output_dir`` holding checkpoints or a final model is refused unless
    ``overwrite`` (which removes them first), so old and new checkpoints are never mixed.
    ``training_args``: extra ``TrainingArguments`` fields (override the ones set here).
    ``fused_attention_dropout``: train with the exact fused-speed attention dropout of
    :mod:`.dropout_attention` (CPU; False for PyTorch's own ``sdpa`` dropout path).

    The final model is written to ``output_dir/model`` (safetensors, plain ``BertForMaskedLM``).
    """
    from transformers import set_seed

    output_dir = Path(output_dir).expanduser()
    check_positive_int("max_steps", max_steps, allow_none=True)
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
        bf16 = bf16_supported()
    resume = _resume_point(output_dir, resume_from_checkpoint, overwrite)
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
        report_to=_report_to(report_to),
        disable_tqdm=disable_tqdm,
        **trainer_device_args(),
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
    try:
        train_out = trainer.train(resume_from_checkpoint=resume)
    except pickle.UnpicklingError as exc:  # torch's weights-only loader refused a checkpoint file
        if resume is None:
            raise
        reason = next((ln.strip() for ln in reversed(str(exc).splitlines()) if ln.strip()), str(exc))
        raise InputFileError(f"Checkpoint {resume} holds a file that is not plain tensor data, refused: {reason} "
                             "Delete that checkpoint, or resume from another one.") from exc
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
