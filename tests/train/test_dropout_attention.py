"""Exact fused-speed attention dropout: dense reference, sampling, transformers integration, checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geneformer.models import GeneformerForMaskedLM
from geneformer.train import _dropout_attention as da
from geneformer.train import architecture_config, use_fused_attention_dropout
from geneformer.train._dropout_attention import (
    ATTN_IMPLEMENTATION,
    dropout_attention,
    geneformer_sdpa_attention_forward,
    sample_dropped,
)

SRC = Path(__file__).resolve().parents[2] / "src"
B, H, L, D = 2, 2, 37, 8
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _qkv(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    # (B, H, L, D) views of (B, L, H, D) memory, as BERT's head split produces
    return [torch.randn(B, L, H, D, dtype=dtype, generator=g).transpose(1, 2).requires_grad_() for _ in range(3)]


def _padding(kind: str, dtype):
    keep = torch.ones(B, L, dtype=torch.bool)
    keep[1, 30:] = False
    if kind == "none":
        return None
    if kind == "bool":  # transformers' sdpa mask: (B, 1, L, L) expanded from the key-padding mask
        return keep[:, None, None, :].expand(B, 1, L, L)
    # BERT's eager-style additive mask
    return torch.zeros(B, 1, 1, L, dtype=dtype).masked_fill(~keep[:, None, None, :], torch.finfo(dtype).min)


def _reference(q, k, v, mask, dropped, p):
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    if mask is not None:
        s = s + (torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool
                 else mask)
    return (torch.softmax(s, -1) * ~dropped) @ v / (1 - p)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("p", [0.02, 0.3])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
def test_matches_dense_reference(dtype, p, mask_kind):
    q, k, v = _qkv(dtype)
    mask = _padding(mask_kind, dtype)
    dropped = torch.rand(B, H, L, L, generator=torch.Generator().manual_seed(1)) < p
    ref = _reference(q, k, v, mask, dropped, p)
    out = dropout_attention(q, k, v, mask, p, dropped=dropped)
    grad = torch.randn(ref.shape, dtype=dtype, generator=torch.Generator().manual_seed(2))
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    assert out.shape == (B, H, L, D)
    assert (out - ref).abs().max() < TOL[dtype]
    for name, a, b in zip("qkv", grads, ref_grads):
        assert (a - b).abs().max() < TOL[dtype], name


def test_other_memory_layouts():
    # contiguous (B, H, L, D) inputs (not BERT's head-split views) and a full (B, H, L, L) float mask
    q, k, v = (x.detach().contiguous().requires_grad_() for x in _qkv(torch.float64))
    mask = torch.randn(B, H, L, L, dtype=torch.float64)
    dropped = torch.rand(B, H, L, L, generator=torch.Generator().manual_seed(1)) < 0.2
    ref = _reference(q, k, v, mask, dropped, 0.2)
    out = dropout_attention(q, k, v, mask, 0.2, dropped=dropped)
    assert (out - ref).abs().max() < 1e-10
    for a, b in zip(torch.autograd.grad(out.sum(), (q, k, v)), torch.autograd.grad(ref.sum(), (q, k, v))):
        assert (a - b).abs().max() < 1e-10


def test_fully_masked_rows_stay_finite():
    q, k, v = _qkv(torch.float64)
    mask = torch.ones(B, 1, L, L, dtype=torch.bool)
    mask[0, 0, 3] = False  # query 3 of cell 0 sees nothing
    additive = torch.zeros(B, 1, L, L, dtype=torch.float64).masked_fill(~mask, torch.finfo(torch.float64).min)
    dropped = torch.rand(B, H, L, L, generator=torch.Generator().manual_seed(1)) < 0.3
    for m in (mask, additive):
        out = dropout_attention(q, k, v, m, 0.3, dropped=dropped)
        grads = torch.autograd.grad(out.sum(), (q, k, v))
        assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
        # the other rows are exact
        ref = _reference(q, k, v, mask, dropped, 0.3)
        ok = torch.ones(B, H, L, dtype=torch.bool)
        ok[0, :, 3] = False
        assert (out - ref)[ok].abs().max() < 1e-10


def test_sampling_is_iid_bernoulli_and_seeded():
    n_blocks, size, p = 3, 20011, 0.1
    torch.manual_seed(5)
    idx, counts = sample_dropped(n_blocks, size, p)
    torch.manual_seed(5)
    idx2, counts2 = sample_dropped(n_blocks, size, p)
    assert torch.equal(idx, idx2) and torch.equal(counts, counts2)
    assert idx.dtype == torch.int32 and idx.shape[0] == n_blocks and int(counts.max()) <= idx.shape[1]
    total = n_blocks * size
    assert abs(int(counts.sum()) - total * p) < 5 * np.sqrt(total * p * (1 - p))
    for b in range(n_blocks):
        block = idx[b, : counts[b]].numpy()
        assert (np.diff(block) > 0).all() and block.min() >= 0 and block.max() < size  # distinct, sorted, in range
    torch.manual_seed(6)
    assert not torch.equal(sample_dropped(n_blocks, size, p)[0][0, :100], idx[0, :100])
    # blocks are independent streams: no two alike
    assert len({tuple(idx[b, :50].tolist()) for b in range(n_blocks)}) == n_blocks
    # every position is dropped with probability p, independently of its neighbour; counts are Binomial(T, p)
    torch.manual_seed(0)
    n_b, size, q, draws = 20, 50, 0.25, 300
    hits = np.zeros((draws, n_b * size))
    for d in range(draws):
        i, c = sample_dropped(n_b, size, q)
        for b in range(n_b):
            hits[d, b * size + i[b, : c[b]].numpy()] = 1
    t = n_b * size
    assert np.abs(hits.mean(0) - q).max() < 5 * np.sqrt(q * (1 - q) / draws)
    assert abs((hits[:, 1:] * hits[:, :-1]).mean() - q * q) < 5 * np.sqrt(q * q / (draws * (t - 1)))
    counts = hits.sum(1)
    assert abs(counts.mean() - t * q) < 5 * np.sqrt(t * q * (1 - q) / draws)
    assert abs(counts.var() / (t * q * (1 - q)) - 1) < 5 * np.sqrt(2 / draws)
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        sample_dropped(1, 10, 0.0)


def test_sampler_redraws_identically_with_more_room():
    from geneformer.train import _dropout_kernel

    small, big = np.zeros((2, 3), np.int32), np.zeros((2, 500), np.int32)
    c_small, c_big = np.zeros(2, np.int64), np.zeros(2, np.int64)
    _dropout_kernel.sample_blocks(123, 1000, 0.2, small, c_small)
    _dropout_kernel.sample_blocks(123, 1000, 0.2, big, c_big)
    assert (c_small == c_big).all() and (c_big > 3).all() and (small == big[:, :3]).all()


def test_sampled_dropout_rate_and_scale():
    # E[O] = softmax(S) V: the sampled path is unbiased, and drops about p of the entries
    q, k, v = (x.detach() for x in _qkv(torch.float64))
    torch.manual_seed(0)
    outs = torch.stack([dropout_attention(q, k, v, None, 0.3) for _ in range(400)])
    plain = F.scaled_dot_product_attention(q, k, v)
    assert (outs.mean(0) - plain).abs().max() < 0.1
    assert not torch.equal(outs[0], outs[1])
    torch.manual_seed(3)
    a = dropout_attention(q, k, v, None, 0.3)
    torch.manual_seed(3)
    assert torch.equal(a, dropout_attention(q, k, v, None, 0.3))


class _Module(torch.nn.Module):
    is_causal = False


def test_attention_function_delegates_without_dropout(monkeypatch):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v = (x.detach().float() for x in _qkv(torch.float64))
    mask = _padding("bool", torch.float32)
    mod = _Module()
    out, w = geneformer_sdpa_attention_forward(mod, q, k, v, mask, dropout=0.0, scaling=0.3)
    ref, _ = sdpa_attention_forward(mod, q, k, v, mask, dropout=0.0, scaling=0.3)
    assert w is None and out.shape == (B, L, H, D) and out.is_contiguous() and torch.equal(out, ref)

    used = []
    monkeypatch.setattr(da, "dropout_attention", lambda *a, **kw: used.append(1) or torch.zeros(B, H, L, D))
    geneformer_sdpa_attention_forward(mod, q, k, v, mask, dropout=0.1)
    assert used == [1]
    out, _ = geneformer_sdpa_attention_forward(mod, q.bfloat16(), k.bfloat16(), v.bfloat16(), mask, dropout=0.1)
    assert used == [1] and out.dtype == torch.bfloat16  # half precision goes to sdpa
    with pytest.raises(ValueError, match="CPU float32/float64"):
        dropout_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), None, 0.1)
    with pytest.raises(ValueError, match="does not broadcast"):
        dropout_attention(q, k, v, mask[:, :, :, :5], 0.1)


def _tiny_model(p=0.1, seed=0):
    torch.manual_seed(seed)
    cfg = architecture_config("tiny", 64, max_position_embeddings=32, attention_probs_dropout_prob=p,
                              hidden_dropout_prob=0.0)
    return GeneformerForMaskedLM(cfg)


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 64, (4, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0
    mask[3, 9:] = 0
    ids[mask == 0] = 0
    labels = torch.full_like(ids, -100)
    labels[:, 1::3] = ids[:, 1::3]
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_bert_trains_through_registered_function(monkeypatch):
    model = _tiny_model()
    assert use_fused_attention_dropout(model)
    assert model.config._attn_implementation == ATTN_IMPLEMENTATION
    calls = []
    apply = da._DropoutAttention.apply
    monkeypatch.setattr(da._DropoutAttention, "apply", lambda *a: calls.append(1) or apply(*a))
    batch = _batch()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(8):
        loss = model(**batch).loss
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert len(calls) == 8 * model.config.num_hidden_layers
    assert np.mean(losses[-3:]) < np.mean(losses[:3])

    # evaluation (no dropout) is plain sdpa, output for output
    model.eval()
    calls.clear()
    with torch.no_grad():
        ours = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        use_fused_attention_dropout(model, False)
        assert model.config._attn_implementation == "sdpa"
        plain = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert calls == [] and torch.equal(ours, plain)


def test_eager_models_are_left_alone():
    model = _tiny_model()
    model.set_attn_implementation("eager")
    assert not use_fused_attention_dropout(model)
    assert model.config._attn_implementation == "eager"
    out = model(input_ids=_batch()["input_ids"], output_attentions=True)
    assert len(out.attentions) == model.config.num_hidden_layers


def test_saved_model_loads_in_plain_transformers(tmp_path):
    model = _tiny_model()
    use_fused_attention_dropout(model)
    model.save_pretrained(tmp_path / "m")
    text = (tmp_path / "m" / "config.json").read_text()
    assert ATTN_IMPLEMENTATION not in text
    _load_without_geneformer(tmp_path / "m")


def _load_without_geneformer(folder: Path) -> None:
    code = (
        "import sys, transformers\n"
        f"m = transformers.BertForMaskedLM.from_pretrained({str(folder)!r})\n"
        "assert m.config._attn_implementation in ('sdpa', 'eager'), m.config._attn_implementation\n"
        "assert not any(k.startswith('geneformer') for k in sys.modules)\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=folder)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


def test_pretraining_checkpoints_are_plain_bert(golden_dir, tmp_path):
    from datasets import load_from_disk

    from geneformer.train import pretrain

    ds = load_from_disk(str(golden_dir / "tokenized" / "pbmc3k_raw_seurat_labels_V1.dataset")).select(range(8))
    ds = ds.map(lambda b: {"input_ids": [x[:48] for x in b["input_ids"]], "length": [min(n, 48) for n in b["length"]]},
                batched=True, keep_in_memory=True)
    cfg = architecture_config("tiny", 25426, max_position_embeddings=64, attention_probs_dropout_prob=0.1)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = pretrain(ds, tmp_path / "run", config=cfg, vocab="V1", max_steps=2, batch_size=4, save_steps=1,
                       report_to="none", disable_tqdm=True)
    finally:
        torch.set_num_threads(before)
    for folder in (tmp_path / "run" / "checkpoint-2", res.model_dir):
        data = json.loads((folder / "config.json").read_text())
        assert ATTN_IMPLEMENTATION not in json.dumps(data)
    _load_without_geneformer(res.model_dir)


@pytest.mark.parametrize("fused", [True, False])
def test_pretrainer_option(fused, tmp_path):
    from transformers import TrainingArguments

    from geneformer.compat import GeneformerPretrainer

    model = _tiny_model()
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    GeneformerPretrainer(model=model, args=args, token_dictionary={"<pad>": 0, "<mask>": 1, "g": 2},
                         fused_attention_dropout=fused)
    assert model.config._attn_implementation == (ATTN_IMPLEMENTATION if fused else "sdpa")
