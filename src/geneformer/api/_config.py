"""``GeneformerConfig``: the settings of the model-card API (Helical's argument names)."""

from __future__ import annotations

from dataclasses import dataclass

from .._constants import EMB_MODES, EmbMode
from .._utils import check_choice, check_emb_layer, check_positive_int


@dataclass
class GeneformerConfig:
    """Settings for :class:`Geneformer`.

    Attributes:
        model_name: zoo name (see ``geneformer models``) or a local model folder.
        batch_size: cells per forward batch (None: chosen from free memory).
        emb_layer: 0 = last layer, -1 = second-to-last (the reference's meaning), down to -n_layers.
        emb_mode: "cell" (mean over genes), "cls" (the <cls> state, V2 models) or "gene".
        device: "cpu", "cuda", "cuda:N" or None (``settings.device``: CUDA when available).
        accelerator: place the model with ``accelerate`` (each process of a ``accelerate launch`` /
            ``torchrun`` run on its own device) instead of on ``device``.
        nproc: worker processes for tokenization.
        custom_attr_name_dict: obs columns to carry into the tokenized dataset {obs column: dataset column}.
        dtype: None/"fp32", or "bf16"/"fp16" for faster mixed-precision inference (None: ``settings.dtype``).
        vocab: "V1"/"V2"/a vocabulary folder; None follows the model.
        model_input_size, special_token: tokenization overrides; None follows the model.
    """

    model_name: str = "gf-12L-95M-i4096"
    batch_size: int | None = 24
    emb_layer: int = -1
    emb_mode: EmbMode = "cell"
    device: str | None = None
    accelerator: bool = False
    nproc: int = 1
    custom_attr_name_dict: dict | None = None
    dtype: str | None = None
    vocab: str | None = None
    model_input_size: int | None = None
    special_token: bool | None = None

    def __post_init__(self) -> None:
        check_choice("emb_mode", self.emb_mode, EMB_MODES)
        check_positive_int("batch_size", self.batch_size, allow_none=True)
        check_emb_layer(self.emb_layer)
        check_positive_int("nproc", self.nproc)

    def resolved_device(self):
        """The device the model runs on: ``accelerate``'s when ``accelerator`` is set, else ``device``."""
        if self.accelerator:
            from accelerate import Accelerator

            return Accelerator().device
        from .._utils import resolve_device

        return resolve_device(self.device)
