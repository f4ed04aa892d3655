"""TODO docstring."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GeneformerConfig:
    """Settings for :class:`Geneformer`.

    Attributes:
        model_name: zoo name (see ``geneformer models``) or a local model folder.
        batch_size: cells per forward batch (None: chosen from free memory).
        emb_layer: 0 = last layer, -1 = second-to-last (the reference's meaning).
        emb_mode: "cell" (mean over genes), "cls" (the <cls> state, V2 models) or "gene".
        device: "cpu", "cuda" or None (CUDA when available).
        accelerator: accepted for compatibility; device placement is automatic.
        nproc: worker processes for tokenization.
        custom_attr_name_dict: obs columns to carry into the tokenized dataset {obs column: dataset column}.
        dtype: None/"fp32", or "bf16"/"fp16" for faster mixed-precision inference.
        vocab: "V1"/"V2"/a vocabulary folder; None follows the model.
        model_input_size, special_token: tokenization overrides; None follows the model.
    """

    model_name: str = "gf-12L-95M-i4096"
    batch_size: int | None = 24
    emb_layer: int = -1
    emb_mode: str = "cell"
    device: str | None = None
    accelerator: bool = False
    nproc: int = 1
    custom_attr_name_dict: dict | None = None
    dtype: str | None = None
    vocab: str | None = None
    model_input_size: int | None = None
    special_token: bool | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.emb_mode not in ("cell", "cls", "gene"):
            raise ValueError(f"emb_mode must be 'cell', 'cls' or 'gene', got {self.emb_mode!r}.")
        if self.batch_size is not None and int(self.batch_size) < 1:
            raise ValueError("batch_size must be >= 1 (or None for automatic).")
