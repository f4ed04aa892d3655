"""The inference fast path of the encoder layer: same results as the module, and only where it applies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from geneformer.data import as_sequences
from geneformer.inference import _forward as inference
from geneformer.inference import collate, forward_hidden
from geneformer.models import fast_embeddings, fast_layer_forward, supports_fast_embeddings, supports_fast_layer


def _model(act: str = "relu", **kw) -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=48, max_position_embeddings=80, hidden_act=act, **kw)
    cfg._attn_implementation = "sdpa"
    return BertModel(cfg, add_pooling_layer=False).eval()


def _batch(lengths=(70, 33, 5, 70)):
    rng = np.random.default_rng(0)
    seqs = as_sequences([rng.integers(2, 64, n) for n in lengths])
    return collate(seqs, np.arange(len(lengths)))


def _reference(model, ids, mask, layer, monkeypatch, amp=None):
    with monkeypatch.context() as m:
        m.setattr(inference, "supports_fast_layer", lambda *a: False)
        with torch.inference_mode(), torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
            return forward_hidden(model, ids, mask, layer)[0].float()


@pytest.mark.parametrize("act", ["relu", "gelu"])
@pytest.mark.parametrize("lengths", [(70, 33, 5, 70), (40, 40)])
def test_fp32_fast_path_equals_module(act, lengths, monkeypatch):
    model = _model(act)
    ids, mask, lens = _batch(lengths)
    ref = _reference(model, ids, mask, 3, monkeypatch)
    with torch.inference_mode():
        assert supports_fast_layer(model.encoder.layer[0], model.config)
        fast, _ = forward_hidden(model, ids, mask, 3)
    real = mask.bool()
    assert torch.allclose(fast[real], ref[real], atol=1e-5)
    assert torch.isfinite(fast).all()  # padded positions too (attention runs per cell on CPU)


def test_bf16_fast_path_close_to_fp32(monkeypatch):
    model = _model()
    ids, mask, lens = _batch()
    ref = _reference(model, ids, mask, 3, monkeypatch)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast, _ = forward_hidden(model, ids, mask, 3)
    assert fast.dtype == torch.bfloat16
    real = mask.bool()
    # cell embeddings (mean over real genes) as the embedding code pools them
    pooled = lambda h: torch.stack([h[i, : lens[i]].float().mean(0) for i in range(len(lens))])  # noqa: E731
    cos = torch.nn.functional.cosine_similarity(pooled(fast), pooled(ref), dim=-1)
    assert (1 - cos).max() < 1e-3
    assert torch.isfinite(fast[real]).all()


def test_fast_layer_without_padding_and_buffers_reused():
    model = _model()
    ids, mask, _ = _batch((30, 30))
    hidden = model.embeddings(input_ids=ids)
    ws: dict = {}
    with torch.inference_mode():
        a = fast_layer_forward(model.encoder.layer[0], hidden, None, workspace=ws)
        buffers = {k: v.data_ptr() for k, v in ws.items()}
        b = fast_layer_forward(model.encoder.layer[1], a, None, workspace=ws)
        ref = model.encoder.layer[1](model.encoder.layer[0](hidden, None), None)
    assert {k: v.data_ptr() for k, v in ws.items()} == buffers
    assert torch.allclose(b, ref[0] if isinstance(ref, tuple) else ref, atol=1e-5)


def test_weights_changed_between_calls_are_seen():
    model = _model()
    ids, mask, _ = _batch()
    with torch.inference_mode():
        before, _ = forward_hidden(model, ids, mask, 1)
    with torch.no_grad():
        model.encoder.layer[0].intermediate.dense.weight.data.mul_(3.0)  # .data: no version bump
    with torch.inference_mode():
        after, _ = forward_hidden(model, ids, mask, 1)
        ref = model.encoder.layer[0](model.embeddings(input_ids=ids), mask.bool()[:, None, None, :])
    ref = ref[0] if isinstance(ref, tuple) else ref
    assert not torch.allclose(before, after)
    assert torch.allclose(after[mask.bool()], ref[mask.bool()], atol=1e-5)


@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_fast_embeddings_equal_the_module(amp):
    model = _model()
    ids, _, _ = _batch()
    ws: dict = {}
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp is not None):
        assert supports_fast_embeddings(model.embeddings)
        ref = model.embeddings(input_ids=ids)
        fast = fast_embeddings(model.embeddings, ids, ws)
        buffer = ws["embeddings"].data_ptr()
        again = fast_embeddings(model.embeddings, ids[:2, :40], ws)
    assert fast.dtype == ref.dtype and torch.equal(fast, ref)  # the same additions, the same numbers
    assert torch.equal(again, ref[:2, :40]) and ws["embeddings"].data_ptr() == buffer
    assert not supports_fast_embeddings(model.embeddings)  # gradients enabled
    with torch.no_grad():
        model.train()
        assert not supports_fast_embeddings(model.embeddings)  # dropout active


def test_fast_path_only_where_it_applies():
    model = _model()
    layer = model.encoder.layer[0]
    with torch.inference_mode():
        assert supports_fast_layer(layer, model.config)
    assert not supports_fast_layer(layer, model.config)  # gradients enabled: fine-tuning
    with torch.no_grad():
        model.train()
        assert not supports_fast_layer(layer, model.config)  # dropout active
        model.eval()
        relative = _model(position_embedding_type="relative_key")
        assert not supports_fast_layer(relative.encoder.layer[0], relative.config)
        tanh = _model("gelu_new")
        assert not supports_fast_layer(tanh.encoder.layer[0], tanh.config)
        peft = pytest.importorskip("peft")
        lora = peft.get_peft_model(_model(), peft.LoraConfig(r=2, target_modules=["query", "value"]))
        wrapped = lora.base_model.model.encoder.layer[0]
        assert not supports_fast_layer(wrapped, lora.base_model.model.config)


@pytest.mark.parametrize("kind", ["cell", "gene"])
def test_classifier_predictions_through_the_fast_path_equal_the_model(kind):
    from transformers import BertForSequenceClassification, BertForTokenClassification

    from geneformer.inference import run_model

    cls = BertForSequenceClassification if kind == "cell" else BertForTokenClassification
    torch.manual_seed(0)
    cfg = _model().config
    cfg.num_labels = 3
    model = cls(cfg).eval()
    rng = np.random.default_rng(0)
    cells = [rng.integers(2, 64, n) for n in (70, 33, 5, 70, 12)]
    got = {int(r): out.logits[j] for rows, out in run_model(model, cells, batch_size=2, progress=False)
           for j, r in enumerate(rows)}
    for i, cell in enumerate(cells):
        with torch.inference_mode():
            ref = model(input_ids=torch.as_tensor(cell)[None]).logits[0]
        mine = got[i] if kind == "cell" else got[i][: len(cell)]
        assert torch.allclose(mine, ref, atol=1e-5)


def test_fp16_keeps_the_module_forward(monkeypatch):
    # a pure fp16 residual stream could overflow; fp16 runs the module under autocast instead
    model = _model()
    ids, mask, _ = _batch()

    def fail(*args, **kwargs):
        raise AssertionError("fast path used in fp16")

    monkeypatch.setattr(inference, "fast_layer_forward", fail)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.float16):
        hidden, _ = forward_hidden(model, ids, mask, 3)
    assert torch.isfinite(hidden[mask.bool()]).all()
