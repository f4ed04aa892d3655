"""The reference's ``TranscriptomeTokenizer``: its arguments translated into the tokenization core
(:mod:`geneformer.tokenization`), which does all the work."""

from __future__ import annotations

import logging
import os
from typing import Iterable, Sequence

from .._constants import MODEL_INPUT_SIZE, USES_SPECIAL_TOKENS, VERSIONS, FileFormat
from .._utils import check_model_version, check_positive_int
from ..tokenization import (
    FileReport,
    dataset_path,
    find_input_files,
    iter_batches,
    tokenize_in_memory,
    tokenize_to_disk,
    tokenizer_settings,
)
from ..vocab import GeneVocab

logger = logging.getLogger(__name__)

#: (model_input_size, special_token) of each version; other values with model_version="V1" are overridden
_VERSION_DEFAULTS = {(MODEL_INPUT_SIZE[v], USES_SPECIAL_TOKENS[v]) for v in VERSIONS}


class TranscriptomeTokenizer:
    """Rank value encoding of single-cell files into Hugging Face datasets (reference-compatible).

    Arguments follow the reference ``TranscriptomeTokenizer``; ``model_version="V1"`` selects the
    V1 dictionaries, 2,048 input size and no special tokens (overriding the dictionary files, as the
    reference does). Extra keyword arguments: ``gene_id_column``, ``gene_symbol_column``, ``layer``,
    ``vocab`` (a :class:`GeneVocab`, overriding the dictionary files), ``symbol_fallback``. Genes are
    named by the package's one rule (:func:`geneformer.vocab.match_genes`) with the reference's choice
    ``symbol_fallback=False``: Ensembl IDs alone, so that the output equals the reference's; the log
    says how many genes with an empty ID ``symbol_fallback=True`` would add.
    """

    def __init__(
        self,
        custom_attr_name_dict: dict[str, str] | None = None,
        nproc: int = 1,
        chunk_size: int = 512,
        model_input_size: int = MODEL_INPUT_SIZE["V2"],
        special_token: bool = True,
        collapse_gene_ids: bool = True,
        use_h5ad_index: bool = False,
        keep_counts: bool = False,
        model_version: str = "V2",
        gene_median_file: str | os.PathLike | None = None,
        token_dictionary_file: str | os.PathLike | None = None,
        gene_mapping_file: str | os.PathLike | None = None,
        *,
        vocab: GeneVocab | None = None,
        gene_id_column: str | None = None,
        gene_symbol_column: str | None = None,
        layer: str | None = None,
        symbol_fallback: bool = False,
    ):
        model_version = check_model_version(model_version)
        if model_version == "V1":
            if (model_input_size, special_token) not in _VERSION_DEFAULTS:
                logger.info("model_version='V1': using model_input_size=2048 and no special tokens.")
            model_input_size, special_token = MODEL_INPUT_SIZE["V1"], USES_SPECIAL_TOKENS["V1"]
            if any(f is not None for f in (gene_median_file, token_dictionary_file, gene_mapping_file)):
                logger.warning("model_version='V1' uses the V1 dictionaries; the dictionary files given are ignored.")
            gene_median_file = token_dictionary_file = gene_mapping_file = None
        if vocab is None:
            vocab = GeneVocab.load(model_version, token_dictionary_file=token_dictionary_file,
                                   gene_median_file=gene_median_file, gene_mapping_file=gene_mapping_file)
        self.settings = tokenizer_settings(
            vocab, model_input_size=model_input_size, special_token=special_token,
            custom_attr_name_dict=custom_attr_name_dict, chunk_size=chunk_size, gene_id_column=gene_id_column,
            gene_symbol_column=gene_symbol_column, use_h5ad_index=use_h5ad_index, layer=layer,
            keep_counts=keep_counts, collapse_gene_ids=collapse_gene_ids, symbol_fallback=symbol_fallback,
        )
        self.nproc = check_positive_int("nproc", nproc)
        self.custom_attr_name_dict = self.settings.attr_map
        self.chunk_size = self.settings.chunk_size
        self.model_input_size = self.settings.model_input_size
        self.special_token = self.settings.special_token
        self.collapse_gene_ids = self.settings.collapse_gene_ids
        self.use_h5ad_index = self.settings.use_h5ad_index
        self.keep_counts = self.settings.keep_counts
        self.model_version = model_version
        self.vocab = vocab
        self.gene_token_dict = vocab.token_dict
        self.gene_median_dict = vocab.gene_medians
        self.reports: list[FileReport] = []

    # ---- reference entry point ----------------------------------------------------------------
    def tokenize_data(
        self,
        data_directory: str | os.PathLike,
        output_directory: str | os.PathLike,
        output_prefix: str,
        file_format: str = "loom",
        input_identifier: str = "",
        use_generator: bool = False,
        overwrite: bool = False,
    ):
        """Tokenize every ``*.{file_format}`` file of ``data_directory`` into
        ``{output_directory}/{output_prefix}.dataset``. ``use_generator`` is accepted for compatibility."""
        del use_generator  # batches are always streamed
        files = find_input_files(data_directory, file_format, input_identifier)
        return self.tokenize_files(files, dataset_path(output_directory, output_prefix), file_format=file_format,
                                   overwrite=overwrite)

    # ---- our entry points ---------------------------------------------------------------------
    def tokenize_files(self, inputs: Sequence, output_path: str | os.PathLike, file_format: FileFormat | None = None,
                       overwrite: bool = False, progress: bool | None = None):
        """Tokenize files (or AnnData objects) in order into one dataset saved at ``output_path``."""
        self.reports = []
        return tokenize_to_disk(inputs, output_path, self.settings, file_format=file_format, overwrite=overwrite,
                                nproc=self.nproc, progress=progress, reports=self.reports)

    def tokenize_anndata_in_memory(self, adata, progress: bool = False):
        """Tokenize an in-memory AnnData into an in-memory ``datasets.Dataset``."""
        self.reports = []
        return tokenize_in_memory([adata], self.settings, nproc=self.nproc, progress=progress, reports=self.reports)

    def iter_batches(self, inputs: Iterable, file_format: FileFormat | None = None, progress: bool | None = None):
        """Yield ``(record_batch, source)`` for every chunk of every input, in input order."""
        self.reports = []
        yield from iter_batches(inputs, self.settings, file_format=file_format, nproc=self.nproc, progress=progress,
                                reports=self.reports)
