"""Models: the zoo of published checkpoints, one loader for every kind of checkpoint (masked-LM,
cell and gene classifiers, LoRA adapters, multi-task), the modelling heads, and the fast CPU
inference kernels."""

from .._utils import ModelLoadError, QuantizationError, resolve_device, resolve_dtype
from ._adapters import (
    apply_lora,
    as_lora_config,
    bnb_config,
    check_quantization_available,
    load_classifier,
    load_finetuned,
    lora_config,
    model_size_mb,
    quantize_dynamic_int8,
)
from ._attention import geneformer_cpu_attention, register_cpu_attention
from ._cpu_attention import blocked_attention
from ._fast_encoder import (
    attention_probabilities,
    fast_embeddings,
    fast_layer_forward,
    first_position_forward,
    packed_layer_forward,
    right_padded_lengths,
    supports_fast_embeddings,
    supports_fast_layer,
    supports_first_position,
)
from ._flops import encoder_flops
from ._freeze import freeze_encoder_layers
from ._heads import CellModelConfig, EncoderWithHead, GeneformerCellModel, build_head, head_loss, load_encoder
from ._loading import (
    check_model_folder,
    check_vocab_matches,
    finetuned_folder,
    finetuned_kind,
    init_model,
    is_adapter_folder,
    layer_index,
    load_model,
    model_emb_dims,
    model_input_size,
    model_vocab_version,
    n_layers,
    normalise_kind,
    read_finetune_meta,
    resolve_model_source,
    write_finetune_meta,
)
from ._mlm import GeneformerForMaskedLM, masked_accuracy
from ._multitask import AttentionPool, GeneformerMultiTask, MultiTaskConfig
from ._pooled import PooledSequenceClassifier, cell_pooling_of
from ._varlen import Packing, attention_backend, make_packing, pack, unpack, varlen_attention
from ._zoo import (
    DEFAULT_MODEL,
    HUB_REPO,
    MODEL_ZOO,
    ModelSpec,
    bert_config_kwargs,
    get_spec,
    list_models,
    vocab_version_for_size,
)

__all__ = [
    "DEFAULT_MODEL", "HUB_REPO", "MODEL_ZOO", "AttentionPool", "GeneformerForMaskedLM", "GeneformerMultiTask",
    "ModelLoadError", "ModelSpec", "QuantizationError", "apply_lora", "as_lora_config", "bert_config_kwargs",
    "blocked_attention", "bnb_config", "check_model_folder", "check_quantization_available", "check_vocab_matches",
    "attention_probabilities", "fast_embeddings", "fast_layer_forward", "geneformer_cpu_attention", "register_cpu_attention", "finetuned_folder", "finetuned_kind", "first_position_forward", "freeze_encoder_layers", "get_spec", "init_model", "is_adapter_folder",
    "layer_index", "list_models", "load_classifier", "load_finetuned", "load_model", "lora_config",
    "masked_accuracy", "model_emb_dims", "model_input_size", "model_size_mb", "model_vocab_version", "n_layers",
    "normalise_kind", "quantize_dynamic_int8", "read_finetune_meta", "resolve_device", "resolve_dtype",
    "resolve_model_source", "right_padded_lengths", "supports_fast_embeddings", "supports_fast_layer", "supports_first_position",
    "vocab_version_for_size", "write_finetune_meta",
    "CellModelConfig", "EncoderWithHead", "GeneformerCellModel", "MultiTaskConfig", "build_head", "head_loss",
    "load_encoder", "PooledSequenceClassifier", "cell_pooling_of",
    "encoder_flops", "Packing", "attention_backend", "make_packing", "pack", "packed_layer_forward", "unpack",
    "varlen_attention",
]
