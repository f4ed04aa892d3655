"""Loading Geneformer checkpoints as masked-LM, cell-classifier or gene-classifier BERT models.

A model is named either by a local folder (``config.json`` + ``model.safetensors`` /
``pytorch_model.bin``) or by a zoo name, which resolves to ``from_pretrained(repo, subfolder=...)`` on
the Hugging Face hub. Models are loaded in eval mode with PyTorch's scaled-dot-product attention
(SDPA) unless another implementation is asked for, and their ``vocab_size`` is checked against the
gene vocabulary so that the common V1/V2 mix-up fails early with a clear message.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._utils import ModelLoadError, hub_offline, resolve_device, resolve_dtype
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
}


def normalise_kind(kind: str) -> str:
    """Map ``kind`` (ours or the reference's ``model_type``) to pretrained/cell_classifier/gene_classifier."""
    key = str(kind).replace("-", "_").lower()
    if key not in _KIND_ALIASES:
        raise ValueError(
            f"Unknown model kind {kind!r}; use 'pretrained', 'cell_classifier' or 'gene_classifier' "
            "(the reference's 'Pretrained', 'CellClassifier', 'GeneClassifier' are accepted too)."
        )
    return _KIND_ALIASES[key]


def _model_class(kind: str):
    from transformers import BertForMaskedLM, BertForSequenceClassification, BertForTokenClassification

    return {
        "pretrained": BertForMaskedLM,
        "cell_classifier": BertForSequenceClassification,
        "gene_classifier": BertForTokenClassification,
    }[kind]


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
    **from_pretrained_kwargs: Any,
) -> "PreTrainedModel":
    """Load a Geneformer checkpoint.

    Args:
        name_or_path: a local model folder, a zoo name (``MODEL_ZOO``) or a hub repository id.
        kind: "pretrained" (BertForMaskedLM), "cell_classifier" (BertForSequenceClassification) or
            "gene_classifier" (BertForTokenClassification).
        num_labels: number of classes for the classifier kinds (defaults to the checkpoint's own).
        vocab: gene vocabulary (GeneVocab, "V1"/"V2" or a folder) to check ``vocab_size`` against.
        device: "cpu", "cuda", a torch.device, or None for CUDA when available.
        dtype: weights dtype ("fp32", "bf16", "fp16"); None keeps the checkpoint's float32.
        attn_implementation: "sdpa" (default, fast) or "eager" (needed to read attention weights).
        eval_mode: put the model in eval mode (dropout off).
    """
    kind = normalise_kind(kind)
    source, kwargs, spec = resolve_model_source(name_or_path)
    kwargs.update(from_pretrained_kwargs)
    if hub_offline() and not Path(source).is_dir():
        kwargs.setdefault("local_files_only", True)  # fail at once instead of retrying the network
    if kind != "pretrained" and num_labels is not None:
        kwargs["num_labels"] = int(num_labels)
    torch_dtype = resolve_dtype(dtype)
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    cls = _model_class(kind)
    try:
        model = cls.from_pretrained(source, attn_implementation=attn_implementation, **kwargs)
    except (ValueError, ImportError) as exc:
        if attn_implementation != "sdpa" or "sdpa" not in str(exc).lower():
            raise ModelLoadError(f"Could not load {name_or_path}: {exc}") from exc
        logger.info("SDPA attention not available for %s (%s); using eager attention", source, exc)
        model = cls.from_pretrained(source, attn_implementation="eager", **kwargs)
    except OSError as exc:
        hint = ""
        if spec is not None:
            revision = kwargs.get("revision")
            hint = (f" (zoo model {spec.name}: {spec.repo}, subfolder {spec.subfolder or '/'}"
                    f"{', revision ' + str(revision) if revision else ''}; needs the hub or its cache, "
                    "and HF_HUB_OFFLINE must be unset to download"
                    f"{'; ' + LEGACY_NOTE if spec.legacy and not revision else ''})")
        raise ModelLoadError(f"Could not load model {name_or_path!r}{hint}: {exc}") from exc
    check_vocab_matches(model, vocab, source=f"Model {name_or_path}")
    if spec is not None and model.config.vocab_size != spec.vocab_size:
        logger.warning("%s: vocab_size %d differs from the zoo's %d", spec.name, model.config.vocab_size,
                       spec.vocab_size)
    model.to(resolve_device(device))
    if eval_mode:
        model.eval()
    return model


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
    emb_layer = int(emb_layer)
    if not -n <= emb_layer <= 0:
        raise ValueError(
            f"emb_layer={emb_layer} is out of range for a {n}-layer model; use 0 (last layer), -1 "
            f"(second-to-last) down to {-n} (the embedding layer)."
        )
    return n + emb_layer


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
