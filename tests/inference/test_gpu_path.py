"""The GPU inference path, checked on CPU: packed layers equal the padded ones, the attention backend
choice, the token budget from (faked) free GPU memory, bf16 by default on CUDA only, and no
device→host reads in the perturbation batch loops."""

from __future__ import annotations

import ast
import inspect
import logging
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from geneformer.data import as_sequences
from geneformer.inference import (
    _forward,
    auto_token_budget,
    collate,
    forward_first_position,
    forward_hidden,
    iter_forward,
)
from geneformer.models import attention_backend, make_packing, pack, unpack, varlen_attention


def _model(act: str = "gelu") -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=48, max_position_embeddings=80, hidden_act=act)
    cfg._attn_implementation = "sdpa"
    return BertModel(cfg, add_pooling_layer=False).eval()


def _batch(lengths):
    rng = np.random.default_rng(1)
    seqs = as_sequences([rng.integers(2, 64, n) for n in lengths])
    ids, mask, lens = collate(seqs, np.arange(len(lengths)))
    return ids, mask, np.asarray(lengths)


@pytest.fixture
def packed_on_cpu(monkeypatch):
    monkeypatch.setattr(_forward, "PACKED_DEVICES", {"cpu", "cuda"})


def _padded_reference(model, ids, mask, layer):
    with torch.inference_mode():
        return forward_hidden(model, ids, mask, layer)[0]


# ---- packing and attention ----------------------------------------------------------------------
def test_pack_unpack_round_trip():
    lengths = [5, 2, 7]
    hidden = torch.randn(3, 7, 4)
    p = make_packing(lengths, 7, torch.device("cpu"))
    packed = pack(hidden, p)
    assert packed.shape == (14, 4)
    assert torch.equal(packed[5:7], hidden[1, :2])
    back = unpack(packed, p)
    for i, n in enumerate(lengths):
        assert torch.equal(back[i, :n], hidden[i, :n])
        assert not back[i, n:].any()
    assert p.index is not None and not p.uniform
    assert p.cu_seqlens.dtype == torch.int32 and p.cu_seqlens.tolist() == [0, 5, 7, 14]


@pytest.mark.parametrize("lengths", [[9, 4, 1, 9], [6, 6, 6]])
def test_varlen_attention_is_attention_per_cell(lengths):
    torch.manual_seed(0)
    heads, d, width = 2, 8, max(lengths)
    p = make_packing(lengths, width, torch.device("cpu"))
    q, k, v = (torch.randn(sum(lengths), heads, d) for _ in range(3))
    out = varlen_attention(q, k, v, p, scale=0.3)
    assert attention_backend(q, p) == ("dense" if len(set(lengths)) == 1 else "nested")
    start = 0
    for n in lengths:
        one = [t[start:start + n].transpose(0, 1)[None] for t in (q, k, v)]
        ref = F.scaled_dot_product_attention(*one, scale=0.3)[0].transpose(0, 1)
        assert torch.allclose(out[start:start + n], ref, atol=1e-6)
        start += n


# ---- the packed layers against the padded ones ------------------------------------------------
@pytest.mark.parametrize("act", ["relu", "gelu"])
@pytest.mark.parametrize("lengths", [(70, 33, 5, 70), (40, 40)])
def test_packed_layers_equal_padded_layers_fp32(act, lengths, packed_on_cpu, monkeypatch):
    model = _model(act)
    ids, mask, lens = _batch(lengths)
    with monkeypatch.context() as m:
        m.setattr(_forward, "PACKED_DEVICES", set())
        ref = _padded_reference(model, ids, mask, 3)
    calls = []
    real_pack = _forward._packed_forward
    monkeypatch.setattr(_forward, "_packed_forward", lambda *a: calls.append(1) or real_pack(*a))
    with torch.inference_mode():
        packed, _ = forward_hidden(model, ids, mask, 3, lengths=lens)
        from_mask, _ = forward_hidden(model, ids, mask, 3)  # lengths read from the mask
    assert len(calls) == 2
    real = mask.bool()
    assert torch.allclose(packed[real], ref[real], atol=1e-5)
    assert torch.equal(packed, from_mask)
    assert not packed[~real].any()  # padded positions are zeros


@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16])
def test_packed_layers_in_half_precision_close_to_fp32(amp, packed_on_cpu):
    model = _model()
    ids, mask, lens = _batch((70, 33, 5, 70))
    with torch.inference_mode():
        ref, _ = forward_hidden(model, ids, mask, 3, lengths=lens)
        with torch.autocast("cpu", dtype=amp):
            half, _ = forward_hidden(model, ids, mask, 3, lengths=lens)
    assert half.dtype == amp
    pooled = lambda h: torch.stack([h[i, :n].float().mean(0) for i, n in enumerate(lens)])  # noqa: E731
    cos = F.cosine_similarity(pooled(half), pooled(ref), dim=-1)
    assert (1 - cos).max() < 1e-3


def test_packed_first_position_and_loop_equal_the_padded_path(mini_v1, golden_dir, packed_on_cpu, monkeypatch):
    import datasets

    ds = datasets.load_from_disk(str(golden_dir / "tokenized" / "pbmc3k_raw_seurat_labels_V1.dataset"))
    seqs = as_sequences(ds)
    rows = np.argsort(seqs.lengths)[:5]
    ids, mask, _ = collate(seqs, rows)
    lens = seqs.lengths[rows]
    with torch.inference_mode():
        packed = forward_first_position(mini_v1, ids, mask, 3, lengths=lens)
        got = {int(r): b.hidden for b in iter_forward(mini_v1, seqs, rows=rows, first_position=True, layer=3,
                                                      token_budget=2_000, progress=False) for r in b.rows}
    monkeypatch.setattr(_forward, "PACKED_DEVICES", set())
    with torch.inference_mode():
        ref = forward_first_position(mini_v1, ids, mask, 3)
    assert torch.allclose(packed, ref, atol=1e-5)
    assert len(got) == 5


def test_forward_loop_hands_the_host_lengths_down(packed_on_cpu, monkeypatch):
    """iter_forward gives the layers the lengths it holds on the host: reading them from the mask
    (a device read on GPUs) must not happen."""
    model = _model()
    rng = np.random.default_rng(2)
    seqs = as_sequences([rng.integers(2, 64, n) for n in (50, 12, 31, 7, 50)])
    with torch.inference_mode():
        ref = {int(r): h for b in iter_forward(model, seqs, layer=3, token_budget=120, progress=False)
               for r, h in zip(b.rows, b.hidden)}
    monkeypatch.setattr(_forward, "right_padded_lengths", lambda *a: pytest.fail("lengths read from the mask"))
    with torch.inference_mode():
        got = {int(r): (h, n) for b in iter_forward(model, seqs, layer=3, token_budget=120, progress=False)
               for r, h, n in zip(b.rows, b.hidden, b.lengths.tolist())}
    assert sorted(got) == list(range(5))
    for r, (h, n) in got.items():
        assert torch.equal(h[:n], ref[r][:n])


def test_layers_not_plain_bert_are_not_packed(packed_on_cpu, monkeypatch):
    model = _model()
    ids, mask, lens = _batch((20, 9))
    monkeypatch.setattr(_forward, "_packed_forward", lambda *a: pytest.fail("packed a non-plain layer"))
    monkeypatch.setattr(_forward, "supports_fast_layer", lambda *a: False)
    with torch.inference_mode():
        hidden, _ = forward_hidden(model, ids, mask, 2, lengths=lens)
    assert hidden.shape == (2, 20, 32)


# ---- budget, dtype, copies, optional packages ------------------------------------------------
def test_token_budget_from_free_gpu_memory(monkeypatch):
    cfg = BertConfig(hidden_size=256, intermediate_size=512, num_attention_heads=4)
    seen = []

    def fake_mem_get_info(device=None):
        seen.append(device)
        return free, 80 << 30

    monkeypatch.setattr(torch.cuda, "mem_get_info", fake_mem_get_info)
    cuda = torch.device("cuda", 1)
    per_token = (8 * 256 + 2 * 512) * 2  # bf16 activations; no attention scores with the packed kernels
    free = 1 << 30
    assert auto_token_budget(cfg, 2048, cuda, itemsize=2) == int(0.4 * free / per_token)
    assert seen == [cuda]  # the device the call was given, e.g. cuda:LOCAL_RANK
    free = 40 << 30
    assert auto_token_budget(cfg, 2048, cuda, itemsize=2) == 262_144  # capped
    free = 1 << 20
    assert auto_token_budget(cfg, 2048, cuda, itemsize=2) == 2048  # at least one cell
    # attention probabilities asked for: the scores count again
    free = 1 << 30
    with_scores = per_token + 4 * 2048 * 2 * 2
    assert auto_token_budget(cfg, 2048, cuda, itemsize=2, output_attentions=True) == int(0.4 * free / with_scores)


def test_bf16_is_the_default_on_cuda_only(monkeypatch):
    from geneformer import settings
    from geneformer._utils import _device, compute_dtype

    monkeypatch.setattr(_device, "bf16_supported", lambda: True)
    assert compute_dtype(None, torch.device("cuda", 0)) == torch.bfloat16
    assert compute_dtype("fp32", torch.device("cuda", 0)) == torch.float32  # fp32 for parity
    assert compute_dtype("fp16", torch.device("cuda")) == torch.float16
    assert compute_dtype(None, torch.device("cpu")) is None
    assert compute_dtype(None) is None
    with settings.override(dtype="fp32"):
        assert compute_dtype(None, torch.device("cuda")) == torch.float32
    monkeypatch.setattr(_device, "bf16_supported", lambda: False)
    assert compute_dtype(None, torch.device("cuda")) is None


def test_host_to_device_on_cpu_shares_memory():
    from geneformer._utils import host_to_device

    a = np.arange(5)
    t = host_to_device(a, "cpu")
    assert t.data_ptr() == a.ctypes.data


def test_missing_optional_package_reported_once(caplog):
    from geneformer._utils import _optional, optional_module

    _optional._seen.pop("geneformer_no_such_package", None)
    with caplog.at_level(logging.WARNING, logger="geneformer"):
        assert optional_module("geneformer_no_such_package", "using the fallback") is None
        assert optional_module("geneformer_no_such_package", "using the fallback") is None
    hits = [r for r in caplog.records if "geneformer_no_such_package" in r.getMessage()]
    assert len(hits) == 1 and "using the fallback" in hits[0].getMessage()


# ---- no device reads in the perturbation batch loops ------------------------------------------
_SYNCING = {"item", "cpu", "tolist", "numpy", "nonzero", "all", "any", "synchronize"}


def _syncing_calls(node: ast.AST) -> list[str]:
    found = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            fn = sub.func
            if isinstance(fn, ast.Attribute) and fn.attr in _SYNCING:
                found.append(fn.attr)
            if isinstance(fn, ast.Name) and fn.id in {"bool", "int", "float"}:
                found.append(fn.id)
        if isinstance(sub, ast.Subscript) and isinstance(sub.slice, ast.Name) and sub.slice.id == "mask":
            found.append("boolean mask")
    return found


def test_perturbation_batch_loops_never_read_the_device():
    from geneformer.perturb import _engine

    tree = ast.parse(textwrap.dedent(inspect.getsource(_engine.run_part)))
    loops = [n for n in ast.walk(tree) if isinstance(n, ast.For) and "iter_forward" in ast.unparse(n.iter)]
    assert len(loops) == 2
    for loop in loops:
        assert _syncing_calls(loop) == [], ast.unparse(loop)[:200]
    # and the checker does catch one
    assert _syncing_calls(ast.parse("for b in x:\n    n = b.sum().item()")) == ["item"]


def test_lagged_to_host_keeps_order_and_values_on_cpu():
    from geneformer.inference import lagged_to_host

    produced = []

    def items():
        for i in range(3):
            produced.append(i)
            yield i, torch.full((2,), float(i))

    seen = []
    for key, arr in lagged_to_host(items()):
        assert produced[-1] == key  # CPU results come at once, not one batch late
        seen.append((key, arr.tolist()))
    assert seen == [(0, [0.0, 0.0]), (1, [1.0, 1.0]), (2, [2.0, 2.0])]
