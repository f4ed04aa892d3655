"""``merge(X)``: the final output of a sharded run, from its finished parts.

Each kind of job names the function that merges its parts (``module:function``, imported only
when needed, so that merging a tokenization does not import torch).
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
from pathlib import Path

from .._utils import ShardError, completed_shards, refuse_existing, shards_dir

logger = logging.getLogger(__name__)

# kind written by the job's shard markers -> "module:function(output, records) -> Path"
MERGERS: dict[str, str] = {
    "tokenize": "geneformer.tokenization:merge_token_shards",
    "vocab": "geneformer.vocab:merge_vocab_shards",
    "embed": "geneformer.embeddings:merge_embedding_shards",
    "perturb": "geneformer.perturb:merge_perturb_shards",
}


def merge(output: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``output`` from the parts its shards left in ``output.shards/``.

    Checks that every shard finished, with one kind and the same settings, and names the missing
    shards otherwise. The result is what the single run would have written; the parts folder is
    removed once it is.
    """
    output = Path(output)
    refuse_existing(output, overwrite)
    kind, count, records = completed_shards(output)
    if kind not in MERGERS:
        raise ShardError(f"{output}: shards of an unknown kind of job {kind!r}")
    module, name = MERGERS[kind].split(":")
    fn = getattr(importlib.import_module(module), name)
    logger.info("merging %d %s shards into %s", count, kind, output)
    written = fn(output, records)
    # the parts are redundant once the output exists (and a rerun of a shard then redoes it)
    shutil.rmtree(shards_dir(output), ignore_errors=True)
    return written
