"""In silico perturbation: pure token-sequence edits, raw-result files and statistics.

- :mod:`geneformer.perturb.transforms` — delete / overexpress / inhibit / activate on token arrays,
  with alignment indices between perturbed and original positions (no model).
- :mod:`geneformer.perturb.results` — the reference's ``*_raw.pickle`` dictionaries and a tidy
  columnar (pandas / parquet) form.
- :mod:`geneformer.perturb.stats` — :class:`InSilicoPerturberStats`.
- :mod:`geneformer.perturb.perturber` — :class:`InSilicoPerturber` (reference API) on the batched
  core in :mod:`.engine` (forwards and cosines), :mod:`.selection` (which cells) and :mod:`.store`
  (resumable parts, tidy parquet, raw pickles); :func:`perturb` (:mod:`.run`) is the short API.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "InSilicoPerturber": "geneformer.perturb.perturber",
    "InSilicoPerturberStats": "geneformer.perturb.stats",
    "Perturbed": "geneformer.perturb.transforms",
    "PerturbationBatch": "geneformer.perturb.transforms",
    "delete": "geneformer.perturb.transforms",
    "overexpress": "geneformer.perturb.transforms",
    "inhibit": "geneformer.perturb.transforms",
    "activate": "geneformer.perturb.transforms",
    "perturb": "geneformer.perturb.run",
    "perturb_sequence": "geneformer.perturb.transforms",
    "read_results": "geneformer.perturb.run",
    "annotate_genes": "geneformer.perturb.run",
    "perturb_all": "geneformer.perturb.transforms",
    "read_raw_dir": "geneformer.perturb.results",
    "raw_to_tidy": "geneformer.perturb.results",
    "tidy_to_raw": "geneformer.perturb.results",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'geneformer.perturb' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
