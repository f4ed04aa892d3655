"""``InSilicoPerturberStats``: the reference's statistics class, translated onto
:mod:`geneformer.perturb` (``perturb._stats_run`` describes the modes and the differences from the
reference)."""

from __future__ import annotations

import os

import pandas as pd

from ..perturb import RAW_SUFFIX, perturbation_stats, stats_spec

__all__ = ["InSilicoPerturberStats"]


class InSilicoPerturberStats:
    """Statistics of in silico perturbation results, with the reference's arguments and outputs.

    Parameters follow the reference: ``mode`` (one of ``STATS_MODES``), ``genes_perturbed``
    ("all" or a list of Ensembl IDs perturbed together), ``combos`` (0 or 1; 1 needs
    ``anchor_gene``), ``anchor_gene`` (Ensembl ID; ignored with cell states),
    ``cell_states_to_model``, ``pickle_suffix``, ``model_version`` ("V1" | "V2"),
    ``token_dictionary_file`` / ``gene_name_id_dictionary_file`` (override the version's files).
    """

    def __init__(
        self,
        mode: str = "mixture_model",
        genes_perturbed: str | list[str] = "all",
        combos: int = 0,
        anchor_gene: str | None = None,
        cell_states_to_model: dict | None = None,
        pickle_suffix: str = RAW_SUFFIX,
        model_version: str = "V2",
        token_dictionary_file: str | os.PathLike | None = None,
        gene_name_id_dictionary_file: str | os.PathLike | None = None,
    ) -> None:
        self._spec = stats_spec(
            mode, genes_perturbed, combos=combos, anchor_gene=anchor_gene, cell_states_to_model=cell_states_to_model,
            pickle_suffix=pickle_suffix, vocab=model_version, token_dictionary_file=token_dictionary_file,
            gene_name_id_file=gene_name_id_dictionary_file,
        )
        spec = self._spec
        self.mode = mode
        self.genes_perturbed = list(spec.genes) if spec.tokens is not None else "all"
        self.combos = combos
        self.anchor_gene = spec.anchor_gene
        self.cell_states_to_model = spec.states
        self.pickle_suffix = pickle_suffix
        self.model_version = model_version
        self.token_dictionary_file = token_dictionary_file
        self.gene_name_id_dictionary_file = gene_name_id_dictionary_file
        self.anchor_token = spec.anchor_token
        self._names = spec.names
        self.tokens_perturbed = list(spec.tokens) if spec.tokens is not None else "all"

    def get_stats(
        self,
        input_data_directory: str | os.PathLike,
        null_dist_data_directory: str | os.PathLike | None,
        output_directory: str | os.PathLike,
        output_prefix: str,
        null_dict_list: list[dict] | None = None,
    ) -> pd.DataFrame:
        """Compute the statistics of ``mode`` and write ``{output_directory}/{output_prefix}.csv``."""
        return perturbation_stats(input_data_directory, output_directory, output_prefix, self._spec,
                                  null_dir=null_dist_data_directory, null_dicts=null_dict_list)
