"""The one model loader: every kind of Geneformer checkpoint goes through :func:`load_model`.

A model is named by a local folder (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``,
or a LoRA adapter folder), a zoo name, which resolves to ``from_pretrained(repo, subfolder=...)`` on
the Hugging Face hub, or a hub repository id. It is loaded as a masked-LM, a cell or gene
classifier, a bare encoder, or any ``PreTrainedModel`` class (``model_class``: the multi-task and
pretraining heads), in eval mode with PyTorch's scaled-dot-product attention (SDPA) unless another
implementation is asked for; its ``vocab_size`` is checked against the gene vocabulary so that the
common V1/V2 mix-up fails early with a clear message. Fine-tuned folders record what they hold in
``geneformer_finetune.json`` (:func:`write_finetune_meta`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._utils import (
    ModelLoadError,
    check_emb_layer,
    hub_offline,
    hub_offline_reason,
    quiet_transformers,
    resolve_device,
    resolve_dtype,
    write_json,
)
from ._attention import ATTN_IMPLEMENTATION as CPU_ATTENTION
from ._attention import register_cpu_attention
from ._zoo import LEGACY_NOTE, MODEL_ZOO, ModelSpec, get_spec, vocab_version_for_size

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedModel

    from ..vocab import GeneVocab

logger = logging.getLogger(__name__)

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

# our kind names, plus the reference's model_type spellings
_KIND_ALIASES = {
    "pretrained": "pretrained",
    "mlm": "pretrained",
    "masked_lm": "pretrained",
    "cell_classifier": "cell_classifier",
    "cellclassifier": "cell_classifier",
    "sequence_classification": "cell_classifier",
    "gene_classifier": "gene_classifier",
    "geneclassifier": "gene_classifier",
    "token_classification": "gene_classifier",
    "encoder": "encoder",
}
FINETUNE_META = "geneformer_finetune.json"


def normalise_kind(kind: str) -> str:
    """Map ``kind`` (ours or the reference's ``model_type``) to pretrained/cell_classifier/gene_classifier."""
    key = str(kind).replace("-", "_").lower()
    if key not in _KIND_ALIASES:
        raise ValueError(
            f"Unknown model kind {kind!r}; use 'pretrained', 'cell_classifier', 'gene_classifier' or 'encoder' "
            "(the reference's 'Pretrained', 'CellClassifier', 'GeneClassifier' are accepted too)."
        )
    return _KIND_ALIASES[key]


def _model_class(kind: str):
    from transformers import BertForMaskedLM, BertForSequenceClassification, BertForTokenClassification, BertModel

    return {
        "pretrained": BertForMaskedLM,
        "cell_classifier": BertForSequenceClassification,
        "gene_classifier": BertForTokenClassification,
        "encoder": BertModel,
    }[kind]


def _cell_classifier_class(source: Any, kwargs: dict) -> Any:
    """The reference's class, or :class:`._pooled.PooledSequenceClassifier` when a new head asks for
    mean/cls pooling (``cell_pooling`` keyword) or a saved folder's configuration records it."""
    from transformers import BertForSequenceClassification

    from ._pooled import PooledSequenceClassifier

    pooling = kwargs.pop("cell_pooling", None)
    if pooling is None:
        cfg = Path(str(source)) / "config.json"
        if cfg.is_file():
            pooling = json.loads(cfg.read_text()).get("cell_pooling")
    if pooling in (None, "first"):
        return BertForSequenceClassification
    kwargs["cell_pooling"] = pooling
    return PooledSequenceClassifier


def check_model_folder(folder: Path) -> None:
    """Raise a clear error unless ``folder`` holds a config and weights that transformers can read."""
    if not folder.is_dir():
        raise ModelLoadError(f"Model folder {folder} does not exist.")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"{folder} has no config.json, so it is not a Hugging Face model folder. "
            "Point to the folder that holds config.json and model.safetensors (or pytorch_model.bin)."
        )
    if not any((folder / w).is_file() for w in WEIGHT_FILES):
        present = sorted(p.name for p in folder.iterdir())[:10]
        raise ModelLoadError(
            f"{folder} has a config.json but no model weights (expected one of {', '.join(WEIGHT_FILES)}; "
            f"found {present}). Copy or download the weights into the folder, or use a zoo name "
            f"({', '.join(sorted(MODEL_ZOO)[:3])}, ...) to fetch them from the hub."
        )
    weights = folder / "model.safetensors"
    if weights.is_file():  # reading the header catches truncated and garbage files before any work
        from safetensors import safe_open

        try:
            with safe_open(str(weights), framework="pt") as fh:
                fh.keys()
        except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError: bad bytes fail in several ways
            raise ModelLoadError(f"{weights} is truncated or not a safetensors file ({exc}).") from exc


def check_vocab_matches(model_or_config: Any, vocab: "GeneVocab | str | None", source: str = "the model") -> None:
    """Raise when the model's ``vocab_size`` does not fit the gene vocabulary (the V1/V2 mix-up)."""
    if vocab is None:
        return
    config = getattr(model_or_config, "config", model_or_config)
    model_size = int(config.vocab_size)
    model_version = vocab_version_for_size(model_size)
    if isinstance(vocab, str) and vocab.upper() in ("V1", "V2"):
        want_version = vocab.upper()
        want_size = {"V1": 25426, "V2": 20275}[want_version]
    else:
        from ..vocab import as_vocab

        v = as_vocab(vocab)
        want_version, want_size = v.version, v.size
    if model_size == want_size:
        return
    mv = f"the {model_version} vocabulary" if model_version else "a custom vocabulary"
    wv = f"the {want_version} vocabulary" if want_version else "a custom vocabulary"
    raise ModelLoadError(
        f"{source} has vocab_size {model_size:,} ({mv}) but the gene vocabulary given is {wv} with "
        f"{want_size:,} tokens. V1 models (Geneformer-V1-10M, gf-*-30M-*) need data tokenized with the V1 "
        "vocabulary (model_version='V1'); V2 models (Geneformer-V2-*, gf-*-95M-*) need the V2 vocabulary. "
        "Re-tokenize the data or pick the matching model."
    )


def resolve_model_source(name_or_path: "str | os.PathLike") -> tuple[str, dict, ModelSpec | None]:
    """Turn a folder, zoo name or hub id into ``(pretrained_model_name_or_path, from_pretrained kwargs, spec)``."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        check_model_folder(path)
        return str(path), {}, None
    name = str(name_or_path)
    try:
        spec = get_spec(name)
    except KeyError:
        if name.count("/") == 1 and not name.startswith((".", "/")):
            return name, {}, None  # a hub repository id
        raise ModelLoadError(
            f"{name!r} is neither an existing folder nor a known model. Known models: "
            f"{', '.join(sorted(MODEL_ZOO))}. A folder must hold config.json and model weights."
        ) from None
    kwargs: dict[str, Any] = {}
    if spec.subfolder:
        kwargs["subfolder"] = spec.subfolder
    if spec.revision:
        kwargs["revision"] = spec.revision
    return spec.repo, kwargs, spec


def load_model(
    name_or_path: "str | os.PathLike",
    kind: str = "pretrained",
    num_labels: int | None = None,
    vocab: "GeneVocab | str | None" = None,
    device: "str | torch.device | None" = None,
    dtype: "str | torch.dtype | None" = None,
    *,
    attn_implementation: str = "sdpa",
    eval_mode: bool = True,
    model_class: Any = None,
    base_model: "str | os.PathLike | None" = None,
    merge: bool = False,
    **from_pretrained_kwargs: Any,
) -> "PreTrainedModel":
    """Load a Geneformer checkpoint.

    Args:
        name_or_path: a local model folder (or LoRA adapter folder), a zoo name (``MODEL_ZOO``) or a
            hub repository id.
        kind: "pretrained" (BertForMaskedLM), "cell_classifier" (BertForSequenceClassification),
            "gene_classifier" (BertForTokenClassification) or "encoder" (BertModel); the
            reference's "Pretrained"/"CellClassifier"/"GeneClassifier" spellings are accepted.
        num_labels: number of classes for the classifier kinds (defaults to the checkpoint's own).
        vocab: gene vocabulary (GeneVocab, "V1"/"V2" or a folder) to check ``vocab_size`` against.
        device: "cpu", "cuda", a torch.device, or None for ``settings.device``. A ``device_map``
            keyword (quantized loading) places the weights instead.
        dtype: weights dtype ("fp32", "bf16", "fp16"); None keeps the checkpoint's float32.
        attn_implementation: "sdpa" (default, fast), "eager", or "geneformer_cpu" (the package's CPU
            attention kernels for layers that run their own forward, e.g. LoRA-wrapped ones).
        eval_mode: put the model in eval mode (dropout off).
        model_class: any ``PreTrainedModel`` class to load instead of the kind's BERT class.
        base_model: for a LoRA adapter folder, the base model (default: the one the folder records).
        merge: for a LoRA adapter folder, fold the adapters into the weights (faster inference).
        from_pretrained_kwargs: passed to ``from_pretrained`` (``ignore_mismatched_sizes``, ``revision``, ...).
    """
    kind = normalise_kind(kind)
    if is_adapter_folder(name_or_path):
        return _load_adapter(Path(name_or_path), kind, num_labels, vocab, device, base_model, merge, eval_mode)
    source, kwargs, spec = resolve_model_source(name_or_path)
    kwargs.update(from_pretrained_kwargs)
    if not Path(source).is_dir() and hub_offline():
        kwargs.setdefault("local_files_only", True)  # fail at once instead of retrying the network
    if kind in ("cell_classifier", "gene_classifier") and num_labels is not None:
        kwargs["num_labels"] = int(num_labels)
    torch_dtype = resolve_dtype(dtype)
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    cls = model_class or _model_class(kind)
    if model_class is None and kind == "cell_classifier":
        cls = _cell_classifier_class(source, kwargs)
    if attn_implementation == CPU_ATTENTION:
        register_cpu_attention()
    from safetensors import SafetensorError

    try:
        with quiet_transformers():
            model = cls.from_pretrained(source, attn_implementation=attn_implementation, **kwargs)
    except (ValueError, ImportError) as exc:
        if attn_implementation != "sdpa" or "sdpa" not in str(exc).lower():
            raise ModelLoadError(f"Could not load {name_or_path}: {exc}") from exc
        logger.info("SDPA attention not available for %s (%s); using eager attention", source, exc)
        with quiet_transformers():
            model = cls.from_pretrained(source, attn_implementation="eager", **kwargs)
    except OSError as exc:
        raise ModelLoadError(_not_found_message(name_or_path, spec, kwargs, exc)) from exc
    except SafetensorError as exc:
        raise ModelLoadError(f"Could not load model {name_or_path}: its weights file is truncated or not a "
                             f"safetensors file ({exc}).") from exc
    check_vocab_matches(model, vocab, source=f"Model {name_or_path}")
    if spec is not None and model.config.vocab_size != spec.vocab_size:
        logger.warning("%s: vocab_size %d differs from the zoo's %d", spec.name, model.config.vocab_size,
                       spec.vocab_size)
    if "device_map" not in kwargs:
        model.to(resolve_device(device))
    if eval_mode:
        model.eval()
    return model


def _not_found_message(name_or_path: Any, spec: ModelSpec | None, kwargs: dict, exc: Exception) -> str:
    """One line: where the model was looked for and how to point at a local copy."""
    revision = kwargs.get("revision")
    where = (f"zoo model {spec.name} at {spec.repo}, subfolder {spec.subfolder or '/'}" if spec is not None
             else f"hub repository {name_or_path}") + (f", revision {revision}" if revision else "")
    offline = hub_offline_reason()
    why = f"hub {offline}, and not in the hub cache" if offline else (str(exc).splitlines() or ["not found"])[0]
    legacy = f" It is {LEGACY_NOTE}." if spec is not None and spec.legacy and not revision else ""
    return (f"Could not load model {str(name_or_path)!r}: looked for the {where} ({why}).{legacy} Point at a local "
            "copy: pass its folder (config.json and weights) as the model (--model FOLDER on the CLI).")


def _load_adapter(folder: Path, kind: str, num_labels: int | None, vocab: Any, device: Any,
                  base_model: Any, merge: bool, eval_mode: bool) -> Any:
    """A LoRA adapter folder on its base model (the one given, or the one the folder records)."""
    from peft import PeftModel

    meta = read_finetune_meta(folder)
    acfg = json.loads((folder / "adapter_config.json").read_text())
    base = base_model or meta.get("base_model") or acfg.get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"{folder} is a LoRA adapter without a recorded base model; pass base_model=.")
    kwargs: dict[str, Any] = {"ignore_mismatched_sizes": True}
    if meta.get("id2label"):
        kwargs["id2label"] = {int(k): v for k, v in meta["id2label"].items()}
    if kind == "cell_classifier" and meta.get("cell_pooling", "first") != "first":
        kwargs["cell_pooling"] = meta["cell_pooling"]  # the base model's folder does not record it
    model = load_model(base, kind=kind, num_labels=num_labels or meta.get("num_labels"), vocab=vocab, device="cpu",
                       eval_mode=False, **kwargs)
    model = PeftModel.from_pretrained(model, str(folder))
    if merge:
        model = model.merge_and_unload()
    model.to(resolve_device(device))
    return model.eval() if eval_mode else model


def is_adapter_folder(folder: Any) -> bool:
    """Whether ``folder`` is a local LoRA adapter folder (``adapter_config.json``)."""
    try:
        return (Path(folder).expanduser() / "adapter_config.json").is_file()
    except (TypeError, OSError):
        return False


def finetuned_folder(name_or_path: "str | os.PathLike") -> Path:
    """A fine-tuned model as a local folder: the folder itself, or a hub repository id downloaded to the
    hub cache. A zoo name is refused with what to do (the zoo holds pretrained models only)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if name in MODEL_ZOO or name.lower() in {k.lower() for k in MODEL_ZOO}:
        raise ModelLoadError(
            f"{name!r} is a pretrained zoo model without a trained classifier head; fine-tune it first "
            f"(`geneformer finetune --model {name} ...` or geneformer.train.finetune) and predict with the "
            "run's OUTPUT/model folder."
        )
    if name.count("/") != 1 or name.startswith((".", "/", "~")) or path.exists():
        raise ModelLoadError(f"Fine-tuned model {name!r} is neither a folder nor a hub repository id (owner/name).")
    from huggingface_hub import snapshot_download

    offline = hub_offline_reason()
    try:
        return Path(snapshot_download(repo_id=name, local_files_only=bool(offline)))
    except Exception as exc:  # network errors, unknown repository, offline without a cached copy
        why = f"hub {offline}, and not in the hub cache" if offline else (str(exc).splitlines() or ["not found"])[0]
        raise ModelLoadError(f"Could not fetch the fine-tuned model {name!r} from the hub ({why}). Point at a local "
                             "copy: pass its folder as the model (--model FOLDER on the CLI).") from exc


def write_finetune_meta(folder: str | os.PathLike, **meta: Any) -> None:
    """Record what a fine-tuned folder holds (kind, classes, base model) beside the weights."""
    write_json(Path(folder) / FINETUNE_META, meta, default=str)


def read_finetune_meta(folder: str | os.PathLike) -> dict:
    """What :func:`write_finetune_meta` recorded (empty when the folder has no record)."""
    path = Path(folder) / FINETUNE_META
    return json.loads(path.read_text()) if path.is_file() else {}


def finetuned_kind(folder: str | os.PathLike) -> str:
    """"cell_classifier" or "gene_classifier" for a fine-tuned folder (full weights or adapter)."""
    meta = read_finetune_meta(folder)
    if meta.get("kind"):
        return meta["kind"]
    cfg_path = Path(folder) / "config.json"
    if cfg_path.is_file():
        arch = (json.loads(cfg_path.read_text()).get("architectures") or [""])[0]
        if "TokenClassification" in arch:
            return "gene_classifier"
        if "SequenceClassification" in arch:
            return "cell_classifier"
    acfg = Path(folder) / "adapter_config.json"
    if acfg.is_file() and json.loads(acfg.read_text()).get("task_type") == "TOKEN_CLS":
        return "gene_classifier"
    return "cell_classifier"


def n_layers(model: Any) -> int:
    """Number of encoder layers of a BERT-style model (or its config)."""
    config = getattr(model, "config", model)
    return int(config.num_hidden_layers)


def layer_index(model: Any, emb_layer: int = -1) -> int:
    """Index into ``hidden_states`` for the reference's ``emb_layer``: ``n_layers + emb_layer``.

    ``hidden_states`` has ``n_layers + 1`` entries (0 is the embedding output), so ``emb_layer=0``
    is the final encoder layer and ``-1`` the second-to-last layer's output.
    """
    n = n_layers(model)
    return n + check_emb_layer(emb_layer, n)


def model_input_size(model: Any) -> int:
    """Longest input the model accepts (``max_position_embeddings``)."""
    return int(getattr(model, "config", model).max_position_embeddings)


def model_emb_dims(model: Any) -> int:
    """Width of the model's hidden states (``hidden_size``)."""
    return int(getattr(model, "config", model).hidden_size)


def model_vocab_version(model: Any) -> str | None:
    """"V1"/"V2" when the model's ``vocab_size`` is a published vocabulary's size, else None."""
    return vocab_version_for_size(getattr(model, "config", model).vocab_size)


def init_model(
    name_or_spec: "str | ModelSpec",
    kind: str = "pretrained",
    *,
    num_labels: int | None = None,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    **config_overrides: Any,
) -> "PreTrainedModel":
    """A randomly initialised model with a zoo architecture (for benchmarks and pretraining from scratch)."""
    import torch
    from transformers import BertConfig

    spec = name_or_spec if isinstance(name_or_spec, ModelSpec) else get_spec(str(name_or_spec))
    cfg_kwargs = spec.bert_config_kwargs()
    cfg_kwargs.update(config_overrides)
    if num_labels is not None:
        cfg_kwargs["num_labels"] = int(num_labels)
    config = BertConfig(**cfg_kwargs)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = _model_class(normalise_kind(kind))(config)
    return model.eval()
