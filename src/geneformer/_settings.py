"""``geneformer.settings``: package-wide defaults, overridden by any per-call argument.

::

    import geneformer as gf

    gf.settings.device = "cuda:1"        # where models run when a call does not say
    gf.settings.dtype = "bf16"           # mixed precision by default
    gf.settings.progress = False         # no progress bars
    gf.settings.dicts_dir = "~/gf_dicts" # the published dictionaries, offline
    with gf.settings.override(n_jobs=4):
        gf.tokenize_files(...)

Unset values fall back to the environment at the time they are read: ``GENEFORMER_DICTS_DIR``
(dictionary folder), ``GENEFORMER_CACHE`` (cache folder, else ``$XDG_CACHE_HOME/geneformer`` or
``~/.cache/geneformer``) and ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` (no hub downloads).
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ._utils import OptionError, limit_cpu_threads

# on first import of the package, before torch loads OpenMP where possible: waiting threads sleep
# and thread counts follow the CPUs this process may use (see geneformer._utils._device)
limit_cpu_threads()

_VERBOSITY = {"error": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}
_TRUE = {"1", "true", "yes", "on"}


class GeneformerSettings:
    """Defaults for device, precision, batching, workers, progress bars, folders and logging.

    Attributes:
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
        dtype: None or "fp32", "bf16", "fp16": the compute dtype of inference (None: bf16 on a CUDA
            GPU that supports it, else fp32).
        token_budget: padded tokens per forward batch; None chooses from free memory.
        n_jobs: worker processes for tokenization and gene-median estimation.
        progress: show progress bars.
        verbosity: "error", "warning", "info" or "debug" (the ``geneformer`` logger's level).
        cache_dir: where downloaded dictionaries are kept.
        dicts_dir: a folder holding the published dictionaries (searched before the cache and hub).
        hub_offline: never contact the Hugging Face hub.
    """

    _fields = ("device", "dtype", "token_budget", "n_jobs", "progress", "verbosity", "cache_dir", "dicts_dir",
               "hub_offline")

    def __init__(self) -> None:
        self._device = "auto"
        self._dtype: str | None = None
        self._token_budget: int | None = None
        self._n_jobs = 1
        self._progress = True
        self._verbosity = "warning"
        self._cache_dir: Path | None = None
        self._dicts_dir: Path | None = None
        self._hub_offline: bool | None = None

    # ---- compute -------------------------------------------------------------------------------
    @property
    def device(self) -> str:
        return self._device

    @device.setter
    def device(self, value: Any) -> None:
        value = "auto" if value is None else str(value)
        if value != "auto" and not (value == "cpu" or value.startswith(("cuda", "mps"))):
            raise OptionError(f"settings.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}.")
        self._device = value

    @property
    def dtype(self) -> str | None:
        return self._dtype

    @dtype.setter
    def dtype(self, value: Any) -> None:
        from ._utils import resolve_dtype

        resolve_dtype(value)  # validates
        self._dtype = None if value is None else str(value)

    @property
    def token_budget(self) -> int | None:
        return self._token_budget

    @token_budget.setter
    def token_budget(self, value: int | None) -> None:
        from ._utils import check_positive_int

        self._token_budget = check_positive_int("settings.token_budget", value, allow_none=True)

    @property
    def n_jobs(self) -> int:
        return self._n_jobs

    @n_jobs.setter
    def n_jobs(self, value: int) -> None:
        from ._utils import check_positive_int

        self._n_jobs = check_positive_int("settings.n_jobs", value)

    # ---- console -------------------------------------------------------------------------------
    @property
    def progress(self) -> bool:
        return self._progress

    @progress.setter
    def progress(self, value: bool) -> None:
        self._progress = bool(value)

    @property
    def verbosity(self) -> str:
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value: str | int) -> None:
        if isinstance(value, int):
            names = {v: k for k, v in _VERBOSITY.items()}
            if value not in names:
                raise OptionError(f"settings.verbosity must be one of {list(_VERBOSITY)}, got {value!r}.")
            value = names[value]
        value = str(value).lower()
        if value not in _VERBOSITY:
            raise OptionError(f"settings.verbosity must be one of {list(_VERBOSITY)}, got {value!r}.")
        self._verbosity = value
        logging.getLogger("geneformer").setLevel(_VERBOSITY[value])

    # ---- folders and the hub -------------------------------------------------------------------
    @property
    def cache_dir(self) -> Path:
        if self._cache_dir is not None:
            return self._cache_dir
        if os.environ.get("GENEFORMER_CACHE"):
            return Path(os.environ["GENEFORMER_CACHE"]).expanduser()
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "geneformer"

    @cache_dir.setter
    def cache_dir(self, value: str | os.PathLike | None) -> None:
        self._cache_dir = None if value is None else Path(value).expanduser()

    @property
    def dicts_dir(self) -> Path | None:
        if self._dicts_dir is not None:
            return self._dicts_dir
        env = os.environ.get("GENEFORMER_DICTS_DIR")
        return Path(env).expanduser() if env else None

    @dicts_dir.setter
    def dicts_dir(self, value: str | os.PathLike | None) -> None:
        self._dicts_dir = None if value is None else Path(value).expanduser()

    @property
    def hub_offline(self) -> bool:
        if self._hub_offline is not None:
            return self._hub_offline
        return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))

    @hub_offline.setter
    def hub_offline(self, value: bool | None) -> None:
        self._hub_offline = None if value is None else bool(value)

    # ---- helpers -------------------------------------------------------------------------------
    @contextmanager
    def override(self, **values: Any) -> Iterator["GeneformerSettings"]:
        """Change some settings inside a ``with`` block only."""
        unknown = set(values) - set(self._fields)
        if unknown:
            raise OptionError(f"Unknown setting(s) {sorted(unknown)}; settings are {list(self._fields)}.")
        before = {name: getattr(self, f"_{name}") for name in values}
        try:
            for name, value in values.items():
                setattr(self, name, value)
            yield self
        finally:
            for name, value in before.items():
                setattr(self, f"_{name}", value)
            if "verbosity" in values:
                logging.getLogger("geneformer").setLevel(_VERBOSITY[self._verbosity])

    def __repr__(self) -> str:
        body = "\n".join(f"  {name}: {getattr(self, name)!r}" for name in self._fields)
        return f"geneformer.settings:\n{body}"


settings = GeneformerSettings()
