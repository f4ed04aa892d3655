"""Sharded runs: cut a long job into ``--shard I/N`` slices anywhere, then merge the parts.

See :mod:`geneformer._utils._shards` for how slices are chosen and where parts are kept.
"""

from .._utils import Shard, ShardError, balanced_bounds, parse_shard
from ._dask import run_with_dask
from ._merge import MERGERS, merge

__all__ = ["MERGERS", "Shard", "ShardError", "balanced_bounds", "merge", "parse_shard", "run_with_dask"]
