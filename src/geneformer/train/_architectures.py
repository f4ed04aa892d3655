"""BERT configurations of the published Geneformer architectures, plus a tiny one for tests.

Every published checkpoint is a plain Hugging Face ``BertForMaskedLM`` (see
``models.bert_config_kwargs``); only the sizes differ, and those come from the model zoo.
``vocab_size`` is never part of a preset: it comes from the gene vocabulary in use.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from transformers import BertConfig

from ..models import bert_config_kwargs, get_spec


def _published(zoo_name: str) -> tuple[int, int, int, int, int, float, str | None]:
    spec = get_spec(zoo_name)
    return (spec.num_layers, spec.hidden_size, spec.num_heads, spec.intermediate_size, spec.input_size,
            spec.dropout, spec.vocab_version)


# name -> (layers, hidden, heads, intermediate, max positions, dropout, vocabulary version); the
# published architectures' numbers come from the model zoo
_PRESETS: dict[str, tuple[int, int, int, int, int, float, str | None]] = {
    # V1, Genecorpus-30M vocabulary, 2,048 input genes, no <cls>/<eos>
    "gf-6L-30M-i2048": _published("Geneformer-V1-10M"),
    "gf-12L-30M-i2048": _published("gf-12L-30M-i2048"),
    # V2, Genecorpus-104M vocabulary, 4,096 input tokens with <cls>/<eos>
    "gf-12L-95M-i4096": _published("gf-12L-95M-i4096"),
    "gf-12L-104M-i4096": _published("Geneformer-V2-104M"),
    "gf-18L-316M-i4096": _published("Geneformer-V2-316M"),
    "gf-20L-95M-i4096": _published("gf-20L-95M-i4096"),
    # a few thousand parameters plus the embeddings: for tests and smoke runs only
    "tiny": (2, 32, 2, 64, 2048, 0.0, None),
}
_ALIASES = {
    "Geneformer-V1-10M": "gf-6L-30M-i2048",
    "V1-10M": "gf-6L-30M-i2048",
    "Geneformer-V2-104M": "gf-12L-104M-i4096",
    "Geneformer-V2-104M_CLcancer": "gf-12L-104M-i4096",
    "V2-104M": "gf-12L-104M-i4096",
    "Geneformer-V2-316M": "gf-18L-316M-i4096",
    "V2-316M": "gf-18L-316M-i4096",
}

#: Names accepted by :func:`architecture_config` (presets and their aliases).
ARCHITECTURES: tuple[str, ...] = tuple(_PRESETS) + tuple(_ALIASES)


def preset_vocab_version(name: str) -> str | None:
    """The vocabulary version ("V1"/"V2") a preset was published with, or None for ``tiny``."""
    return _PRESETS[_canonical(name)][6]


def _canonical(name: str) -> str:
    key = _ALIASES.get(name, name)
    if key not in _PRESETS:
        raise ValueError(f"Unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}.")
    return key


def architecture_config(name: str, vocab_size: int, *, pad_token_id: int = 0, **overrides: Any) -> BertConfig:
    """A ``BertConfig`` for a named architecture and a vocabulary of ``vocab_size`` tokens.

    ``overrides`` replace any field (e.g. ``max_position_embeddings=256`` for short corpora).
    """
    layers, hidden, heads, inter, max_pos, dropout, _ = _PRESETS[_canonical(name)]
    fields = bert_config_kwargs(vocab_size, layers, hidden, heads, inter, max_pos, dropout, pad_token_id)
    fields.update(overrides)
    return finalize_config(BertConfig(**fields))


def finalize_config(config: BertConfig) -> BertConfig:
    """Ask for PyTorch scaled-dot-product attention and the Geneformer-fixed fields."""
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"hidden_size {config.hidden_size} is not a multiple of num_attention_heads {config.num_attention_heads}."
        )
    config._attn_implementation = "sdpa"
    config.architectures = ["BertForMaskedLM"]
    return config


def load_config(spec: "str | os.PathLike | BertConfig | dict | None", vocab_size: int, *,
                pad_token_id: int = 0, default: str = "gf-6L-30M-i2048") -> BertConfig:
    """Resolve a preset name, a JSON file, a model folder, a dict or a ``BertConfig``.

    The vocabulary size and pad id always follow the vocabulary in use; a JSON/folder/dict
    config whose ``vocab_size`` disagrees raises a ``ValueError`` naming both sizes.
    """
    if spec is None:
        spec = default
    if isinstance(spec, BertConfig):
        cfg = BertConfig.from_dict(spec.to_dict())
    elif isinstance(spec, dict):
        cfg = BertConfig.from_dict({**spec, "model_type": "bert"})
    elif isinstance(spec, str) and spec in ARCHITECTURES:
        return architecture_config(spec, vocab_size, pad_token_id=pad_token_id)
    else:
        path = Path(spec)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ValueError(
                f"Model config {str(spec)!r} is neither a preset ({', '.join(ARCHITECTURES)}) nor a JSON file."
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"Could not read model config {path}: {exc}") from exc
        if data.get("model_type", "bert") != "bert":
            raise ValueError(f"{path} describes a {data.get('model_type')!r} model; Geneformer models are BERT.")
        cfg = BertConfig.from_dict(data)
    if cfg.vocab_size not in (None, 30522) and cfg.vocab_size != vocab_size:
        # 30522 is BertConfig's default, i.e. "not given"
        raise ValueError(
            f"The model config has vocab_size {cfg.vocab_size} but the gene vocabulary has {vocab_size} tokens; "
            "use the matching vocabulary (--vocab) or drop vocab_size from the config."
        )
    cfg.vocab_size = int(vocab_size)
    cfg.pad_token_id = pad_token_id
    return finalize_config(cfg)
