"""Model zoo and model loading (masked-LM, cell and gene classifiers)."""

from .loading import (
    ModelLoadError,
    check_model_folder,
    check_vocab_matches,
    init_model,
    layer_index,
    load_model,
    model_emb_dims,
    model_input_size,
    model_vocab_version,
    n_layers,
    normalise_kind,
    resolve_device,
    resolve_dtype,
)
from .zoo import DEFAULT_MODEL, HUB_REPO, MODEL_ZOO, ModelSpec, get_spec, list_models, vocab_version_for_size

__all__ = [
    "DEFAULT_MODEL",
    "HUB_REPO",
    "MODEL_ZOO",
    "ModelLoadError",
    "ModelSpec",
    "check_model_folder",
    "check_vocab_matches",
    "get_spec",
    "init_model",
    "layer_index",
    "list_models",
    "load_model",
    "model_emb_dims",
    "model_input_size",
    "model_vocab_version",
    "n_layers",
    "normalise_kind",
    "resolve_device",
    "resolve_dtype",
    "vocab_version_for_size",
]
