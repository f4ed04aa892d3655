"""The bad-input suite: every command against a catalogue of bad inputs, in-process (typer's runner).

Each case must end with exit code 2, no traceback, a message naming the file / column / gene / flag
at fault, and no file of the test's folder added, removed or changed (outputs that exist stay as
they are; a failed run leaves no temporary behind). The catalogue holds truncated, empty and garbage
files of every format the commands read, code-carrying pickles, wrong vocabularies, counts that are
not counts, reserved names and out-of-range numbers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import pbmc3k_cells

N_CELLS = 30


class _Evil:
    """Unpickling this runs a shell command (creating a marker file): it must never be unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _dataset(src: Path, dst: Path, n: int) -> Path:
    import datasets

    datasets.load_from_disk(str(src)).select(range(n)).save_to_disk(str(dst))
    return dst


def _model_copy(src: Path, dst: Path, weights: bytes | None) -> Path:
    shutil.copytree(src, dst)
    if weights is None:
        (dst / "model.safetensors").unlink()
    else:
        (dst / "model.safetensors").write_bytes(weights)
    return dst


@pytest.fixture(scope="module")
def env(tmp_path_factory, data_dir, golden_dir):
    """The folder of inputs and existing outputs every case runs against (names for the case table)."""
    import scipy.sparse as sp

    d = tmp_path_factory.mktemp("bad")
    e: dict[str, str] = {"d": str(d), "marker": str(d / "PWNED")}
    cells = pbmc3k_cells(data_dir, N_CELLS)
    cells.write_h5ad(d / "cells.h5ad")
    raw = (d / "cells.h5ad").read_bytes()
    (d / "empty.h5ad").write_bytes(b"")
    (d / "trunc.h5ad").write_bytes(raw[: len(raw) // 2])
    (d / "garbage.h5ad").write_bytes(np.random.default_rng(0).bytes(4096))
    for name, value in (("neg", -3.0), ("nan", np.nan), ("inf", np.inf)):
        bad = cells.copy()
        x = bad.X.astype(np.float32).toarray()
        x[2, 7] = value
        bad.X = sp.csr_matrix(x)
        bad.write_h5ad(d / f"{name}.h5ad")
    e["gene7"] = str(cells.var_names[7])

    tok = golden_dir / "tokenized"
    _dataset(tok / "pbmc3k_raw_seurat_labels_V1.dataset", d / "v1.dataset", 12)
    _dataset(tok / "pbmc3k_raw_seurat_labels_V2.dataset", d / "v2.dataset", 12)
    import datasets

    datasets.load_from_disk(str(d / "v1.dataset")).select([]).save_to_disk(str(d / "none.dataset"))
    full = datasets.load_from_disk(str(tok / "pbmc3k_raw_seurat_labels_V1.dataset")).select(range(300))
    types = np.asarray(full["cell_type"])
    rows = np.concatenate([np.flatnonzero(types == t)[:6] for t in ("B", "NK")])
    full.select(np.sort(rows)).save_to_disk(str(d / "ft.dataset"))  # enough cells per class to split
    (d / "notds").mkdir()
    (d / "notds" / "readme.txt").write_text("not a dataset")

    models = golden_dir / "models"
    e["m1"], e["m2"] = str(models / "mini-V1"), str(models / "mini-V2")
    w = (models / "mini-V1" / "model.safetensors").read_bytes()
    _model_copy(models / "mini-V1", d / "trunc_model", w[: len(w) // 2])
    _model_copy(models / "mini-V1", d / "garbage_model", np.random.default_rng(1).bytes(2048))
    _model_copy(models / "mini-V1", d / "noweights_model", None)
    (d / "empty_model").mkdir()

    (d / "evil.pkl").write_bytes(pickle.dumps({"ctrl": _Evil(d / "PWNED")}))
    (d / "garbage.pkl").write_bytes(b"\x80\x04\x95garbage that is not a pickle")
    (d / "trunc.pkl").write_bytes(pickle.dumps({f"ENSG{i:011d}": i for i in range(100)})[:300])
    (d / "list.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    (d / "dict.pkl").write_bytes(pickle.dumps({"ENSG00000000003": 2}))
    (d / "empty.pkl").write_bytes(b"")
    (d / "trunc.safetensors").write_bytes(w[:100])
    (d / "trunc.npz").write_bytes(b"PK\x03\x04 truncated zip")
    (d / "garbage.npz").write_bytes(np.random.default_rng(2).bytes(512))
    (d / "garbage.json").write_text("{not json")

    (d / "evilres").mkdir()
    (d / "evilres" / "in_silico_delete_x_dict_cell_embs_0batch0_raw.pickle").write_bytes((d / "evil.pkl").read_bytes())
    (d / "garbres").mkdir()
    (d / "garbres" / "in_silico_delete_x_dict_cell_embs_0batch0_raw.pickle").write_bytes(b"\x80\x04garbage")
    (d / "emptyres").mkdir()
    e["v1res"] = str(golden_dir / "perturb" / "V1_delete_all")

    # outputs that exist already
    (d / "existing.csv").write_text("mine\n")
    (d / "existing.json").write_text("{}")
    (d / "existing_dir").mkdir()
    (d / "existing_dir" / "keep.txt").write_text("mine")
    (d / "tok" / "cells.dataset").mkdir(parents=True)
    (d / "tok" / "cells.dataset" / "keep.txt").write_text("mine")
    (d / "vocab").mkdir()
    (d / "vocab" / "vocab.json").write_text("{}")
    (d / "badvocab").mkdir()
    (d / "badvocab" / "token_dictionary.json").write_text("{not json")
    (d / "stats").mkdir()
    (d / "stats" / "s.csv").write_text("mine\n")
    (d / "run" / "model").mkdir(parents=True)
    (d / "run" / "model" / "config.json").write_text("{}")
    (d / "run2" / "checkpoint-5").mkdir(parents=True)  # killed mid-save: no trainer_state.json
    (d / "run2" / "checkpoint-5" / "model.safetensors").write_bytes(w[:50])
    (d / "isp").mkdir()
    # a complete-looking checkpoint whose optimizer state is a code-carrying pickle
    import torch

    evil_ckpt = shutil.copytree(models / "mini-V1", d / "run3" / "checkpoint-1")
    (evil_ckpt / "trainer_state.json").write_text(
        '{"global_step": 1, "epoch": 0.5, "max_steps": 2, "logging_steps": 50, "eval_steps": 1000, '
        '"save_steps": 1000, "train_batch_size": 12, "num_train_epochs": 1, "log_history": [], "total_flos": 0, '
        '"best_metric": null, "best_model_checkpoint": null, "stateful_callbacks": {}}')
    torch.save({"state": _Evil(d / "PWNED")}, evil_ckpt / "optimizer.pt")
    torch.save({"last_epoch": 1}, evil_ckpt / "scheduler.pt")
    return e


# (id, command line, words the message must contain); {name} is a path or value of ``env``
CASES = [
    # ---- tokenize ----
    ("tok-missing", "tokenize {d}/missing.h5ad -o {d}/out", ["missing.h5ad"]),
    ("tok-empty-file", "tokenize {d}/empty.h5ad -o {d}/out", ["empty.h5ad"]),
    ("tok-truncated", "tokenize {d}/trunc.h5ad -o {d}/out", ["trunc.h5ad"]),
    ("tok-garbage", "tokenize {d}/garbage.h5ad -o {d}/out", ["garbage.h5ad"]),
    ("tok-negative", "tokenize {d}/neg.h5ad -o {d}/out", ["neg.h5ad", "negative", "row 2", "{gene7}"]),
    ("tok-nan", "tokenize {d}/nan.h5ad -o {d}/out", ["nan.h5ad", "NaN", "row 2", "{gene7}"]),
    ("tok-inf", "tokenize {d}/inf.h5ad -o {d}/out", ["inf.h5ad", "infinite", "row 2", "{gene7}"]),
    ("tok-attr-input-ids", "tokenize {d}/cells.h5ad -o {d}/out --attr cell_type=input_ids", ["input_ids", "--attr"]),
    ("tok-attr-length", "tokenize {d}/cells.h5ad -o {d}/out --attr cell_type=length", ["length", "--attr"]),
    ("tok-attr-duplicate", "tokenize {d}/cells.h5ad -o {d}/out --attr cell_type=x --attr cell_id=x",
     ["cell_type", "cell_id", "'x'"]),
    ("tok-attr-twice", "tokenize {d}/cells.h5ad -o {d}/out --attr cell_type --attr cell_type", ["cell_type"]),
    ("tok-attr-empty", "tokenize {d}/cells.h5ad -o {d}/out --attr =x", ["--attr"]),
    ("tok-attr-missing-column", "tokenize {d}/cells.h5ad -o {d}/out --attr nope", ["nope"]),
    ("tok-version", "tokenize {d}/cells.h5ad -o {d}/out --model-version V3", ["V3"]),
    ("tok-vocab-missing", "tokenize {d}/cells.h5ad -o {d}/out --vocab {d}/novocab", ["novocab"]),
    ("tok-vocab-garbage", "tokenize {d}/cells.h5ad -o {d}/out --vocab {d}/badvocab", ["badvocab"]),
    ("tok-nproc-0", "tokenize {d}/cells.h5ad -o {d}/out --nproc 0", ["nproc"]),
    ("tok-chunk-0", "tokenize {d}/cells.h5ad -o {d}/out --chunk-size 0", ["--chunk-size"]),
    ("tok-chunk-negative", "tokenize {d}/cells.h5ad -o {d}/out --chunk-size -4", ["--chunk-size"]),
    ("tok-existing", "tokenize {d}/cells.h5ad -o {d}/tok", ["cells.dataset", "--overwrite"]),
    ("tok-layer", "tokenize {d}/cells.h5ad -o {d}/out --layer nope", ["nope"]),
    ("tok-gene-column", "tokenize {d}/cells.h5ad -o {d}/out --gene-id-column nope", ["nope"]),
    ("tok-symbol-column", "tokenize {d}/cells.h5ad -o {d}/out --gene-symbol-column nope", ["nope"]),
    ("tok-format", "tokenize {d}/cells.h5ad -o {d}/out --file-format xyz", ["xyz"]),
    ("tok-wrong-format", "tokenize {d}/cells.h5ad -o {d}/out --file-format loom", ["cells.h5ad"]),
    # ---- build-vocab ----
    ("bv-missing", "build-vocab {d}/missing.h5ad -o {d}/vout", ["missing.h5ad"]),
    ("bv-empty-file", "build-vocab {d}/empty.h5ad -o {d}/vout", ["empty.h5ad"]),
    ("bv-truncated", "build-vocab {d}/trunc.h5ad -o {d}/vout", ["trunc.h5ad"]),
    ("bv-garbage", "build-vocab {d}/garbage.h5ad -o {d}/vout", ["garbage.h5ad"]),
    ("bv-negative", "build-vocab {d}/neg.h5ad -o {d}/vout", ["neg.h5ad", "negative", "{gene7}"]),
    ("bv-nan", "build-vocab {d}/nan.h5ad -o {d}/vout", ["nan.h5ad", "NaN", "{gene7}"]),
    ("bv-inf", "build-vocab {d}/inf.h5ad -o {d}/vout", ["inf.h5ad", "infinite", "{gene7}"]),
    ("bv-existing", "build-vocab {d}/cells.h5ad -o {d}/vocab", ["vocab.json", "--overwrite"]),
    ("bv-output-is-file", "build-vocab {d}/cells.h5ad -o {d}/existing.csv", ["existing.csv", "--output"]),
    ("bv-digests-truncated", "build-vocab {d}/trunc.npz -o {d}/vout", ["trunc.npz"]),
    ("bv-digests-garbage", "build-vocab {d}/garbage.npz -o {d}/vout", ["garbage.npz"]),
    ("bv-nproc-0", "build-vocab {d}/cells.h5ad -o {d}/vout --nproc 0", ["nproc"]),
    ("bv-chunk-0", "build-vocab {d}/cells.h5ad -o {d}/vout --chunk-size 0", ["--chunk-size"]),
    ("bv-gene-type", "build-vocab {d}/cells.h5ad -o {d}/vout --gene-type protein_coding", ["gene_type"]),
    # ---- embed ----
    ("emb-missing", "embed {d}/missing.dataset -m {m1} -o {d}/e.csv", ["missing.dataset"]),
    ("emb-not-dataset", "embed {d}/notds -m {m1} -o {d}/e.csv", ["notds"]),
    ("emb-no-cells", "embed {d}/none.dataset -m {m1} -o {d}/e.csv", ["no cells"]),
    ("emb-truncated-weights", "embed {d}/v1.dataset -m {d}/trunc_model -o {d}/e.csv", ["trunc_model"]),
    ("emb-garbage-weights", "embed {d}/v1.dataset -m {d}/garbage_model -o {d}/e.csv", ["garbage_model"]),
    ("emb-no-weights", "embed {d}/v1.dataset -m {d}/noweights_model -o {d}/e.csv", ["noweights_model"]),
    ("emb-empty-model", "embed {d}/v1.dataset -m {d}/empty_model -o {d}/e.csv", ["empty_model"]),
    ("emb-unknown-model", "embed {d}/v1.dataset -m no-such-model -o {d}/e.csv", ["no-such-model"]),
    ("emb-wrong-vocab", "embed {d}/v2.dataset -m {m1} -o {d}/e.csv", ["V2"]),
    ("emb-max-ncells-negative", "embed {d}/v1.dataset -m {m1} -o {d}/e.csv --max-ncells -5", ["--max-ncells"]),
    ("emb-max-ncells-0", "embed {d}/v1.dataset -m {m1} -o {d}/e.csv --max-ncells 0", ["--max-ncells"]),
    ("emb-batch-0", "embed {d}/v1.dataset -m {m1} -o {d}/e.csv --batch-size 0", ["--batch-size"]),
    ("emb-layer", "embed {d}/v1.dataset -m {m1} -o {d}/e.csv --emb-layer 7", ["--emb-layer"]),
    ("emb-mode", "embed {d}/v1.dataset -m {m1} -o {d}/e.csv --mode nope", ["nope"]),
    ("emb-label", "embed {d}/v1.dataset -m {m1} -o {d}/e.csv --label nope", ["nope"]),
    ("emb-existing", "embed {d}/v1.dataset -m {m1} -o {d}/existing.csv", ["existing.csv", "--overwrite"]),
    ("emb-output-dir", "embed {d}/v1.dataset -m {m1} -o {d}/existing_dir", ["existing_dir"]),
    ("emb-format", "embed {d}/v1.dataset -m {m1} -o {d}/e.csv --format xyz", ["xyz"]),
    ("emb-extension", "embed {d}/v1.dataset -m {m1} -o {d}/e.xyz", ["e.xyz"]),
    ("emb-h5ad-truncated", "embed {d}/trunc.h5ad -m {m1} -o {d}/e.csv", ["trunc.h5ad"]),
    ("emb-h5ad-garbage", "embed {d}/garbage.h5ad -m {m1} -o {d}/e.csv", ["garbage.h5ad"]),
    ("emb-h5ad-negative", "embed {d}/neg.h5ad -m {m1} -o {d}/e.csv", ["neg.h5ad", "negative"]),
    ("emb-dtype", "embed {d}/v1.dataset -m {m1} -o {d}/e.csv --dtype fp64", ["fp64"]),
    # ---- perturb ----
    ("pt-missing-model", "perturb {d}/v1.dataset -m {d}/nomodel -o {d}/isp --prefix p", ["nomodel"]),
    ("pt-truncated-weights", "perturb {d}/v1.dataset -m {d}/trunc_model -o {d}/isp --prefix p", ["trunc_model"]),
    ("pt-not-dataset", "perturb {d}/notds -m {m1} -o {d}/isp --prefix p", ["notds"]),
    ("pt-no-cells", "perturb {d}/none.dataset -m {m1} -o {d}/isp --prefix p", ["no cells"]),
    ("pt-state-embs-evil", "perturb {d}/v2.dataset -m {m2} -o {d}/isp --prefix p --state-key cell_type "
     "--start-state B --goal-state NK --state-embs {d}/evil.pkl", ["evil.pkl", "refusing", "posix.system"]),
    ("pt-state-embs-garbage", "perturb {d}/v2.dataset -m {m2} -o {d}/isp --prefix p --state-key cell_type "
     "--start-state B --goal-state NK --state-embs {d}/garbage.pkl", ["garbage.pkl"]),
    ("pt-state-embs-truncated", "perturb {d}/v2.dataset -m {m2} -o {d}/isp --prefix p --state-key cell_type "
     "--start-state B --goal-state NK --state-embs {d}/trunc.pkl", ["trunc.pkl"]),
    ("pt-state-embs-empty", "perturb {d}/v2.dataset -m {m2} -o {d}/isp --prefix p --state-key cell_type "
     "--start-state B --goal-state NK --state-embs {d}/empty.pkl", ["empty.pkl"]),
    ("pt-state-embs-list", "perturb {d}/v2.dataset -m {m2} -o {d}/isp --prefix p --state-key cell_type "
     "--start-state B --goal-state NK --state-embs {d}/list.pkl", ["list.pkl"]),
    ("pt-state-embs-safetensors", "perturb {d}/v2.dataset -m {m2} -o {d}/isp --prefix p --state-key cell_type "
     "--start-state B --goal-state NK --state-embs {d}/trunc.safetensors", ["trunc.safetensors"]),
    ("pt-wrong-vocab-gene", "perturb {d}/v2.dataset -m {m1} -o {d}/isp --prefix p -g LYZ --emb-mode cell",
     ["V2 vocabulary"]),
    ("pt-type", "perturb {d}/v1.dataset -m {m1} -o {d}/isp --prefix p --type nope", ["nope"]),
    ("pt-gene", "perturb {d}/v1.dataset -m {m1} -o {d}/isp --prefix p -g NOTAGENE", ["NOTAGENE"]),
    ("pt-layer", "perturb {d}/v1.dataset -m {m1} -o {d}/isp --prefix p --emb-layer 9", ["--emb-layer"]),
    ("pt-max-ncells", "perturb {d}/v1.dataset -m {m1} -o {d}/isp --prefix p --max-ncells -1", ["--max-ncells"]),
    ("pt-rank-shift", "perturb {d}/v1.dataset -m {m1} -o {d}/isp --prefix p --type inhibit --rank-shift 7",
     ["rank_shift"]),
    ("pt-combos", "perturb {d}/v1.dataset -m {m1} -o {d}/isp --prefix p --combos 3", ["combos"]),
    ("pt-state-half", "perturb {d}/v1.dataset -m {m1} -o {d}/isp --prefix p --start-state B", ["state_key"]),
    ("pt-state-key", "perturb {d}/v2.dataset -m {m2} -o {d}/isp --prefix p --state-key nope --start-state B "
     "--goal-state NK", ["nope"]),
    ("pt-start-state", "perturb {d}/v2.dataset -m {m2} -o {d}/isp --prefix p --state-key cell_type "
     "--start-state Martian --goal-state NK", ["Martian"]),
    ("pt-version", "perturb {d}/v1.dataset -m {m1} -o {d}/isp --prefix p --model-version V3", ["V3"]),
    ("pt-batch-0", "perturb {d}/v1.dataset -m {m1} -o {d}/isp --prefix p --batch-size 0", ["batch_size"]),
    # ---- perturb-stats ----
    ("ps-wrong-vocab", "perturb-stats {v1res} -o {d}/stats --prefix new --model-version V2", ["--model-version V1"]),
    ("ps-missing", "perturb-stats {d}/nores -o {d}/stats --prefix new", ["nores"]),
    ("ps-empty-folder", "perturb-stats {d}/emptyres -o {d}/stats --prefix new", ["emptyres"]),
    ("ps-evil", "perturb-stats {d}/evilres -o {d}/stats --prefix new", ["_raw.pickle", "refusing"]),
    ("ps-garbage", "perturb-stats {d}/garbres -o {d}/stats --prefix new", ["_raw.pickle"]),
    ("ps-mode", "perturb-stats {v1res} -o {d}/stats --prefix new --mode nope", ["nope"]),
    ("ps-version", "perturb-stats {v1res} -o {d}/stats --prefix new --model-version V3", ["V3"]),
    ("ps-existing", "perturb-stats {v1res} -o {d}/stats --prefix s --model-version V1", ["s.csv", "--overwrite"]),
    ("ps-gene", "perturb-stats {v1res} -o {d}/stats --prefix new --model-version V1 --mode aggregate_data "
     "--genes ENSG99999999999", ["ENSG99999999999"]),
    ("ps-goal-without-states", "perturb-stats {v1res} -o {d}/stats --prefix new --mode goal_state_shift",
     ["cell_states_to_model"]),
    # ---- pretrain ----
    ("pre-max-steps-0", "pretrain {d}/v1.dataset -o {d}/pout -c tiny --vocab V1 --max-steps 0", ["max_steps"]),
    ("pre-max-steps-negative", "pretrain {d}/v1.dataset -o {d}/pout -c tiny --vocab V1 --max-steps -2",
     ["max_steps"]),
    ("pre-not-dataset", "pretrain {d}/notds -o {d}/pout -c tiny --vocab V1", ["notds"]),
    ("pre-missing", "pretrain {d}/missing.dataset -o {d}/pout -c tiny --vocab V1", ["missing.dataset"]),
    ("pre-no-cells", "pretrain {d}/none.dataset -o {d}/pout -c tiny --vocab V1", ["none.dataset"]),
    ("pre-ckpt-truncated", "pretrain {d}/v1.dataset -o {d}/pout --from-checkpoint {d}/trunc_model --max-steps 1",
     ["trunc_model"]),
    ("pre-ckpt-garbage", "pretrain {d}/v1.dataset -o {d}/pout --from-checkpoint {d}/garbage_model --max-steps 1",
     ["garbage_model"]),
    ("pre-ckpt-no-weights", "pretrain {d}/v1.dataset -o {d}/pout --from-checkpoint {d}/noweights_model "
     "--max-steps 1", ["noweights_model"]),
    ("pre-ckpt-empty", "pretrain {d}/v1.dataset -o {d}/pout --from-checkpoint {d}/empty_model", ["empty_model"]),
    ("pre-config", "pretrain {d}/v1.dataset -o {d}/pout -c nope --vocab V1", ["nope"]),
    ("pre-vocab", "pretrain {d}/v1.dataset -o {d}/pout -c tiny --vocab V3", ["V3"]),
    ("pre-wrong-vocab", "pretrain {d}/v2.dataset -o {d}/pout -c tiny --vocab V1 --max-steps 1", ["V1"]),
    ("pre-existing-run", "pretrain {d}/v1.dataset -o {d}/run -c tiny --vocab V1 --max-steps 1",
     ["--resume", "--overwrite"]),
    ("pre-resume-nothing", "pretrain {d}/v1.dataset -o {d}/pout2 -c tiny --vocab V1 --resume", ["No checkpoint"]),
    ("pre-resume-incomplete", "pretrain {d}/v1.dataset -o {d}/run2 -c tiny --vocab V1 --resume",
     ["No checkpoint", "run2"]),
    ("pre-resume-evil", "pretrain {d}/v1.dataset -o {d}/run3 --from-checkpoint {m1} --resume --max-steps 2",
     ["checkpoint-1"]),
    ("pre-batch-0", "pretrain {d}/v1.dataset -o {d}/pout -c tiny --vocab V1 --batch-size 0", ["batch"]),
    # ---- finetune / predict ----
    ("ft-batch-0", "finetune {d}/v1.dataset -m {m1} -l cell_type -o {d}/ft -b 0", ["batch_size"]),
    ("ft-epochs-0", "finetune {d}/v1.dataset -m {m1} -l cell_type -o {d}/ft --epochs 0", ["epochs"]),
    ("ft-label", "finetune {d}/v1.dataset -m {m1} -l nope -o {d}/ft", ["nope"]),
    ("ft-classifier", "finetune {d}/v1.dataset -m {m1} -l cell_type -o {d}/ft --classifier nope", ["nope"]),
    ("ft-test-size", "finetune {d}/v1.dataset -m {m1} -l cell_type -o {d}/ft --test-size 2", ["test_size"]),
    ("ft-truncated-weights", "finetune {d}/ft.dataset -m {d}/trunc_model -l cell_type -o {d}/ft", ["trunc_model"]),
    ("ft-gene-classes-evil", "finetune {d}/v1.dataset -m {m1} --classifier gene -o {d}/ft "
     "--gene-classes {d}/evil.pkl", ["evil.pkl", "refusing"]),
    ("ft-gene-classes-garbage", "finetune {d}/v1.dataset -m {m1} --classifier gene -o {d}/ft "
     "--gene-classes {d}/garbage.json", ["garbage.json"]),
    ("ft-no-cells", "finetune {d}/none.dataset -m {m1} -l cell_type -o {d}/ft", ["none.dataset"]),
    ("pred-not-finetuned", "predict {d}/v1.dataset -m {m1} -o {d}/p.csv", ["mini-V1", "fine-tuned"]),
    ("pred-output-dir", "predict {d}/v1.dataset -m {m1} -o {d}/existing_dir", ["existing_dir"]),
    ("pred-existing", "predict {d}/v1.dataset -m {m1} -o {d}/existing.csv", ["existing.csv", "--overwrite"]),
    ("pred-batch-0", "predict {d}/v1.dataset -m {m1} -o {d}/p.csv -b 0", ["batch_size"]),
    ("pred-empty-model", "predict {d}/v1.dataset -m {d}/empty_model -o {d}/p.csv", ["empty_model"]),
    # ---- convert-dict, models ----
    ("cd-evil", "convert-dict {d}/evil.pkl -o {d}/e.json", ["evil.pkl", "refusing"]),
    ("cd-garbage", "convert-dict {d}/garbage.pkl -o {d}/g.json", ["garbage.pkl"]),
    ("cd-truncated", "convert-dict {d}/trunc.pkl -o {d}/t.json", ["trunc.pkl"]),
    ("cd-empty", "convert-dict {d}/empty.pkl -o {d}/t.json", ["empty.pkl"]),
    ("cd-list", "convert-dict {d}/list.pkl -o {d}/l.json", ["list.pkl", "dictionary"]),
    ("cd-missing", "convert-dict {d}/missing.pkl", ["missing.pkl"]),
    ("cd-existing", "convert-dict {d}/dict.pkl -o {d}/existing.json", ["existing.json", "--overwrite"]),
    ("models-option", "models --nope", ["--nope"]),
    # ---- shards and merge ----
    ("merge-nothing", "merge {d}/never.dataset", ["never.dataset", "--shard"]),
    ("merge-existing", "merge {d}/v1.dataset", ["v1.dataset", "--overwrite"]),
    ("tok-shard-index", "tokenize {d}/cells.h5ad -o {d}/out --shard 4/4", ["--shard", "0..3"]),
    ("emb-shard-form", "embed {d}/v1.dataset -m {m1} -o {d}/s.csv --shard x", ["--shard", "I/N"]),
]


def _snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(folder))] = (p.stat().st_size, p.stat().st_mtime_ns,
                                               hashlib.sha1(p.read_bytes()).hexdigest())
    return out


@pytest.fixture(scope="module")
def runner():
    from typer.testing import CliRunner

    from geneformer.cli.main import app

    r = CliRunner()

    def invoke(args):
        # transformers' own handler keeps the stream it was created with: a closed, earlier capture
        for h in logging.getLogger("transformers").handlers:
            if type(h) is logging.StreamHandler:  # its own default handler, not a capture
                h.stream = sys.__stderr__  # not setStream: it flushes the closed one
        return r.invoke(app, args, env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})

    return invoke


def test_the_catalogue_is_large():
    assert len(CASES) >= 120 and len({c[0] for c in CASES}) == len(CASES)
    commands = {c[1].split()[0] for c in CASES}
    assert commands == {"tokenize", "build-vocab", "embed", "perturb", "perturb-stats", "pretrain", "finetune",
                        "predict", "convert-dict", "models", "merge"}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_ends_cleanly(case, env, runner):
    _, line, words = case
    folder = Path(env["d"])
    before = _snapshot(folder)
    res = runner(line.format(**env).split())
    out = res.output
    assert res.exit_code == 2, f"exit {res.exit_code}: {out}\n{res.exception!r}"
    assert "Traceback" not in out and isinstance(res.exception, SystemExit), out
    flat = " ".join(out.split())  # usage errors are wrapped in a box
    for w in words:
        assert w.format(**env) in out or w.format(**env) in flat, f"{w!r} not in: {out}"
    assert not Path(env["marker"]).exists(), "a pickle ran code"
    assert _snapshot(folder) == before, "a failed run changed, added or removed a file"
