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


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run only where PyTorch sees a CUDA device (``make gpu-check``)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run by make gpu-check)")
    for item in gpu_items:
        item.add_marker(skip)


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


def pbmc3k_cells(data_dir: Path, n_cells: int):
    """The first ``n_cells`` cells of the shared PBMC3k file in memory, counts as CSR."""
    import anndata as ad
    import scipy.sparse as sp

    a = ad.read_h5ad(data_dir / "pbmc3k_raw_seurat_labels.h5ad", backed="r")
    sub = a[:n_cells].to_memory()
    sub.X = sp.csr_matrix(sub.X)
    return sub


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared machine train several times faster on one thread
    (modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def mini_v1(golden_dir):
    """The reference's mini V1 model (../shared/golden/models/mini-V1)."""
    from geneformer.models import load_model

    return load_model(golden_dir / "models" / "mini-V1", device="cpu")


@pytest.fixture(scope="module")
def mini_v2(golden_dir):
    """The reference's mini V2 model (../shared/golden/models/mini-V2)."""
    from geneformer.models import load_model

    return load_model(golden_dir / "models" / "mini-V2", device="cpu")
