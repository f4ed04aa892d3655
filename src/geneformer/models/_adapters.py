"""LoRA adapters (peft), bitsandbytes 8-/4-bit loading on CUDA, and int8 dynamic quantization on CPU.

* :func:`lora_config` / :func:`apply_lora`: LoRA on the attention query/value projections, with
  the randomly initialised ``classifier`` head (and the cell classifier's ``pooler``, which
  masked-LM checkpoints lack) in ``modules_to_save`` so that they train and are saved — the
  reference leaves the head frozen with older peft versions.
* :func:`load_classifier`: a classifier for training, optionally 4-bit NF4 (or 8-bit) quantized
  with LoRA (the reference's ``quantize=True``). Quantized loading needs CUDA and bitsandbytes.
* :func:`load_finetuned`: a fine-tuned folder, full weights or a LoRA adapter (``adapter_config.json``).
* :func:`quantize_dynamic_int8`: int8 dynamic quantization of every ``nn.Linear`` for CPU inference.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Mapping

import torch

from .._constants import CLASSIFIER_HEADS
from .._utils import OptionError, QuantizationError, check_choice, cuda_available
from ._loading import finetuned_kind, load_model, normalise_kind

logger = logging.getLogger(__name__)

CPU_QUANT_MESSAGE = (
    "8-bit / 4-bit quantized loading needs a CUDA GPU and bitsandbytes; on CPU use int8 dynamic "
    "quantization for inference (geneformer.models.quantize_dynamic_int8(model))."
)


def check_quantization_available() -> None:
    """Raise :class:`QuantizationError` unless CUDA and bitsandbytes are both present."""
    if not cuda_available():
        raise QuantizationError(CPU_QUANT_MESSAGE + " (no CUDA device found)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise QuantizationError(
            CPU_QUANT_MESSAGE + " (bitsandbytes is not installed: pip install bitsandbytes)") from exc


def bnb_config(bits: int = 4) -> Any:
    """The reference's BitsAndBytesConfig: 4-bit NF4 + double quantization + bf16 compute, or 8-bit."""
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    if bits == 4:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=torch.bfloat16)
    raise ValueError(f"bits must be 4 or 8, got {bits}.")


def head_modules(kind: str) -> list[str]:
    """Modules that are new in a classifier and must train with LoRA: the head, and for cell
    classifiers the pooler (absent from masked-LM checkpoints, so randomly initialised too)."""
    return ["classifier"] if "gene" in kind else ["classifier", "pooler"]


def lora_config(kind: str = "cell_classifier", *, r: int = 64, lora_alpha: int = 128, lora_dropout: float = 0.1,
                target_modules: tuple[str, ...] = ("query", "value"), **kwargs: Any) -> Any:
    """LoraConfig for a cell (SEQ_CLS) or gene (TOKEN_CLS) classifier; the head is in modules_to_save."""
    from peft import LoraConfig, TaskType

    task = TaskType.TOKEN_CLS if "gene" in kind else TaskType.SEQ_CLS
    kwargs.setdefault("modules_to_save", head_modules(kind))
    return LoraConfig(task_type=task, r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, bias="none",
                      target_modules=list(target_modules), **kwargs)


def as_lora_config(spec: Any, kind: str) -> Any:
    """``True`` → defaults; a dict → LoraConfig keyword overrides; a LoraConfig → itself (head ensured)."""
    from peft import LoraConfig

    if spec is True:
        return lora_config(kind)
    if isinstance(spec, LoraConfig):
        mts = list(spec.modules_to_save or [])
        spec.modules_to_save = mts + [m for m in head_modules(kind) if m not in mts]
        return spec
    if isinstance(spec, Mapping):
        return lora_config(kind, **dict(spec))
    raise ValueError(f"lora must be True, a dict of LoraConfig options or a LoraConfig, got {type(spec).__name__}.")


def apply_lora(model: Any, config: Any) -> Any:
    """Wrap ``model`` with LoRA adapters (peft); only adapters and the head train."""
    from peft import get_peft_model

    peft_model = get_peft_model(model, config)
    n_train = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in peft_model.parameters())
    logger.info("LoRA: %d of %d parameters trainable (%.2f%%)", n_train, n_all, 100 * n_train / max(n_all, 1))
    return peft_model


def load_classifier(model_directory: str | os.PathLike, kind: str, num_labels: int, *, quantize: Any = False,
                    lora: Any = False, id2label: Mapping[int, Any] | None = None, vocab: Any = None,
                    head: str = "first") -> Any:
    """A classifier ready for training: plain, with LoRA, or quantized (4-bit NF4 + LoRA, CUDA only).

    ``quantize``: False, True (4-bit NF4 + LoRA r64/α128), 8 / 4, or the reference's dict
    ``{"bnb_config": BitsAndBytesConfig, "peft_config": LoraConfig}``. ``head`` (cell classifiers):
    "first" (the reference's pooler on the first position), "mean" or "cls" (see ``_pooled``).
    """
    kwargs: dict[str, Any] = {"ignore_mismatched_sizes": True}
    if head != "first":
        check_choice("head", head, CLASSIFIER_HEADS)
        if normalise_kind(kind) != "cell_classifier":
            raise OptionError(f"head={head!r} is for cell classifiers; a gene classifier classifies each position.")
        kwargs["cell_pooling"] = head
    if id2label:
        kwargs["id2label"] = {int(k): str(v) for k, v in id2label.items()}
        kwargs["label2id"] = {str(v): int(k) for k, v in id2label.items()}
    peft_cfg = None
    if quantize:
        check_quantization_available()
        if isinstance(quantize, Mapping):
            kwargs["quantization_config"] = quantize.get("bnb_config") or bnb_config(4)
            peft_cfg = quantize.get("peft_config")
        else:
            bits = 8 if quantize == 8 else 4
            kwargs["quantization_config"] = bnb_config(bits)
            peft_cfg = lora_config(kind)
        # bitsandbytes places the weights itself (a quantized model cannot be moved with .to)
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    model = load_model(model_directory, kind=kind, num_labels=num_labels, vocab=vocab, eval_mode=False, **kwargs)
    if lora and peft_cfg is None:
        peft_cfg = as_lora_config(lora, kind)
    if peft_cfg is not None:
        if quantize:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model)
        model = apply_lora(model, peft_cfg)
    return model


def load_finetuned(folder: str | os.PathLike, kind: str | None = None, *, num_labels: int | None = None,
                   base_model: str | os.PathLike | None = None, device: Any = None, merge: bool = False,
                   vocab: Any = None) -> Any:
    """Load a fine-tuned classifier folder in eval mode: full weights, or a LoRA adapter on its base
    (``load_model`` with the kind recorded in the folder)."""
    return load_model(folder, kind=kind or finetuned_kind(folder), num_labels=num_labels, vocab=vocab, device=device,
                      base_model=base_model, merge=merge)


def quantize_dynamic_int8(model: Any) -> Any:
    """int8 dynamic quantization of every ``nn.Linear`` (CPU inference; weights int8, activations fp32).

    Returns a quantized copy in eval mode; the input model is not changed.
    """
    import copy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notice
        from torch.ao.quantization import quantize_dynamic

        if hasattr(model, "merge_and_unload") and hasattr(model, "peft_config"):
            model = copy.deepcopy(model).merge_and_unload()
        else:
            model = copy.deepcopy(model)
        model = model.to("cpu").eval()
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def model_size_mb(model: Any) -> float:
    """Serialized size of a model's state dict in MB (to compare fp32 and int8)."""
    import io

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell() / 1e6
