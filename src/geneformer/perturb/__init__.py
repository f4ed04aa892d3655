"""In silico perturbation: pure token-sequence edits (delete, overexpress, inhibit, activate), the
resolved run description, the batched perturbation engine, resumable runs, the reference's
raw-result files and their tidy form, and the statistics over them."""

from ._api import annotate_genes, perturb, read_results
from ._results import RAW_SUFFIX, RawShifts, load_raw, raw_to_tidy, read_raw_dir, save_raw, tidy_to_raw
from ._run import run_perturbation
from ._spec import PerturbSpec, perturbation_spec
from ._stats import bh_fdr, ranksums_per_group, ranksums_vs_pool
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
    "RAW_SUFFIX", "PerturbSpec", "PerturbationBatch", "Perturbed", "RawShifts", "activate", "annotate_genes",
    "bh_fdr", "delete", "inhibit", "load_raw", "overexpress", "perturb", "perturb_all", "perturb_sequence",
    "perturbation_spec", "ranksums_per_group", "ranksums_vs_pool", "raw_to_tidy", "read_raw_dir", "read_results",
    "run_perturbation", "save_raw", "tidy_to_raw",
]
