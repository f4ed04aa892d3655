"""Shared fixtures: the ``../shared`` reference folder (skip when absent, fail when required)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("GENEFORMER_SHARED_DIR", Path(__file__).resolve().parents[1].parent / "shared"))


def _require(path: Path) -> Path:
    if path.exists():
        return path
    msg = f"{path} is not available (the ../shared reference folder beside the project)"
    if os.environ.get("GENEFORMER_REQUIRE_SHARED") == "1":
        pytest.fail(msg + " but GENEFORMER_REQUIRE_SHARED=1")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _require(SHARED)


@pytest.fixture(scope="session")
def dicts_dir(shared_dir: Path) -> Path:
    return _require(shared_dir / "dicts")


@pytest.fixture(scope="session")
def data_dir(shared_dir: Path) -> Path:
    return _require(shared_dir / "data")


@pytest.fixture(scope="session")
def golden_dir(shared_dir: Path) -> Path:
    return _require(shared_dir / "golden")


@pytest.fixture(autouse=True)
def _dicts_env(monkeypatch, tmp_path_factory):
    """Point vocabulary resolution at ../shared/dicts and keep the cache inside the test tree."""
    if (SHARED / "dicts").exists():
        monkeypatch.setenv("GENEFORMER_DICTS_DIR", str(SHARED / "dicts"))
    monkeypatch.setenv("GENEFORMER_CACHE", str(tmp_path_factory.getbasetemp() / "gf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def vocab_v1(dicts_dir):
    os.environ.setdefault("GENEFORMER_DICTS_DIR", str(dicts_dir))
    from geneformer.vocab import GeneVocab

    return GeneVocab.load("V1")


@pytest.fixture(scope="session")
def vocab_v2(dicts_dir):
    os.environ.setdefault("GENEFORMER_DICTS_DIR", str(dicts_dir))
    from geneformer.vocab import GeneVocab

    return GeneVocab.load("V2")
