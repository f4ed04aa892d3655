"""High-level API: ``GeneformerConfig`` + ``Geneformer`` (model-card style) and our short API.

Model-card (Helical-style) usage::

    config = GeneformerConfig(model_name="gf-12L-95M-i4096", batch_size=10)
    model = Geneformer(config)
    dataset = model.process_data(adata)            # AnnData -> tokenized datasets.Dataset
    embeddings = model.get_embeddings(dataset)     # numpy array, one row per cell

Short API::

    gf = Geneformer.from_pretrained("Geneformer-V2-104M")   # or a local model folder
    gf.embed(adata)                                         # writes adata.obsm["X_geneformer"]
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .._constants import ROW_COLUMN
from .._utils import save_dataset
from ..embeddings import OBSM_KEY, add_cell_embeddings, add_gene_embeddings
from ..models import MODEL_ZOO, load_model, model_input_size, model_vocab_version
from ..tokenization import anndata_gene_ids, match_and_tokenize
from ._config import GeneformerConfig

logger = logging.getLogger(__name__)


class Geneformer:
    """A Geneformer model with tokenization and embedding in a few calls."""

    def __init__(self, config: GeneformerConfig | None = None, *, model: Any = None):
        self.config = config or GeneformerConfig()
        cfg = self.config
        self.device = cfg.resolved_device()
        self.model = model if model is not None else load_model(
            cfg.model_name, kind="pretrained", vocab=cfg.vocab, device=self.device, dtype=None
        )
        if model is not None and cfg.vocab is not None:
            from ..models import check_vocab_matches

            check_vocab_matches(self.model, cfg.vocab, source=f"Model {cfg.model_name}")
        self.vocab_version = model_vocab_version(self.model)
        self._vocab = None
        self.gene_match: tuple[int, int] | None = None

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **config_kwargs: Any) -> "Geneformer":
        """Load a zoo model or a local folder; keyword arguments set :class:`GeneformerConfig` fields."""
        return cls(GeneformerConfig(model_name=str(name_or_path), **config_kwargs))

    # ---- vocabulary ---------------------------------------------------------------------------
    @property
    def vocab(self):
        """The gene vocabulary the model was trained with."""
        if self._vocab is None:
            from ..vocab import as_vocab

            source = self.config.vocab or self.vocab_version
            if source is None:
                raise ValueError(
                    f"Model {self.config.model_name} has a custom vocabulary size ({self.model.config.vocab_size}); "
                    "pass GeneformerConfig(vocab=<vocabulary folder>)."
                )
            self._vocab = as_vocab(source)
        return self._vocab

    # ---- tokenization -------------------------------------------------------------------------
    def tokenize(self, adata: Any, gene_names: str | None = None, *, layer: str | None = None,
                 custom_attr_name_dict: dict | None = None, **kwargs: Any) -> Any:
        """Rank-value encode an AnnData for this model (its vocabulary, input size and special tokens).

        Genes are named by the package's one rule: the Ensembl ID where present, the symbol for the rest
        (:func:`geneformer.vocab.match_genes`). ``gene_names`` names the var column holding the Ensembl IDs
        or the symbols ("index" for var_names; default: ``var['ensembl_id']``, then a symbol column or the
        index). Returns a datasets.Dataset with ``input_ids``, ``length``, the carried obs columns and ``_gf_row`` (the obs position); how many
        genes matched the vocabulary is kept in ``gene_match``.
        """
        dataset, self.gene_match = match_and_tokenize(
            adata, self.vocab, gene_names=gene_names,
            custom_attr_name_dict=custom_attr_name_dict or self.config.custom_attr_name_dict,
            model_input_size=self.config.model_input_size or model_input_size(self.model),
            special_token=self.config.special_token, layer=layer, nproc=self.config.nproc, **kwargs,
        )
        return dataset

    def process_data(self, adata: Any, gene_names: str = "index", output_path: str | os.PathLike | None = None,
                     use_raw_counts: bool = True):
        """Tokenize an in-memory AnnData (gene symbols or Ensembl IDs in ``gene_names``) into a Dataset."""
        if use_raw_counts:
            _warn_if_not_counts(adata)
        dataset = self.tokenize(adata, gene_names=gene_names)
        if output_path is not None:
            save_dataset(dataset, output_path)
        return dataset

    # ---- embeddings ---------------------------------------------------------------------------
    def _dataset(self, data: Any):
        import anndata as ad

        if isinstance(data, ad.AnnData):
            return self.tokenize(data), data
        if isinstance(data, (str, os.PathLike)):
            p = Path(data)
            if p.suffix == ".h5ad":
                adata = ad.read_h5ad(p)
                return self.tokenize(adata), adata
            from ..data import load_tokenized

            return load_tokenized(p), None
        return data, None

    def get_embeddings(self, dataset: Any, output_attentions: bool = False):
        """Embeddings of a tokenized dataset in its row order: (N, H) array for "cell"/"cls",
        a genes × H DataFrame for "gene". With ``output_attentions`` also the last layer's attention
        weights per cell (a list of CellAttention)."""
        emb = self._embed_dataset(dataset, self.config.emb_mode, self.config.emb_layer)
        if output_attentions:
            from ..embeddings import get_attentions

            return emb, get_attentions(self.model, dataset, layers=-1, device=self.device)
        return emb

    def _embed_dataset(self, dataset: Any, mode: str, emb_layer: int, batch_size: Any = "config",
                       dtype: Any = "config"):
        from ..embeddings import cell_embeddings, gene_embeddings

        bs = self.config.batch_size if batch_size == "config" else batch_size
        amp = self.config.dtype if dtype == "config" else dtype
        vocab = self.config.vocab or self.vocab_version
        if mode == "gene":
            ge = gene_embeddings(self.model, dataset, emb_layer=emb_layer, vocab=vocab, batch_size=bs,
                                 device=self.device, amp_dtype=amp)
            return ge.to_frame(vocab, self.model)
        return cell_embeddings(self.model, dataset, mode=mode, emb_layer=emb_layer, vocab=vocab, batch_size=bs,
                               device=self.device, amp_dtype=amp)

    def embed(self, data: Any, *, mode: str | None = None, emb_layer: int | None = None, key: str = OBSM_KEY,
              batch_size: Any = "config", dtype: Any = "config", genes: bool = False, dataset: Any = None):
        """Cell embeddings of an AnnData (written to ``adata.obsm[key]``), a tokenized Dataset, or a path.

        Returns the (N, H) array in input order. For an AnnData, cells that tokenization dropped get
        NaN rows. ``genes=True`` also stores gene embeddings (``varm[key]`` and ``uns``). Pass
        ``dataset=`` to reuse an earlier ``tokenize(adata)`` result.
        """
        mode = mode or (self.config.emb_mode if self.config.emb_mode != "gene" else "cell")
        if mode not in ("cell", "cls"):
            raise ValueError("embed() gives cell embeddings: mode must be 'cell' or 'cls' (use genes=True for genes).")
        emb_layer = self.config.emb_layer if emb_layer is None else emb_layer
        if dataset is None:
            dataset, adata = self._dataset(data)
        else:
            adata = data
        embs = self._embed_dataset(dataset, mode, emb_layer, batch_size, dtype)
        if adata is not None:
            rows = None
            if ROW_COLUMN in dataset.column_names:
                rows = np.asarray(dataset[ROW_COLUMN], dtype=np.int64)
            add_cell_embeddings(adata, embs, key=key, rows=rows)
            if genes:
                gene_df = self._embed_dataset(dataset, "gene", emb_layer, batch_size, dtype)
                add_gene_embeddings(adata, gene_df, key=key, gene_ids=anndata_gene_ids(adata, self.vocab))
            if rows is not None and len(rows) < adata.n_obs:
                logger.warning("%d of %d cells had no vocabulary genes and got NaN embeddings.",
                               adata.n_obs - len(rows), adata.n_obs)
        return embs

    def finetune(self, data: Any, label: str, output_dir: str | os.PathLike, **kwargs: Any):
        """Fine-tune this model as a cell classifier of ``label`` (AnnData, tokenized Dataset or folder);
        see :func:`geneformer.train.finetune` for the options. Returns a FinetuneResult."""
        from ..train import finetune

        dataset = self.tokenize(data, custom_attr_name_dict={label: label}) if hasattr(data, "obs") else data
        return finetune(dataset, self.config.model_name, output_dir, label=label, **kwargs)

    def perturb(self, data: Any, genes: Any = "all", perturb_type: str = "delete", **kwargs: Any):
        """In silico perturbation with this model; see :func:`geneformer.perturb.perturb` (tidy DataFrame)."""
        from ..perturb import perturb

        kwargs.setdefault("device", self.device)
        kwargs.setdefault("dtype", self.config.dtype)
        kwargs.setdefault("emb_layer", self.config.emb_layer)
        return perturb(data, self.model, genes, perturb_type, model_version=self.vocab_version, **kwargs)

    def with_config(self, **changes: Any) -> "Geneformer":
        """A copy sharing the loaded model, with some configuration fields changed."""
        return Geneformer(replace(self.config, **changes), model=self.model)

    def __repr__(self) -> str:
        spec = MODEL_ZOO.get(self.config.model_name)
        return (f"Geneformer({self.config.model_name!r}, vocab={self.vocab_version}, layers="
                f"{self.model.config.num_hidden_layers}, hidden={self.model.config.hidden_size}"
                f"{', zoo' if spec else ''})")


def _warn_if_not_counts(adata: Any) -> None:
    """Warn when X does not look like raw integer counts (rank value encoding expects them)."""
    import scipy.sparse as sp

    X = adata.X
    sample = X[: min(adata.n_obs, 200)]
    vals = sample.data if sp.issparse(sample) else np.asarray(sample).ravel()
    if vals.size and (np.any(vals < 0) or not np.allclose(vals, np.round(vals))):
        logger.warning("adata.X does not look like raw counts (negative or non-integer values); Geneformer "
                       "expects raw counts.")
