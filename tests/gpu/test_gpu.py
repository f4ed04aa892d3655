"""On a CUDA GPU (``make gpu-check``; skipped elsewhere): device selection, bf16/fp16 against fp32 on
the golden mini models, the attention kernels the packed layers get, no host synchronisation in the
perturbation batches, a pretraining and a fine-tuning step in mixed precision, LoRA, and 8/4-bit
bitsandbytes loading when it is installed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from geneformer import settings
from geneformer._utils import compute_dtype, resolve_device
from geneformer.data import as_sequences
from geneformer.embeddings import cell_embeddings
from geneformer.inference import collate, forward_hidden
from geneformer.models import load_classifier, load_model

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda", 0)


@pytest.fixture(scope="module")
def pbmc(golden_dir):
    import datasets

    return {v: datasets.load_from_disk(str(golden_dir / "tokenized" / f"pbmc3k_raw_seurat_labels_{v}.dataset"))
            for v in ("V1", "V2")}


@pytest.fixture(scope="module")
def models(golden_dir):
    return {v: load_model(golden_dir / "models" / f"mini-{v}", device=CUDA) for v in ("V1", "V2")}


def _golden_cells(golden_dir, name, ds):
    golden = pd.read_csv(golden_dir / "embeddings" / f"{name}.csv", index_col=0)
    pos = {c: i for i, c in enumerate(ds["cell_id"])}
    data = ds.select([pos[c] for c in golden["cell_id"]])
    cols = [c for c in golden.columns if str(c).isdigit()]
    return data, golden[cols].to_numpy(np.float64)


# ---- device and dtype ---------------------------------------------------------------------------
def test_device_selection(monkeypatch):
    assert resolve_device("auto").type == "cuda"
    assert resolve_device(None).type == "cuda"  # settings.device is "auto"
    assert resolve_device("cuda:0") == CUDA
    assert resolve_device("cpu").type == "cpu"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", str(torch.cuda.device_count() - 1))
    assert resolve_device("auto") == torch.device("cuda", torch.cuda.device_count() - 1)
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    assert compute_dtype(None, CUDA) == expected
    with settings.override(dtype="fp32"):
        assert compute_dtype(None, CUDA) == torch.float32


@pytest.mark.parametrize("version,mode,name", [("V1", "cell", "pbmc3k_V1_cell_L-1"),
                                               ("V2", "cls", "pbmc3k_V2_cls_L-1"),
                                               ("V2", "cell", "pbmc3k_V2_cell_L-1")])
def test_half_precision_embeddings_against_fp32(golden_dir, models, pbmc, version, mode, name):
    data, ref = _golden_cells(golden_dir, name, pbmc[version])
    kw = dict(mode=mode, device=CUDA, progress=False)
    fp32 = cell_embeddings(models[version], data, amp_dtype="fp32", **kw)
    assert np.abs(fp32 - ref).max() <= 1e-4  # the packed GPU layers reproduce the reference in fp32
    for dtype in ("bf16", "fp16"):
        half = cell_embeddings(models[version], data, amp_dtype=dtype, **kw)
        cos = F.cosine_similarity(torch.from_numpy(half).double(), torch.from_numpy(fp32).double(), dim=-1)
        assert float((1 - cos).max()) < 1e-3, dtype
    default = cell_embeddings(models[version], data, **kw)  # bf16 by default on CUDA
    if torch.cuda.is_bf16_supported():
        assert not np.array_equal(default, fp32)


# ---- attention kernels --------------------------------------------------------------------------
@pytest.mark.parametrize("lengths", [(96, 96, 96), (96, 70, 31, 5)])
def test_packed_layers_get_fused_attention_kernels(models, lengths):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from geneformer.models import attention_backend, make_packing

    rng = np.random.default_rng(0)
    seqs = as_sequences([rng.integers(4, 1000, n) for n in lengths])
    ids, mask, _ = collate(seqs, np.arange(len(lengths)), device=CUDA)
    model = models["V1"]
    with torch.inference_mode():
        ref, _ = forward_hidden(model, ids, mask, 3, lengths=np.asarray(lengths))
        # the math kernel excluded: a dense mask (or an unsupported layout) would fail here
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                half, _ = forward_hidden(model, ids, mask, 3, lengths=np.asarray(lengths))
    packing = make_packing(lengths, max(lengths), CUDA)
    q = torch.zeros(1, 4, 64, device=CUDA, dtype=torch.bfloat16)
    assert attention_backend(q, packing) in (("dense",) if len(set(lengths)) == 1 else ("flash_attn", "nested"))
    real = mask.bool()
    cos = F.cosine_similarity(half[real].float(), ref[real].float(), dim=-1)
    assert float((1 - cos).max()) < 1e-2


def test_perturbation_batches_never_wait_for_the_device(golden_dir, models, pbmc, monkeypatch, tmp_path):
    from geneformer.perturb import _engine

    real_loop = _engine.iter_forward

    def strict(*args, **kwargs):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any synchronising call in a batch raises
        try:
            yield from real_loop(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode(0)

    monkeypatch.setattr(_engine, "iter_forward", strict)
    from geneformer import InSilicoPerturber

    isp = InSilicoPerturber(genes_to_perturb="all", emb_mode="cell_and_gene", max_ncells=2, model_version="V1",
                            device="cuda", dtype="bf16", progress=False)
    path = isp.perturb_data(golden_dir / "models" / "mini-V1",
                            golden_dir / "tokenized" / "pbmc3k_raw_seurat_labels_V1.dataset", tmp_path, "sync")
    assert path.is_file()


# ---- training in mixed precision -------------------------------------------------------------
def test_pretraining_step_in_mixed_precision(pbmc, tmp_path):
    from geneformer.train import pretrain

    cells = pbmc["V1"].select(range(32)).map(
        lambda b: {"input_ids": [x[:128] for x in b["input_ids"]], "length": [min(n, 128) for n in b["length"]]},
        batched=True, keep_in_memory=True)
    result = pretrain(cells, tmp_path, config="tiny", vocab="V1", max_steps=4, batch_size=8, learning_rate=1e-3,
                      warmup=0, logging_steps=1, save_steps=100, seed=0, report_to="none", disable_tqdm=True)
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert len(losses) == 4 and all(np.isfinite(losses))


def _classifier_step(model, ids, mask, dtype):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    labels = torch.tensor([0, 1, 2, 1], device=CUDA)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.train()
    with torch.autocast("cuda", dtype=dtype):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    return float(loss), changed


def _four_cells(pbmc):
    seqs = as_sequences(pbmc["V1"].select(range(4)))
    ids, mask, _ = collate(seqs, np.arange(4), device=CUDA)
    return ids[:, :256], mask[:, :256]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_finetuning_step_in_mixed_precision(golden_dir, pbmc, dtype):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    model = load_classifier(golden_dir / "models" / "mini-V1", "cell_classifier", 3).to(CUDA)
    loss, changed = _classifier_step(model, *_four_cells(pbmc), dtype)
    assert np.isfinite(loss) and len(changed) > 0


def test_lora_trains_only_the_adapters(golden_dir, pbmc):
    model = load_classifier(golden_dir / "models" / "mini-V1", "cell_classifier", 3, lora=True).to(CUDA)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in model.parameters()) / 2
    loss, changed = _classifier_step(model, *_four_cells(pbmc), torch.bfloat16)
    assert np.isfinite(loss) and any("lora" in n for n in changed)
    # the encoder's own weights stay frozen (the head and pooler may train)
    assert not [n for n in changed if "encoder.layer" in n and "lora" not in n]


@pytest.mark.parametrize("bits", [8, 4])
def test_bitsandbytes_loading(golden_dir, pbmc, bits):
    pytest.importorskip("bitsandbytes")
    model = load_classifier(golden_dir / "models" / "mini-V1", "cell_classifier", 3, quantize=bits)
    ids, mask = _four_cells(pbmc)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask).logits
    assert logits.shape == (4, 3) and torch.isfinite(logits).all()
    kinds = {type(m).__name__ for m in model.modules()}
    assert ("Linear8bitLt" if bits == 8 else "Linear4bit") in kinds
