"""In silico perturbation: pure token-sequence edits (delete, overexpress, inhibit, activate), the
resolved run description, the batched perturbation engine, resumable runs, the reference's
raw-result files and their tidy form, and the statistics over them."""

from ._api import annotate_genes, perturb, read_results
from ._results import RAW_SUFFIX, RawShifts, load_raw, raw_to_tidy, read_raw_dir, save_raw, tidy_to_raw
from ._run import merge_perturb_shards, run_perturbation
from ._spec import PerturbSpec, perturbation_spec
from ._stats import bh_fdr, ranksums_per_group, ranksums_vs_pool
from ._stats_modes import (
    GeneNames,
    aggregate_data,
    aggregate_gene_shifts,
    gene_names,
    goal_state_shift,
    mixture_model,
    mixture_model_combos,
    vs_null,
)
from ._stats_run import StatsSpec, compute_stats, load_null_dicts, perturbation_stats, read_shifts, stats_spec
from ._transforms import (
    PerturbationBatch,
    Perturbed,
    activate,
    delete,
    inhibit,
    overexpress,
    perturb_all,
    perturb_sequence,
)

__all__ = [
    "RAW_SUFFIX", "GeneNames", "PerturbSpec", "PerturbationBatch", "Perturbed", "RawShifts", "StatsSpec", "activate",
    "aggregate_data", "aggregate_gene_shifts", "annotate_genes", "bh_fdr", "compute_stats", "delete", "gene_names",
    "goal_state_shift", "inhibit", "load_null_dicts", "load_raw", "merge_perturb_shards", "mixture_model", "mixture_model_combos",
    "overexpress", "perturb", "perturb_all", "perturb_sequence", "perturbation_spec", "perturbation_stats",
    "ranksums_per_group", "ranksums_vs_pool", "raw_to_tidy", "read_raw_dir", "read_results", "read_shifts",
    "run_perturbation", "save_raw", "stats_spec", "tidy_to_raw", "vs_null",
]
