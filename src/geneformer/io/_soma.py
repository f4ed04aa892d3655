"""TileDB-SOMA experiments (the CELLxGENE Census format), read with ``tiledbsoma`` in row chunks.

An ``Experiment`` holds an ``obs`` cell table and measurements (``RNA``), each with a ``var`` gene
table and ``X`` layers (``raw``: counts) as sparse arrays addressed by ``soma_joinid``. The reader
queries the cells an ``obs`` value filter selects, in ``soma_joinid`` order, and reads ``X`` for a
chunk of them at a time, so memory holds one chunk (plus 8 bytes per selected cell for their ids).
``cellxgene_census.open_soma()["census_data"]["homo_sapiens"]`` is such an experiment. The
optional extra ``geneformer[soma]`` installs ``tiledbsoma``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._utils import InputFileError
from ._base import CellReader

#: What the Census calls things.
DEFAULT_MEASUREMENT = "RNA"
DEFAULT_LAYER = "raw"
DEFAULT_VAR_ID_COLUMN = "feature_id"
_JOINID = "soma_joinid"
_OBS_ID_COLUMNS = ("obs_id",)  # where tiledbsoma.io.from_anndata keeps the AnnData obs index


def is_soma_uri(path: str | os.PathLike) -> bool:
    """A remote URI (``s3://``, ``tiledb://``, ...) or a local folder that is a TileDB group."""
    text = str(path)
    if "://" in text and not text.startswith("file://"):
        return True
    local = text[len("file://"):] if text.startswith("file://") else text
    return os.path.isdir(local) and os.path.exists(os.path.join(local, "__tiledb_group.tdb"))


def _tiledbsoma():
    try:
        import tiledbsoma
    except ImportError as exc:
        raise InputFileError("Reading a SOMA experiment needs tiledbsoma: pip install 'geneformer[soma]'.") from exc
    return tiledbsoma


class SomaReader(CellReader):
    """Streams the counts of a SOMA ``Experiment``'s cells (optionally filtered) in row chunks.

    Args:
        uri: the experiment (a local folder or a remote URI), or an open ``tiledbsoma.Experiment``.
        layer: the ``X`` layer of counts (None: ``raw``).
        measurement: the measurement (``RNA``).
        value_filter: an ``obs`` value filter, e.g. ``"tissue_general == 'blood'"`` (None: every cell).
        var_id_column: the ``var`` column of Ensembl IDs, used as the gene index (``feature_id``).
    """

    format = "soma"

    def __init__(self, uri: Any, layer: str | None = None, measurement: str = DEFAULT_MEASUREMENT,
                 value_filter: str | None = None, var_id_column: str = DEFAULT_VAR_ID_COLUMN):
        soma = _tiledbsoma()
        self.layer = layer or DEFAULT_LAYER
        self.measurement, self.value_filter, self.var_id_column = measurement, value_filter, var_id_column
        self._query = None
        if isinstance(uri, soma.Experiment):
            self.path, self._file, self._owned = str(uri.uri), uri, False
        else:
            self.path, self._owned = str(uri), True
            try:
                self._file = soma.Experiment.open(self.path)
            except Exception as exc:  # tiledbsoma raises its own error types for a missing or foreign store
                raise InputFileError(f"Could not open the SOMA experiment {self.path}: {exc}") from exc
        try:
            self._init_layout(soma)
        except BaseException:
            self.close()
            raise

    def _init_layout(self, soma) -> None:
        exp = self._file
        if self.measurement not in exp.ms:
            raise InputFileError(f"{self.describe()} has no measurement {self.measurement!r}; "
                                 f"measurements: {sorted(exp.ms.keys())}.")
        ms = exp.ms[self.measurement]
        if self.layer not in ms.X:
            raise InputFileError(f"{self.describe()}: measurement {self.measurement!r} has no X layer {self.layer!r}; "
                                 f"layers: {sorted(ms.X.keys())}.")
        self._X = ms.X[self.layer]
        obs_query = soma.AxisQuery(value_filter=self.value_filter) if self.value_filter else soma.AxisQuery()
        try:
            self._query = exp.axis_query(self.measurement, obs_query=obs_query)
            self._joinids = np.sort(self._query.obs_joinids().to_numpy())
        except Exception as exc:  # a bad filter is reported by TileDB's parser
            raise InputFileError(f"{self.describe()}: could not select cells with value_filter="
                                 f"{self.value_filter!r}: {exc}") from exc
        self._n = len(self._joinids)
        var = ms.var.read().concat().to_pandas().sort_values(_JOINID, kind="stable")
        if self.var_id_column not in var.columns:
            raise InputFileError(f"{self.describe()}: var has no column {self.var_id_column!r} of Ensembl IDs; "
                                 f"columns: {[c for c in var.columns if c != _JOINID]} (set var_id_column).")
        var_joinids = var[_JOINID].to_numpy()
        self._var_pos = np.full(int(var_joinids.max()) + 1 if len(var_joinids) else 0, -1, dtype=np.int64)
        self._var_pos[var_joinids] = np.arange(len(var_joinids))
        index = pd.Index(var[self.var_id_column].astype(str).to_numpy())
        self._var = var.drop(columns=[_JOINID]).set_index(index)

    # ---- CellReader ---------------------------------------------------------------------------
    @property
    def obs_columns(self) -> list[str]:
        return [c for c in self._file.obs.schema.names if c != _JOINID]

    def read_obs(self, columns: list[str] | None = None) -> pd.DataFrame:
        return self.read_obs_rows(self.obs_columns if columns is None else list(columns), 0, self._n)

    def read_obs_rows(self, columns: list[str], start: int, stop: int) -> pd.DataFrame:
        cols = list(columns)
        missing = [c for c in cols if c not in self.obs_columns]
        if missing:
            raise InputFileError(f"{self.describe()} has no obs column(s) {missing}; columns: {self.obs_columns}.")
        id_col = next((c for c in _OBS_ID_COLUMNS if c in self.obs_columns), None)
        wanted = list(dict.fromkeys([_JOINID, *cols, *([id_col] if id_col else [])]))
        if (start, stop) == (0, self._n):
            table = self._query.obs(column_names=wanted)
        else:  # a shard reads the cell table of its own cells only
            table = self._file.obs.read(coords=(self._joinids[start:stop],), column_names=wanted)
        obs = table.concat().to_pandas().sort_values(_JOINID, kind="stable")
        index = obs[id_col] if id_col else obs[_JOINID]
        out = obs[cols].copy()
        out.index = pd.Index(np.asarray(index, dtype=object)).astype(str)
        return out

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        ids = self._joinids[start:stop]
        n_genes = len(self._var)
        if not len(ids):
            return sp.csr_matrix((0, n_genes), dtype=np.float32)
        # a run of consecutive cells is one range read (SOMA slices include their end)
        run = ids[-1] - ids[0] == len(ids) - 1
        coords = slice(int(ids[0]), int(ids[-1])) if run else ids
        try:
            table = self._X.read(coords=(coords,)).tables().concat()
        except Exception as exc:
            raise InputFileError(f"Could not read cells {start}:{stop} of {self.describe()}: {exc}") from exc
        dim0 = table["soma_dim_0"].to_numpy()
        rows = dim0 - ids[0] if run else np.searchsorted(ids, dim0)
        cols = self._var_pos[table["soma_dim_1"].to_numpy()]
        data = table["soma_data"].to_numpy()
        # COO to CSR sorts each row's columns, as the other readers give them
        return sp.csr_matrix((data, (rows, cols)), shape=(len(ids), n_genes))

    def close(self) -> None:
        query, self._query = self._query, None
        if query is not None:
            query.close()
        if self._owned:
            super().close()
        else:
            self._file = None

    def describe(self) -> str:
        return f"SOMA experiment {self.path}"
