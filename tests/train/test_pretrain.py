"""Masked-gene pretraining: presets, collators, sparse MLM head, trainer, resume, continual learning, CLI."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from geneformer.models import GeneformerForMaskedLM
from geneformer.train import (
    ARCHITECTURES,
    DataCollatorForCellClassification,
    DataCollatorForGeneClassification,
    DataCollatorForMaskedGenes,
    architecture_config,
    load_config,
)

SRC = Path(__file__).resolve().parents[2] / "src"
N_CELLS, CROP = 64, 128
# short runs: no TensorBoard, no progress bars
QUIET = dict(report_to="none", disable_tqdm=True)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _crop(ds, n_tokens: int):
    def f(b):
        return {"input_ids": [x[:n_tokens] for x in b["input_ids"]], "length": [min(n, n_tokens) for n in b["length"]]}

    return ds.map(f, batched=True, keep_in_memory=True)


def _crop_v2(ds, n_tokens: int):
    """Crop keeping <cls> ... <eos>."""
    def f(b):
        ids = [list(x[: n_tokens - 1]) + [x[-1]] if len(x) > n_tokens else list(x) for x in b["input_ids"]]
        return {"input_ids": ids, "length": [len(x) for x in ids]}

    return ds.map(f, batched=True, keep_in_memory=True)


@pytest.fixture(scope="module")
def pbmc_v1(golden_dir):
    from datasets import load_from_disk

    return load_from_disk(str(golden_dir / "tokenized" / "pbmc3k_raw_seurat_labels_V1.dataset"))


@pytest.fixture(scope="module")
def pbmc_v2(golden_dir):
    from datasets import load_from_disk

    return load_from_disk(str(golden_dir / "tokenized" / "pbmc3k_raw_seurat_labels_V2.dataset"))


@pytest.fixture(scope="module")
def cells(pbmc_v1):
    """64 real V1 cells cropped to 128 genes."""
    return _crop(pbmc_v1.select(range(N_CELLS)), CROP)


@pytest.fixture(scope="module")
def cells_dir(cells, tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "cells.dataset"
    cells.save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def trained(cells, tmp_path_factory, vocab_v1):
    """A short from-scratch run shared by several tests."""
    from geneformer.train import pretrain

    out = tmp_path_factory.mktemp("scratch")
    return pretrain(cells, out, config="tiny", vocab="V1", max_steps=20, batch_size=8, learning_rate=1e-2,
                    warmup=0, logging_steps=1, save_steps=100, seed=0, eval_fraction=0.125, **QUIET)


# ------------------------------------------------------------------------------------------------
# architectures
# ------------------------------------------------------------------------------------------------
def test_presets_match_published_configs(shared_dir):
    cfgs = shared_dir / "models" / "configs"
    pairs = {
        "gf-6L-30M-i2048": "gf-6L-30M-i2048.Geneformer-V1-10M.config.json",
        "gf-12L-30M-i2048": "gf-12L-30M-i2048.config.json",
        "gf-12L-95M-i4096": "gf-12L-95M-i4096.config.json",
        "Geneformer-V2-104M": "Geneformer-V2-104M.config.json",
        "Geneformer-V2-316M": "Geneformer-V2-316M.config.json",
    }
    keys = ["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "hidden_act", "layer_norm_eps", "pad_token_id", "vocab_size",
            "hidden_dropout_prob", "attention_probs_dropout_prob", "type_vocab_size", "initializer_range"]
    for preset, fname in pairs.items():
        ref = json.loads((cfgs / fname).read_text())
        ours = architecture_config(preset, ref["vocab_size"])
        assert {k: getattr(ours, k) for k in keys} == {k: ref[k] for k in keys}, preset
        assert ours._attn_implementation == "sdpa"
    c = architecture_config("gf-20L-95M-i4096", 20275)
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size,
            c.max_position_embeddings) == (20, 896, 14, 1792, 4096)
    assert "tiny" in ARCHITECTURES


def test_load_config_sources(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                "intermediate_size": 32, "hidden_act": "relu"}))
    cfg = load_config(str(path), 500)
    assert (cfg.vocab_size, cfg.hidden_size, cfg._attn_implementation) == (500, 16, "sdpa")
    with pytest.raises(ValueError, match="vocab_size 100 but the gene vocabulary has 500"):
        load_config({"vocab_size": 100, "hidden_size": 16, "num_attention_heads": 2}, 500)
    with pytest.raises(ValueError, match="neither a preset"):
        load_config("no-such-preset", 500)


# ------------------------------------------------------------------------------------------------
# collators
# ------------------------------------------------------------------------------------------------
def test_masking_statistics(pbmc_v2, vocab_v2):
    col = DataCollatorForMaskedGenes(vocab_v2, seed=7)
    ds = pbmc_v2.select(range(300))
    feats = [{"input_ids": x} for x in ds["input_ids"]]
    batch = col(feats)
    orig = np.full(batch["input_ids"].shape, vocab_v2.pad_id)
    for i, f in enumerate(feats):
        orig[i, : len(f["input_ids"])] = f["input_ids"]
    ids, labels, att = batch["input_ids"].numpy(), batch["labels"].numpy(), batch["attention_mask"].numpy()
    assert (att == (orig != vocab_v2.pad_id)).all()
    special = np.isin(orig, [vocab_v2.pad_id, vocab_v2.mask_id, vocab_v2.cls_id, vocab_v2.eos_id])
    masked = labels != -100
    assert not (masked & special).any()  # <pad>, <cls>, <eos> never masked
    assert (labels[masked] == orig[masked]).all()
    assert (ids[~masked] == orig[~masked]).all()  # nothing changes outside the selection
    frac = masked.sum() / (~special).sum()
    assert abs(frac - 0.15) < 0.005, frac
    n = masked.sum()
    to_mask = (ids == vocab_v2.mask_id) & masked
    unchanged = (ids == orig) & masked
    replaced = masked & ~to_mask & ~unchanged
    assert abs(to_mask.sum() / n - 0.8) < 0.01
    # a random gene equals the original with probability ~1/20,271: "unchanged" is 10% (+tiny)
    assert abs(unchanged.sum() / n - 0.1) < 0.01
    assert abs(replaced.sum() / n - 0.1) < 0.01
    assert np.isin(ids[replaced], vocab_v2.gene_token_ids).all()  # random tokens are genes only
    # per-cell masks do not depend on the batch: a cell collated alone gets the same mask
    alone = col(feats[5:6])
    width = len(feats[5]["input_ids"])
    assert torch.equal(alone["labels"][0], batch["labels"][5, :width])
    assert torch.equal(alone["input_ids"][0], batch["input_ids"][5, :width])
    # deterministic given seed and epoch; a new epoch gives new masks
    assert torch.equal(DataCollatorForMaskedGenes(vocab_v2, seed=7)(feats[:4])["labels"], col(feats[:4])["labels"])
    col.set_epoch(1)
    assert not torch.equal(col(feats[:4])["labels"], batch["labels"][:4])
    # the evaluation copy has fixed masks
    ev = col.for_evaluation()
    assert torch.equal(ev(feats[:4])["labels"], ev(feats[:4])["labels"])


def test_masking_with_generator_and_global_rng(cells, vocab_v1):
    feats = [{"input_ids": x} for x in cells["input_ids"][:8]]
    a = DataCollatorForMaskedGenes(vocab_v1, generator=torch.Generator().manual_seed(3))(feats)
    b = DataCollatorForMaskedGenes(vocab_v1, generator=torch.Generator().manual_seed(3))(feats)
    assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["input_ids"], b["input_ids"])
    torch.manual_seed(1)
    c = DataCollatorForMaskedGenes(vocab_v1.token_dict)(feats)
    torch.manual_seed(1)
    d = DataCollatorForMaskedGenes(vocab_v1.token_dict)(feats)
    assert torch.equal(c["labels"], d["labels"])
    assert a["input_ids"].dtype == torch.int64 and a["input_ids"].shape == (8, CROP)
    with pytest.raises(ValueError, match="mlm_probability"):
        DataCollatorForMaskedGenes(vocab_v1, mlm_probability=0)


def test_classification_collators(vocab_v1):
    import geneformer

    assert geneformer.DataCollatorForCellClassification is DataCollatorForCellClassification
    assert geneformer.DataCollatorForGeneClassification is DataCollatorForGeneClassification
    cell = DataCollatorForCellClassification(token_dictionary=vocab_v1.token_dict)
    out = cell([{"input_ids": [5, 6, 7], "label": 1, "length": 3},
                {"input_ids": [8], "label": 0, "length": 1, }])
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].tolist() == [1, 0] and out["labels"].dtype == torch.int64
    assert out["length"].tolist() == [3, 1] and "label" not in out
    gene = DataCollatorForGeneClassification(token_dictionary=vocab_v1.token_dict)
    out = gene([{"input_ids": [5, 6, 7], "labels": [1, -100, 0]}, {"input_ids": [8], "labels": [1]}])
    assert out["labels"].tolist() == [[1, -100, 0], [1, -100, -100]]
    assert out["input_ids"].dtype == torch.int64


# ------------------------------------------------------------------------------------------------
# sparse MLM head
# ------------------------------------------------------------------------------------------------
def test_masked_only_head_equals_full_head(cells, vocab_v1, tmp_path):
    from transformers import BertForMaskedLM

    torch.manual_seed(0)
    cfg = architecture_config("tiny", vocab_v1.size)
    ours = GeneformerForMaskedLM(cfg).eval()
    full = BertForMaskedLM(cfg).eval()
    full.load_state_dict(ours.state_dict())
    assert set(ours.state_dict()) == set(full.state_dict())
    feats = [{"input_ids": x} for x in cells.select(range(0, 64, 8))["input_ids"]]
    feats[0]["input_ids"] = feats[0]["input_ids"][:40]  # some padding in the batch
    batch = DataCollatorForMaskedGenes(vocab_v1, seed=1)(feats)
    with torch.no_grad():
        a, b = ours(**batch), full(**batch)
    assert abs(a.loss.item() - b.loss.item()) < 1e-5
    sel = batch["labels"] != -100
    torch.testing.assert_close(a.logits, b.logits[sel], atol=1e-5, rtol=1e-5)
    # gradients agree too
    ours.train(), full.train()
    ours(**batch).loss.backward()
    full(**batch).loss.backward()
    g1 = ours.bert.embeddings.word_embeddings.weight.grad
    g2 = full.bert.embeddings.word_embeddings.weight.grad
    torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-4)
    # without labels: full logits, computed only where attention_mask is 1
    with torch.no_grad():
        c = ours.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        d = full.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(c.logits[real], d.logits[real], atol=1e-5, rtol=1e-5)
    assert (c.logits[~real] == 0).all()
    # saved as a plain BertForMaskedLM
    ours.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    back = BertForMaskedLM.from_pretrained(str(tmp_path / "m")).eval()
    with torch.no_grad():
        assert abs(back(**batch).loss.item() - b.loss.item()) < 1e-5


def test_no_masked_positions_gives_zero_loss(vocab_v1):
    model = GeneformerForMaskedLM(architecture_config("tiny", vocab_v1.size))
    ids = torch.tensor([[5, 6, 7]])
    out = model(input_ids=ids, labels=torch.full_like(ids, -100))
    assert out.loss.item() == 0.0
    out.loss.backward()  # still differentiable


# ------------------------------------------------------------------------------------------------
# sampler
# ------------------------------------------------------------------------------------------------
def test_length_grouped_sampler_matches_transformers():
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from geneformer.train import LengthGroupedSampler
    from geneformer.train._sampler import length_grouped_indices

    lengths = np.random.default_rng(0).integers(10, 2048, size=1000)
    lengths[::7] = 500  # ties
    ours = length_grouped_indices(lengths, 12, torch.Generator().manual_seed(5))
    ref = get_length_grouped_indices(lengths.tolist(), 12, generator=torch.Generator().manual_seed(5))
    assert ours.tolist() == list(ref)
    s = LengthGroupedSampler(lengths, 12, seed=5)
    first = list(s)
    assert first == list(s) and sorted(first) == list(range(1000))
    s.set_epoch(1)
    assert list(s) != first


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
def test_loss_decreases_and_outputs(trained):
    losses = [h["loss"] for h in trained.log_history if "loss" in h]
    assert len(losses) == 20
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
    assert trained.global_step == 20
    # 20 steps already put the masked genes' own tokens far above chance (1 in 25,426)
    assert trained.eval_metrics["eval_masked_accuracy"] > 10 / 25426
    assert trained.eval_metrics["eval_masked_genes"] > 0
    model_dir = trained.model_dir
    assert (model_dir / "model.safetensors").is_file()
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["architectures"] == ["BertForMaskedLM"] and cfg["vocab_size"] == 25426


def test_resume_reproduces_uninterrupted_run(cells, tmp_path):
    from transformers import TrainerCallback

    from geneformer.train import pretrain

    small = _crop(cells.select(range(16)), 64)
    cfg = architecture_config("tiny", 25426, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    kw = dict(config=cfg, vocab="V1", max_steps=8, batch_size=4, learning_rate=1e-2, warmup=2,
              logging_steps=1, save_steps=3, seed=3, **QUIET)

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                control.should_training_stop = True

    full = pretrain(small, tmp_path / "full", **kw)
    part = pretrain(small, tmp_path / "part", callbacks=[Interrupt()], **kw)
    assert part.global_step == 3 and (tmp_path / "part" / "checkpoint-3").is_dir()
    resumed = pretrain(small, tmp_path / "part", resume_from_checkpoint=True, **kw)
    a = {h["step"]: h["loss"] for h in full.log_history if "loss" in h}
    b = {h["step"]: h["loss"] for h in resumed.log_history if "loss" in h}
    assert sorted(b) == list(range(1, 9))
    for step in range(4, 9):  # 4 steps per epoch: the resumed part crosses an epoch boundary
        assert b[step] == pytest.approx(a[step], abs=1e-5), step


def test_resume_skips_a_checkpoint_killed_mid_save(cells, tmp_path, caplog):
    """A kill while checkpoint-4 was being written (weights half there, no trainer_state.json): resume
    falls back to checkpoint-2 and finishes the run; naming the broken one explicitly is refused."""
    from geneformer._utils import InputFileError
    from geneformer.train import pretrain

    small = _crop(cells.select(range(16)), 64)
    kw = dict(config="tiny", vocab="V1", batch_size=4, logging_steps=1, save_steps=2, seed=3, **QUIET)
    pretrain(small, tmp_path / "run", max_steps=4, **kw)
    broken = tmp_path / "run" / "checkpoint-4"
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (broken / "trainer_state.json").unlink()
    with caplog.at_level("WARNING"):
        resumed = pretrain(small, tmp_path / "run", max_steps=4, resume_from_checkpoint=True, **kw)
    assert "Skipping incomplete checkpoint" in caplog.text and "checkpoint-4" in caplog.text
    steps = [h["step"] for h in resumed.log_history if "loss" in h]
    assert resumed.global_step == 4 and steps == [1, 2, 3, 4]  # 1-2 from checkpoint-2's history, 3-4 rerun
    assert (broken / "trainer_state.json").is_file()  # the resumed run saved checkpoint-4 anew
    (broken / "trainer_state.json").unlink()
    with pytest.raises(InputFileError, match="checkpoint-4 cannot be resumed from: no trainer_state.json"):
        pretrain(small, tmp_path / "run2", max_steps=4, resume_from_checkpoint=broken, **kw)


def test_a_finished_run_is_not_mixed_with_a_new_one(cells, tmp_path):
    from geneformer._utils import OptionError, OutputExistsError
    from geneformer.train import pretrain

    small = _crop(cells.select(range(8)), 32)
    kw = dict(config="tiny", vocab="V1", batch_size=4, save_steps=1, **QUIET)
    for bad in (0, -3):
        with pytest.raises(OptionError, match="max_steps must be a positive integer"):
            pretrain(small, tmp_path / "never", max_steps=bad, **kw)
    pretrain(small, tmp_path / "run", max_steps=2, **kw)
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    with pytest.raises(OutputExistsError, match="--resume.*--overwrite"):
        pretrain(small, tmp_path / "run", max_steps=1, **kw)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before
    pretrain(small, tmp_path / "run", max_steps=1, overwrite=True, **kw)
    assert [p.name for p in (tmp_path / "run").glob("checkpoint-*")] == ["checkpoint-1"]


def test_continual_learning_starts_from_checkpoint(trained, cells, tmp_path):
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    from geneformer.train import pretrain

    saved = load_file(str(trained.model_dir / "model.safetensors"))["bert.encoder.layer.0.attention.self.query.weight"]
    seen = {}

    class Capture(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen["w"] = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()

    out = pretrain(cells, tmp_path / "cl", from_checkpoint=trained.model_dir, max_steps=2, batch_size=8,
                   learning_rate=1e-4, warmup=0, callbacks=[Capture()], **QUIET)
    torch.testing.assert_close(seen["w"], saved)
    assert out.global_step == 2
    new = load_file(str(out.model_dir / "model.safetensors"))["bert.encoder.layer.0.attention.self.query.weight"]
    assert not torch.equal(new, saved)


def test_continual_learning_rejects_other_vocabulary(trained, pbmc_v1, pbmc_v2, tmp_path):
    from geneformer._utils import CorpusError
    from geneformer.train import pretrain

    v2_cells = _crop_v2(pbmc_v2.select(range(32)), CROP)
    with pytest.raises(CorpusError, match="V2 corpora"):
        pretrain(v2_cells, tmp_path / "a", from_checkpoint=trained.model_dir, max_steps=1, **QUIET)
    # a V2 model fed a V1 corpus: no <cls>/<eos>, and token ids beyond the V2 vocabulary
    v2_model = tmp_path / "v2model"
    GeneformerForMaskedLM(architecture_config("tiny", 20275, max_position_embeddings=256)).save_pretrained(v2_model)
    v1_cells = _crop(pbmc_v1.select(range(32)), CROP)
    with pytest.raises(CorpusError, match="another gene vocabulary|<cls>/<eos>"):
        pretrain(v1_cells, tmp_path / "b", from_checkpoint=v2_model, max_steps=1, **QUIET)
    with pytest.raises(ValueError, match="keeps the checkpoint's vocabulary"):
        pretrain(v1_cells, tmp_path / "c", from_checkpoint=v2_model, vocab="V1", max_steps=1, **QUIET)
    with pytest.raises(ValueError, match="config cannot be changed"):
        pretrain(v2_cells, tmp_path / "d", from_checkpoint=v2_model, config="tiny", max_steps=1, **QUIET)


def test_reference_style_pretrainer(cells, vocab_v1, tmp_path):
    """The reference's usage: GeneformerPretrainer(token_dictionary=..., example_lengths_file=...)."""
    from transformers import BertForMaskedLM, TrainingArguments

    from geneformer.compat import GeneformerPretrainer
    from geneformer.train import LengthGroupedSampler

    lengths_file = tmp_path / "lengths.pkl"
    lengths_file.write_bytes(pickle.dumps(list(cells["length"])))
    fields = TrainingArguments.__dataclass_fields__
    grouping = ({"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in fields
                else {"group_by_length": True})
    args = TrainingArguments(output_dir=str(tmp_path / "ref"), per_device_train_batch_size=8, max_steps=3,
                             length_column_name="length", save_strategy="no", use_cpu=True, **grouping, **QUIET)
    model = BertForMaskedLM(architecture_config("tiny", vocab_v1.size))
    trainer = GeneformerPretrainer(model=model, args=args, train_dataset=cells, token_dictionary=vocab_v1.token_dict,
                                   example_lengths_file=str(lengths_file))
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler) and sampler.lengths.tolist() == list(cells["length"])
    assert trainer.train().global_step == 3
    # without the lengths file the dataset's length column serves
    trainer = GeneformerPretrainer(model=model, args=args, train_dataset=cells, token_dictionary=vocab_v1.token_dict)
    assert trainer._get_train_sampler().lengths.tolist() == list(cells["length"])
    with pytest.raises(ValueError, match="mlm=True"):
        GeneformerPretrainer(model=model, args=args, train_dataset=cells, token_dictionary=vocab_v1.token_dict,
                             mlm=False)
    with pytest.raises(ValueError, match="token_dictionary"):
        GeneformerPretrainer(model=model, args=args, train_dataset=cells)


@pytest.mark.slow
def test_torchrun_two_processes(cells_dir, tmp_path, dicts_dir):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "GENEFORMER_DICTS_DIR": str(dicts_dir), "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "geneformer.cli.pretrain", str(cells_dir), "--output", str(out), "--config", "tiny",
           "--vocab", "V1", "--max-steps", "3", "--batch-size", "4", "--save-steps", "3", "--logging-steps", "1",
           "--eval-fraction", "0.1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model" / "model.safetensors").is_file()
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert proc.stdout.count("Trained 3 steps") == 2  # both ranks finished


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
def test_bad_inputs(cells, tmp_path):
    from geneformer._utils import CorpusError
    from geneformer.train import pretrain

    no_length = cells.remove_columns("length")
    with pytest.raises(ValueError, match="no 'length' column.*add_length_column"):
        pretrain(no_length, tmp_path / "a", config="tiny", vocab="V1", max_steps=1, **QUIET)
    with pytest.raises(CorpusError, match="longer than the model's max_position_embeddings"):
        pretrain(cells, tmp_path / "b", config={"hidden_size": 32, "num_attention_heads": 2,
                                                  "num_hidden_layers": 1, "intermediate_size": 32,
                                                  "max_position_embeddings": 64}, vocab="V1", max_steps=1, **QUIET)
    with pytest.raises(ValueError, match="vocab_size 20275 but the gene vocabulary has 25426"):
        pretrain(cells, tmp_path / "c", config={"vocab_size": 20275, "hidden_size": 32, "num_attention_heads": 2},
                 vocab="V1", max_steps=1, **QUIET)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="not writable"):
        pretrain(cells, blocker / "out", config="tiny", vocab="V1", max_steps=1, **QUIET)
    with pytest.raises(ValueError, match="No checkpoint"):
        pretrain(cells, tmp_path / "e", config="tiny", vocab="V1", max_steps=1, resume_from_checkpoint=True, **QUIET)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pretrain(tmp_path / "missing.dataset", tmp_path / "f", config="tiny", vocab="V1", **QUIET)
    with pytest.raises(ValueError, match="not a model folder"):
        pretrain(cells, tmp_path / "g", from_checkpoint=tmp_path, **QUIET)
    wrong_length = cells.map(lambda b: {"length": [n + 1 for n in b["length"]]}, batched=True, keep_in_memory=True)
    with pytest.raises(CorpusError, match="its 'length' says"):
        pretrain(wrong_length, tmp_path / "h", config="tiny", vocab="V1", max_steps=1, **QUIET)
    # the offered fix works
    from geneformer.train import add_length_column

    assert add_length_column(no_length)["length"][:5] == cells["length"][:5]


def test_cli(cells_dir, tmp_path):
    import typer
    from typer.testing import CliRunner

    from geneformer.cli import pretrain as cli_pretrain
    from geneformer.cli.main import guard_commands

    app = typer.Typer()
    cli_pretrain.register(app)
    guard_commands(app)  # as the real app does: input errors end with exit 2

    @app.command("noop")
    def _noop() -> None:  # a second command keeps "pretrain" a sub-command
        pass

    runner = CliRunner()
    res = runner.invoke(app, ["pretrain", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "Examples" in res.output and "--from-checkpoint" in res.output
    res = runner.invoke(app, ["pretrain", str(cells_dir), "--output", str(tmp_path / "o"), "--config", "tiny",
                              "--vocab", "V2", "--max-steps", "1"])
    assert res.exit_code == 2
    assert "another gene vocabulary" in res.output
    main_src = (SRC / "geneformer" / "cli" / "main.py").read_text()
    assert '"pretrain"' in main_src.split("COMMAND_MODULES")[1].splitlines()[0]


def test_shipped_configs():
    from geneformer.train import config_file

    ds = json.loads(config_file("deepspeed_zero2.json").read_text())
    assert ds["zero_optimization"]["stage"] == 2
    assert config_file("accelerate_multi_gpu.yaml").is_file()
    assert config_file("accelerate_deepspeed_zero2.yaml").is_file()
    with pytest.raises(FileNotFoundError, match="available"):
        config_file("nope.json")


def test_package_exports():
    import geneformer
    import geneformer.compat
    from geneformer.train import MaskedGeneTrainer, pretrain

    assert callable(pretrain) and pretrain.__name__ == "pretrain"
    assert geneformer.GeneformerPretrainer is geneformer.compat.GeneformerPretrainer
    assert issubclass(geneformer.GeneformerPretrainer, MaskedGeneTrainer)


def test_tensorboard_optional():
    from geneformer.train._pretraining import _report_to

    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.warns(UserWarning, match="tensorboard is not installed"):
            assert _report_to("auto") == "none"
    else:
        assert _report_to("auto") == ["tensorboard"]
    assert _report_to("none") == "none"
