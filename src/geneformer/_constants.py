"""Constants shared by every stage: special tokens, published vocabularies, normalisation, modes.

The ``Literal`` aliases name every mode the package accepts; the tuples beside them are the same
choices at run time (for validation and ``--help`` texts).
"""

from __future__ import annotations

from typing import Literal, get_args

#: The Hugging Face hub repository of the published models and dictionaries.
HUB_REPO = "ctheodoris/Geneformer"
#: The hub's default address (``HF_ENDPOINT`` overrides it) and how long one reachability probe may take.
HUB_ENDPOINT = "https://huggingface.co"
HUB_PROBE_TIMEOUT_S = 3.0

# ---- tokens ------------------------------------------------------------------------------------
PAD, MASK, CLS, EOS = "<pad>", "<mask>", "<cls>", "<eos>"
SPECIAL_TOKENS = (PAD, MASK, CLS, EOS)
#: Token ids of ``<pad>``/``<mask>``/``<cls>``/``<eos>`` in the published V2 dictionary (V1 has no <cls>/<eos>).
V2_PAD_ID, V2_MASK_ID, V2_CLS_ID, V2_EOS_ID = 0, 1, 2, 3
#: Label of positions a loss ignores (PyTorch's cross-entropy default).
IGNORE_INDEX = -100

# ---- vocabularies ------------------------------------------------------------------------------
ModelVersion = Literal["V1", "V2"]
VERSIONS: tuple[str, ...] = get_args(ModelVersion)
#: Number of tokens (special tokens included) of each published vocabulary.
VOCAB_SIZES = {"V1": 25426, "V2": 20275}
#: Model input size of each version's models.
MODEL_INPUT_SIZE = {"V1": 2048, "V2": 4096}
#: Whether each version's cells are wrapped in ``<cls>`` ... ``<eos>``.
USES_SPECIAL_TOKENS = {"V1": False, "V2": True}

#: Counts are normalised to this many per cell before dividing by the gene median.
TARGET_SUM = 10_000.0

# ---- datasets ----------------------------------------------------------------------------------
#: Columns that identify cells, in order of preference (matched case-insensitively).
CELL_ID_COLUMNS = ("unique_cell_id", "cell_id", "cell_ids", "cell_barcode", "barcode", "barcodes",
                   "obs_names", "cell_name")
#: Column carrying an AnnData's obs position through tokenization, to write results back in place.
ROW_COLUMN = "_gf_row"
#: Columns the tokenizer writes itself: a carried cell attribute may not take one of these names.
RESERVED_COLUMNS = ("input_ids", "length", "counts", ROW_COLUMN)

# ---- modes -------------------------------------------------------------------------------------
EmbMode = Literal["cell", "cls", "gene"]
EMB_MODES: tuple[str, ...] = get_args(EmbMode)
CellEmbMode = Literal["cell", "cls"]
CELL_EMB_MODES: tuple[str, ...] = get_args(CellEmbMode)
PerturbEmbMode = Literal["cls", "cell", "cls_and_gene", "cell_and_gene"]
PERTURB_EMB_MODES: tuple[str, ...] = get_args(PerturbEmbMode)
PerturbType = Literal["delete", "overexpress", "inhibit", "activate"]
PERTURB_TYPES: tuple[str, ...] = get_args(PerturbType)
SummaryStat = Literal["mean", "median", "exact_mean", "exact_median"]
SUMMARY_STATS: tuple = (None, *get_args(SummaryStat))
StatsMode = Literal["goal_state_shift", "vs_null", "mixture_model", "aggregate_data", "aggregate_gene_shifts"]
STATS_MODES: tuple[str, ...] = get_args(StatsMode)
ModelKind = Literal["pretrained", "cell_classifier", "gene_classifier"]
MODEL_KINDS: tuple[str, ...] = get_args(ModelKind)
ClassifierKind = Literal["cell", "gene"]
DtypeName = Literal["fp32", "bf16", "fp16"]

# ---- tokenization and vocabularies -------------------------------------------------------------
#: Input formats of the readers (``anndata``: an in-memory AnnData; ``soma``: a TileDB-SOMA experiment).
FileFormat = Literal["h5ad", "zarr", "anndata", "loom", "10x_h5", "10x_mtx", "soma"]
FILE_FORMATS: tuple[str, ...] = get_args(FileFormat)
#: How a vocabulary is written: JSON (safe) or published-style pickles.
VocabFormat = Literal["json", "pickle"]
VOCAB_FORMATS: tuple[str, ...] = get_args(VocabFormat)
#: State of a gene-median sketch: every value kept, or a t-digest per gene.
DigestMode = Literal["exact", "digest"]

# ---- fine-tuning -------------------------------------------------------------------------------
#: Built-in heads of the model-card fine-tuning model ("custom": any ``nn.Module``).
CellHeadKind = Literal["classification", "regression"]
CELL_HEAD_KINDS: tuple[str, ...] = get_args(CellHeadKind)
#: Cell pooling of the classifier ``finetune`` trains: "first" (the reference's BERT pooler on the
#: first position), "mean" (mean of the last layer's states of the cell's genes), "cls" (the
#: ``<cls>`` state itself, V2 models).
ClassifierHead = Literal["first", "mean", "cls"]
CLASSIFIER_HEADS: tuple[str, ...] = get_args(ClassifierHead)
