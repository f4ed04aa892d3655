"""The bf16 CPU attention: the compiled softmax kernel and the blocked, threaded attention built on it."""

from __future__ import annotations

import threading

import pytest
import torch

from geneformer.models import _cpu_attention as cpu_attention
from geneformer.models import blocked_attention
from geneformer.models._softmax_kernel import divide_rows_bf16, exp_rows_bf16

# half a bf16 rounding step, relative (8 significant bits), plus the kernel's polynomial error
BF16_STEP = 2.0**-8 + 1e-4


def _softmax_via_kernel(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    exps = torch.empty_like(scores)
    sums = torch.empty(scores.shape[0], dtype=torch.float32)
    exp_rows_bf16(scores.view(torch.int16).numpy(), exps.view(torch.int16).numpy(), sums.numpy())
    return exps, sums


def test_exp_rows_bf16_is_softmax_to_bf16_precision():
    torch.manual_seed(0)
    scores = (torch.randn(6, 300) * torch.tensor([0.01, 1, 10, 100, 1e4, 1e30])[:, None]).bfloat16()
    scores[0, :7] = -0.0  # negative zero among small values
    scores[1, 5] = 40.0  # one dominant key
    exps, sums = _softmax_via_kernel(scores)
    exact = torch.exp(scores.double() - scores.double().max(dim=1, keepdim=True).values)
    # every unnormalised weight is the exact exponential rounded to bf16 (or an underflow below 1e-37)
    err = (exps.double() - exact).abs()
    assert ((err <= BF16_STEP * exact) | (exact < 1e-37)).all()
    assert torch.allclose(sums.double(), exps.double().sum(dim=1), rtol=1e-5)
    assert (exps.double().max(dim=1).values == 1.0).all()  # the row maximum maps to exactly 1
    probs = exps.double() / sums.double()[:, None]
    assert torch.allclose(probs, torch.softmax(scores.double(), dim=1), atol=2 * BF16_STEP / 300 + 1e-6, rtol=2 * BF16_STEP)


def test_exp_rows_bf16_single_key_and_constant_rows():
    scores = torch.tensor([[3.5], [-7.0]], dtype=torch.bfloat16)
    exps, sums = _softmax_via_kernel(scores)
    assert exps.float().tolist() == [[1.0], [1.0]] and sums.tolist() == [1.0, 1.0]
    flat = torch.full((1, 64), -2.25, dtype=torch.bfloat16)
    exps, sums = _softmax_via_kernel(flat)
    assert (exps == 1).all() and sums.item() == 64.0


def test_divide_rows_bf16_writes_rounded_quotients_into_the_context_slice():
    torch.manual_seed(2)
    values = torch.randn(5, 8).bfloat16()
    sums = torch.rand(5) * 100 + 0.5
    out = torch.zeros(2, 9, 24, dtype=torch.bfloat16)
    divide_rows_bf16(values.view(torch.int16).numpy(), sums.numpy(), out.view(torch.int16).numpy(), 1, 3, 16)
    expected = (values.float() / sums[:, None]).bfloat16()  # round to nearest even, as torch does
    assert torch.equal(out[1, 3:8, 16:24], expected)
    out[1, 3:8, 16:24] = 0
    assert (out == 0).all()  # nothing written outside the slice


def _reference(q, k, v, n):
    p = torch.softmax(q.double()[:n] @ k.double()[:n].T, dim=-1)
    return p @ v.double()[:n]


@pytest.mark.parametrize("threads", [1, 2])
def test_blocked_attention_equals_softmax_attention(threads):
    torch.manual_seed(1)
    b, width, heads, size = 3, 37, 2, 8
    q, k, v = (torch.randn(b, heads, width, size).bfloat16() for _ in range(3))
    lengths = [37, 20, 1]
    out = torch.full((b, width, heads * size), float("nan"), dtype=torch.bfloat16)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():  # as the encoder calls it: worker threads write inference tensors
            blocked_attention(q, k, v, lengths, out, block=8)  # several query blocks, a partial last one
    finally:
        torch.set_num_threads(before)
    for i, n in enumerate(lengths):
        for h in range(heads):
            ref = _reference(q[i, h], k[i, h], v[i, h], n)
            got = out[i, :n, h * size:(h + 1) * size].double()
            # bf16 scores, weights and output: a few bf16 steps of the values' scale
            assert (got - ref).abs().max() < 4 * BF16_STEP * v[i, h, :n].double().abs().max()
        assert (out[i, n:] == 0).all()  # padding rows are zero, never NaN


def test_blocked_attention_refuses_other_dtypes_and_takes_empty_cells():
    q = torch.zeros(1, 1, 4, 2)
    with pytest.raises(TypeError, match="bf16"):
        blocked_attention(q, q, q, [4], torch.zeros(1, 4, 2))
    q = q.bfloat16()
    out = torch.ones(1, 4, 2, dtype=torch.bfloat16)
    assert (blocked_attention(q, q, q, [0], out) == 0).all()


def test_workers_keep_thread_settings_and_reraise_failures():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pool = cpu_attention._workers(2)
        seen: list[int] = []
        pool.run([lambda: seen.append(torch.get_num_threads()) for _ in range(4)])
        assert seen == [1, 1, 1, 1]  # each worker computes on its own core only
        assert torch.get_num_threads() == 2  # the caller's setting is untouched
        fresh: list[int] = []
        t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert fresh == [2]  # and so is the default that new threads start from

        def fail() -> None:
            raise ValueError("block failed")

        with pytest.raises(ValueError, match="block failed"):
            pool.run([lambda: None, fail, lambda: None])
        pool.run([lambda: None])  # the workers survive a failure
    finally:
        torch.set_num_threads(before)


def test_a_forked_child_starts_its_own_workers():
    mp = pytest.importorskip("multiprocessing")
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cpu_attention._workers(2).run([lambda: None])  # the parent's pool exists and has run
        ctx = mp.get_context("fork")
        with ctx.Pool(1) as child:
            assert child.apply_async(_attention_in_child, ()).get(timeout=60) == [2, 1]
    finally:
        torch.set_num_threads(before)


def _attention_in_child() -> list[int]:
    # without its own workers, the child would wait forever on threads that were not forked
    q, k, v = (torch.ones(1, 2, 16, 4, dtype=torch.bfloat16) for _ in range(3))
    out = torch.empty(1, 16, 8, dtype=torch.bfloat16)
    blocked_attention(q, k, v, [16], out, block=4)
    return [cpu_attention._pool.size, int(out.float().mean().item())]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_attention_interface_matches_sdpa(dtype, tol):
    """The CPU kernels registered as a transformers attention function give sdpa's outputs,
    padded cells included, when a model runs its own layers."""
    from transformers import BertConfig, BertModel

    from geneformer.models import register_cpu_attention

    name = register_cpu_attention()
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, hidden_act="relu")
    model = BertModel(config).eval().to(dtype)
    ids = torch.randint(4, 50, (3, 40))
    mask = torch.ones_like(ids)
    mask[1, 25:] = 0
    mask[2, 7:] = 0
    with torch.inference_mode():
        model.set_attn_implementation("sdpa")
        ref = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        model.set_attn_implementation(name)
        got = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
    keep = mask.bool()
    assert torch.allclose(got[keep], ref[keep], atol=tol, rtol=tol)
    assert model.config._attn_implementation == name


def test_attention_interface_defers_to_sdpa_when_training():
    from geneformer.models import geneformer_cpu_attention

    q = torch.randn(1, 2, 5, 4, requires_grad=True)
    out, weights = geneformer_cpu_attention(torch.nn.Module(), q, q.detach(), q.detach(), None, dropout=0.0)
    assert weights is None and out.shape == (1, 5, 2, 4) and out.requires_grad  # the sdpa path kept autograd
