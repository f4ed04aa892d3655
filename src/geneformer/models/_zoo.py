"""The model zoo: every published Geneformer checkpoint, under its seed name and its current name.

Each entry records where the weights live on the Hugging Face hub (``ctheodoris/Geneformer`` plus a
subfolder), which gene vocabulary the model was trained with, its input size, whether its inputs
carry ``<cls>``/``<eos>``, and the architecture numbers of its ``config.json``. The hub layout
changed over time: the seed names (``gf-...``) are the 2024 layout, the ``Geneformer-V*`` names the
2025 one; both are kept so that old notebooks keep resolving.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .._constants import HUB_REPO


def bert_config_kwargs(vocab_size: int, layers: int, hidden: int, heads: int, intermediate: int,
                       input_size: int, dropout: float, pad_token_id: int = 0) -> dict:
    """``BertConfig`` keyword arguments of a Geneformer architecture: every published checkpoint is
    post-LayerNorm BERT with learned absolute positions, ReLU, ``layer_norm_eps=1e-12``; only the
    sizes differ."""
    return dict(
        vocab_size=int(vocab_size),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=input_size,
        hidden_act="relu",
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        layer_norm_eps=1e-12,
        initializer_range=0.02,
        pad_token_id=pad_token_id,
        type_vocab_size=2,
        position_embedding_type="absolute",
    )


@dataclass(frozen=True)
class ModelSpec:
    """One published checkpoint: hub location, vocabulary and architecture."""

    name: str
    subfolder: str | None
    vocab_version: str  # "V1" (Genecorpus-30M, 25,426 tokens) or "V2" (gc104M, 20,275 tokens)
    input_size: int  # max_position_embeddings
    special_tokens: bool  # inputs wrapped in <cls> ... <eos>
    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    dropout: float
    description: str
    repo: str = HUB_REPO
    revision: str | None = None  # hub commit holding this layout (None: the default branch)
    aliases: tuple[str, ...] = field(default_factory=tuple)
    legacy: bool = False  # a 2024 checkpoint (gf-* seed name), see LEGACY_NOTE

    @property
    def n_params(self) -> int:
        """Approximate parameter count of the encoder plus embeddings (MLM head tied)."""
        h, i, L = self.hidden_size, self.intermediate_size, self.num_layers
        emb = (self.vocab_size + self.input_size + 2) * h + 2 * h
        layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
        head = h * h + h + 2 * h + self.vocab_size
        return emb + L * layer + head

    def to_dict(self) -> dict:
        d = asdict(self)
        d["aliases"] = list(self.aliases)
        d["n_params"] = self.n_params
        return d

    def bert_config_kwargs(self) -> dict:
        """Keyword arguments for ``transformers.BertConfig`` reproducing this architecture."""
        return bert_config_kwargs(self.vocab_size, self.num_layers, self.hidden_size, self.num_heads,
                                  self.intermediate_size, self.input_size, self.dropout)


# The 2024 hub layout (the gf-* seed names) was replaced on the hub's default branch in 2025. No
# revision is pinned for those models: a pin must be a commit of the hub repository itself, which
# cannot be checked offline, and a wrong one fails every download. ``load_model(name, revision=...)``
# takes a hub commit that still has them; the load error says so.
LEGACY_NOTE = ("a 2024 model that may no longer be on the hub repository's default branch: pass "
               "revision=<a commit of the hub repository that has it>, or download it and load the folder")


def _v1(name, subfolder, layers, hidden, heads, inter, desc, aliases=(), legacy=False):
    return ModelSpec(name, subfolder, "V1", 2048, False, layers, hidden, heads, inter, 25426, 0.02, desc,
                     aliases=tuple(aliases), legacy=legacy)


def _v2(name, subfolder, layers, hidden, heads, inter, dropout, desc, aliases=(), legacy=False):
    return ModelSpec(name, subfolder, "V2", 4096, True, layers, hidden, heads, inter, 20275, dropout, desc,
                     aliases=tuple(aliases), legacy=legacy)


_SPECS: list[ModelSpec] = [
    _v1("Geneformer-V1-10M", "Geneformer-V1-10M", 6, 256, 4, 512,
        "Original 2021 model, pretrained on Genecorpus-30M (V1 vocabulary, 2,048 genes per cell).",
        aliases=("gf-6L-30M-i2048", "geneformer-6L-30M")),
    _v1("gf-12L-30M-i2048", "gf-12L-30M-i2048", 12, 512, 8, 1024,
        "12-layer model pretrained on Genecorpus-30M (V1 vocabulary).", aliases=("geneformer-12L-30M",), legacy=True),
    # In the 2024 hub layout this model was the repository root (config.json at the top level).
    _v2("gf-12L-95M-i4096", None, 12, 512, 8, 1024, 0.02,
        "12-layer model pretrained on ~95M cells (V2 vocabulary, 4,096 genes with <cls>/<eos>).", legacy=True),
    # Architecture of the 20-layer model as published in 2024 (not in ../shared; checked against the
    # released config.json: 20 layers, hidden 896, 14 heads, intermediate 1792, dropout 0.02).
    _v2("gf-20L-95M-i4096", "gf-20L-95M-i4096", 20, 896, 14, 1792, 0.02,
        "20-layer model pretrained on ~95M cells (V2 vocabulary).", legacy=True),
    _v2("gf-12L-95M-i4096_CLcancer", "gf-12L-95M-i4096_CLcancer", 12, 512, 8, 1024, 0.02,
        "gf-12L-95M-i4096 continually pretrained on ~14M cancer cells.", aliases=("gf-12L-95M-i4096-CLcancer",), legacy=True),
    _v2("Geneformer-V2-104M", "Geneformer-V2-104M", 12, 768, 12, 3072, 0.1,
        "12-layer model pretrained on ~104M non-cancer cells (V2 vocabulary)."),
    _v2("Geneformer-V2-316M", "Geneformer-V2-316M", 18, 1152, 18, 4608, 0.1,
        "18-layer model pretrained on ~104M cells; the repository's default model."),
    _v2("Geneformer-V2-104M_CLcancer", "Geneformer-V2-104M_CLcancer", 12, 768, 12, 3072, 0.1,
        "Geneformer-V2-104M continually pretrained on ~14M cancer cells.",
        aliases=("Geneformer-V2-104M-CLcancer",)),
]

#: name or alias -> ModelSpec; every published model under its seed and its current name.
MODEL_ZOO: dict[str, ModelSpec] = {}
for _spec in _SPECS:
    MODEL_ZOO[_spec.name] = _spec
    for _alias in _spec.aliases:
        MODEL_ZOO[_alias] = _spec

#: The model a bare ``Geneformer()`` uses.
DEFAULT_MODEL = "Geneformer-V2-316M"


def get_spec(name: str) -> ModelSpec:
    """Look up a zoo entry by name or alias (case-insensitive), with a helpful error."""
    if name in MODEL_ZOO:
        return MODEL_ZOO[name]
    lowered = {k.lower(): v for k, v in MODEL_ZOO.items()}
    if name.lower() in lowered:
        return lowered[name.lower()]
    raise KeyError(
        f"Unknown model {name!r}. Known models: {', '.join(sorted(MODEL_ZOO))}. "
        "Pass a local folder holding config.json and model weights to load any other checkpoint."
    )


def list_models() -> list[ModelSpec]:
    """The distinct published models, each once (aliases folded)."""
    return list(_SPECS)


def vocab_version_for_size(vocab_size: int) -> str | None:
    """Which published vocabulary a model's ``vocab_size`` belongs to (None for custom sizes)."""
    return {25426: "V1", 20275: "V2"}.get(int(vocab_size))
