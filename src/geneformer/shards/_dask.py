"""Running the shards of a job as a Dask task map, then merging (``pip install 'geneformer[dask]'``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from .._utils import OptionError, Shard, check_positive_int, usable_cpus
from ._merge import merge


def _run_shard(job: Callable[..., Any], index: int, count: int) -> int:
    job(shard=Shard(index, count))
    return index  # not the job's result: a dataset or sketch need not travel back


def run_with_dask(job: Callable[..., Any], n_shards: int, output: str | os.PathLike, *, client: Any = None,
                  overwrite: bool = False) -> Path:
    """Run ``job(shard=Shard(i, n_shards))`` for every ``i`` on a Dask cluster, then merge ``output``.

    ``job`` is any sharded entry point with its other arguments bound and ``output`` as its output,
    e.g. ``functools.partial(tokenize_files, files, output, "V2")``; it must be picklable (a
    ``partial`` of a module-level function is). ``client`` is a ``dask.distributed.Client`` (None: a
    ``LocalCluster`` of one single-threaded worker process per CPU, up to ``n_shards``, closed
    afterwards). Finished shards are skipped by the job itself, so a rerun after a failure only
    redoes what is missing. Returns the merged output.
    """
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:
        raise OptionError("run_with_dask needs dask.distributed: pip install 'geneformer[dask]'.") from exc
    n_shards = check_positive_int("n_shards", n_shards)
    own = client is None
    if own:
        cluster = LocalCluster(n_workers=min(n_shards, usable_cpus()), threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    try:
        futures = client.map(_run_shard, [job] * n_shards, range(n_shards), [n_shards] * n_shards, pure=False)
        client.gather(futures)
    finally:
        if own:
            client.close()
            cluster.close()
    return merge(output, overwrite=overwrite)
