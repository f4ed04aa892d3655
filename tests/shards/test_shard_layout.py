"""Shard specs, balanced slicing and completion markers (the infrastructure every sharded job uses)."""

from __future__ import annotations

import numpy as np
import pytest

from geneformer._utils import (
    OptionError,
    Shard,
    ShardError,
    assign_balanced,
    attention_cost,
    balanced_bounds,
    completed_shards,
    mark_shard_done,
    parse_shard,
    shard_bounds,
    shard_done,
)
from geneformer.shards import merge


def test_parse_shard_forms_and_errors():
    assert parse_shard("3/8") == Shard(3, 8)
    assert parse_shard((0, 1)) == Shard(0, 1)
    assert parse_shard(None) is None
    assert Shard(3, 8).label == "shard-00003-of-00008"
    for bad in ("8/8", "-1/4", "a/b", "3", (1, 0)):
        with pytest.raises(OptionError, match="shard"):
            parse_shard(bad)


def test_balanced_bounds_cover_everything_once_and_balance_cost():
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 2048, size=1000)
    costs = attention_cost(lengths)
    bounds = balanced_bounds(costs, 7)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(costs)
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    loads = np.array([costs[a:b].sum() for a, b in bounds])
    # contiguous slices can miss the ideal by at most one item's cost
    assert loads.max() - loads.min() <= 2 * costs.max()
    assert shard_bounds(costs, Shard(2, 7)) == bounds[2]
    assert shard_bounds(costs, None) == (0, 1000)
    # more shards than items: empty slices, nothing lost
    few = balanced_bounds([1.0, 1.0], 4)
    assert sum(b - a for a, b in few) == 2


def test_assign_balanced_puts_long_items_apart():
    costs = np.array([100.0, 1, 1, 1, 100, 1, 1, 1])
    owned = assign_balanced(costs, 2)
    assert sorted(np.concatenate(owned).tolist()) == list(range(8))
    assert all(len(set(o.tolist()) & {0, 4}) == 1 for o in owned)
    loads = [costs[o].sum() for o in owned]
    assert abs(loads[0] - loads[1]) <= 1


def test_markers_and_missing_shards_named(tmp_path):
    out = tmp_path / "cells.dataset"
    assert not shard_done(out, Shard(0, 3), "fp")
    mark_shard_done(out, Shard(0, 3), "tokenize", "fp")
    mark_shard_done(out, Shard(2, 3), "tokenize", "fp")
    assert shard_done(out, Shard(0, 3), "fp")
    with pytest.raises(ShardError, match="different run"):
        shard_done(out, Shard(0, 3), "other")
    with pytest.raises(ShardError, match=r"1 of 3 shards .* 1/3"):
        completed_shards(out)
    with pytest.raises(ShardError, match="1/3"):
        merge(out)
    mark_shard_done(out, Shard(1, 3), "tokenize", "fp")
    kind, count, records = completed_shards(out)
    assert (kind, count) == ("tokenize", 3)
    assert [r["shard"][0] for r in records] == [0, 1, 2]


def test_shards_of_different_runs_refused(tmp_path):
    out = tmp_path / "emb.parquet"
    mark_shard_done(out, Shard(0, 2), "embed", "a")
    mark_shard_done(out, Shard(1, 2), "embed", "b")
    with pytest.raises(ShardError, match="different runs"):
        completed_shards(out)
