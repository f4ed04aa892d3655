"""Fine-tuning benchmark: does masked-gene pretraining help a small Geneformer classify PBMC cell types?

On ``../shared/data/pbmc3k_raw_seurat_labels.h5ad`` (``cell_type``, ``unlabeled`` dropped), 20% of
the cells are held out (stratified, seed 0). The rest are tokenized with the V1 vocabulary (our
tokenizer, top 512 genes per cell) and used to

(a) pretrain a mini model (3 layers, hidden 64, 4 heads, like the golden mini-V1) with
    ``geneformer.train.pretrain`` for a few hundred masked-gene steps, then fine-tune it;
(b) fine-tune the same architecture from random initialisation with the same budget;

both with the reference's head (``Classifier``: BertForSequenceClassification, first-position pooler)
and with a mean-over-genes head (``GeneformerFineTuningModel``), same epochs, batch and learning rate;
(c) fit a logistic regression on log-normalised counts (normalize_total 1e4 + log1p, 2,000 highly
    variable genes chosen on the training cells).

Prints macro-F1 and accuracy on the held-out cells and the CPU time (process time, all threads)
and wall time of each step, plus fp32 vs int8-dynamic-quantized inference on the test cells.

    python benchmarks/finetune.py [--pretrain-steps 250] [--epochs 2] [--max-len 512] [--threads N]
"""

from __future__ import annotations

import _isolate  # noqa: F401  (first: keeps benchmarks/ off sys.path; see _isolate.py)

import os  # noqa: E402

import argparse  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("GENEFORMER_SHARED_DIR", HERE.parents[0].parent / "shared"))
TIMES: dict[str, tuple[float, float]] = {}


@contextmanager
def timed(name: str):
    c0, w0 = time.process_time(), time.perf_counter()
    yield
    TIMES[name] = (time.process_time() - c0, time.perf_counter() - w0)
    print(f"  [{name}: {TIMES[name][0]:.1f} s CPU, {TIMES[name][1]:.1f} s wall]", flush=True)


def mini_config(max_len: int) -> dict:
    return dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                max_position_embeddings=max_len, hidden_act="relu", hidden_dropout_prob=0.02,
                # no attention dropout: it forces PyTorch's slow "math" attention on CPU (4x slower here)
                attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12, initializer_range=0.02,
                type_vocab_size=2, position_embedding_type="absolute")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain-steps", type=int, default=250)
    ap.add_argument("--pretrain-batch-size", type=int, default=8)
    ap.add_argument("--pretrain-lr", type=float, default=1e-3)
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=512, help="genes per cell (top-ranked)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--workdir", default=None, help="keep outputs here (default: a temporary folder)")
    args = ap.parse_args()

    import anndata as ad
    import scanpy as sc
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import train_test_split
    from transformers import BertConfig, BertForMaskedLM

    from geneformer.compat import Classifier
    from geneformer.tokenization import tokenize_anndata
    from geneformer.train import pretrain
    from geneformer.train import load_id_class_dict
    from geneformer.models import load_finetuned, quantize_dynamic_int8

    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not os.environ.get("GENEFORMER_DICTS_DIR") and (SHARED / "dicts").is_dir():
        os.environ["GENEFORMER_DICTS_DIR"] = str(SHARED / "dicts")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gf-finetune-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"torch threads {torch.get_num_threads()}, work folder {work}")

    # ---- data -----------------------------------------------------------------------------------
    adata = ad.read_h5ad(SHARED / "data" / "pbmc3k_raw_seurat_labels.h5ad")
    adata = adata[adata.obs["cell_type"] != "unlabeled"].copy()
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    idx_train, idx_test = train_test_split(np.arange(adata.n_obs), test_size=0.2, random_state=0, stratify=labels)
    print(f"{adata.n_obs} labelled cells, {len(set(labels))} types; {len(idx_train)} train / {len(idx_test)} test")
    attrs = {"cell_type": "cell_type", "cell_id": "cell_id"}
    with timed("tokenize V1 (train + test)"):
        train_tok = tokenize_anndata(adata[np.sort(idx_train)].copy(), "V1", gene_id_column="ensembl_id",
                                     custom_attr_name_dict=attrs, model_input_size=args.max_len)
        test_tok = tokenize_anndata(adata[np.sort(idx_test)].copy(), "V1", gene_id_column="ensembl_id",
                                    custom_attr_name_dict=attrs, model_input_size=args.max_len)
    train_tok.save_to_disk(str(work / "train_tokens.dataset"))
    test_tok.save_to_disk(str(work / "test_tokens.dataset"))
    print(f"tokens per cell: mean {np.mean(train_tok['length']):.0f}, max {max(train_tok['length'])}")

    # ---- (a) pretraining ---------------------------------------------------------------------------
    with timed("pretrain mini model"):
        res = pretrain(work / "train_tokens.dataset", work / "pretrain", config=mini_config(args.max_len),
                       vocab="V1", max_steps=args.pretrain_steps, batch_size=args.pretrain_batch_size, learning_rate=args.pretrain_lr,
                       warmup=0.05, seed=0, save_steps=10 ** 9, logging_steps=50, report_to="none",
                       disable_tqdm=True)
    losses = [h["loss"] for h in res.log_history if "loss" in h]
    print(f"  masked-gene loss {losses[0]:.2f} -> {losses[-1]:.2f} over {res.global_step} steps")
    pretrained = res.model_dir

    # ---- (b) the same architecture, random weights ------------------------------------------------
    cfg = BertConfig(vocab_size=25426, pad_token_id=0, **mini_config(args.max_len))
    torch.manual_seed(0)
    random_dir = work / "random_init"
    BertForMaskedLM(cfg).save_pretrained(str(random_dir))

    # ---- fine-tuning, same budget for both -------------------------------------------------------------
    results: dict[str, tuple[float, float]] = {}
    targs = {"num_train_epochs": args.epochs, "per_device_train_batch_size": args.batch_size,
             "per_device_eval_batch_size": 64, "learning_rate": args.lr, "warmup_steps": 0.1,
             "weight_decay": 0.01, "save_strategy": "no", "disable_tqdm": True}
    prep = Classifier(classifier="cell", cell_state_dict={"state_key": "cell_type", "states": "all"},
                      model_version="V1", progress=False)
    paths = prep.prepare_data(work / "train_tokens.dataset", work / "prepared", "pbmc", test_size=0)
    id_class = load_id_class_dict(paths["id_class_dict"])
    test_prep = prep.prepare_data(work / "test_tokens.dataset", work / "prepared_test", "pbmc", test_size=0,
                                  id_class_dict_path=paths["id_class_dict"])
    for name, model_dir in (("pretrained + fine-tuned", pretrained), ("random init + fine-tuned", random_dir)):
        cc = Classifier(classifier="cell", cell_state_dict={"state_key": "cell_type", "states": "all"},
                        model_version="V1", training_args=targs, no_eval=True, forward_batch_size=64,
                        progress=False, seed=0)
        out = work / name.split()[0]
        shutil.rmtree(out, ignore_errors=True)
        with timed(f"fine-tune {name}"):
            cc.train_classifier(model_dir, len(id_class), paths["labeled"], None, out)
        with timed(f"predict test ({name})"):
            m = cc.evaluate_saved_model(out, paths["id_class_dict"], test_prep["labeled"], out, "test", predict=False)
        results[name] = (m["macro_f1"], m["acc"])

    # ---- the same two encoders with a mean-pooling head (GeneformerFineTuningModel, same budget) -------
    import datasets as hfds

    from geneformer.api import GeneformerConfig, GeneformerFineTuningModel

    train_lab = hfds.load_from_disk(str(paths["labeled"]))
    test_lab = hfds.load_from_disk(str(test_prep["labeled"]))
    n_steps = int(np.ceil(len(train_lab) / args.batch_size) * args.epochs)
    for name, model_dir in (("pretrained + mean-pool head", pretrained), ("random init + mean-pool head", random_dir)):
        cfg_ft = GeneformerConfig(model_name=str(model_dir), batch_size=args.batch_size, emb_mode="cell",
                                  emb_layer=0, vocab="V1")
        ft = GeneformerFineTuningModel(geneformer_config=cfg_ft, fine_tuning_head="classification",
                                       output_size=len(id_class))
        with timed(f"fine-tune {name}"):
            ft.train(train_dataset=train_lab, label="label", epochs=int(args.epochs), freeze_layers=0,
                     optimizer_params={"lr": args.lr, "weight_decay": 0.01}, silent=True,
                     lr_scheduler_params={"name": "linear", "num_warmup_steps": int(0.1 * n_steps)})
        pred = ft.get_outputs(test_lab, silent=True).argmax(1)
        y = np.asarray(test_lab["label"])
        results[name] = (f1_score(y, pred, average="macro"), accuracy_score(y, pred))

    # ---- int8 dynamic quantization of the fine-tuned pretrained model (CPU inference) -------------------
    cc = Classifier(classifier="cell", cell_state_dict={"state_key": "cell_type", "states": "all"},
                    model_version="V1", forward_batch_size=64, progress=False)
    fp32 = load_finetuned(work / "pretrained", "cell_classifier")
    int8 = quantize_dynamic_int8(fp32)
    with timed("predict test fp32"):
        m32 = cc.evaluate_model(fp32, len(id_class), id_class, test_prep["labeled"])
    with timed("predict test int8 dynamic"):
        m8 = cc.evaluate_model(int8, len(id_class), id_class, test_prep["labeled"])

    # ---- (c) logistic regression on log-normalised counts ----------------------------------------------
    with timed("logistic regression (log-normalised, 2,000 HVG)"):
        x = adata.copy()
        sc.pp.normalize_total(x, target_sum=1e4)
        sc.pp.log1p(x)
        hv = x[idx_train].copy()
        sc.pp.highly_variable_genes(hv, n_top_genes=2000)
        genes = hv.var_names[hv.var["highly_variable"]]
        xtr, xte = x[idx_train][:, genes].X, x[idx_test][:, genes].X
        clf = LogisticRegression(max_iter=2000, C=1.0)
        clf.fit(xtr, labels[idx_train])
        pred = clf.predict(xte)
    results["logistic regression"] = (f1_score(labels[idx_test], pred, average="macro"),
                                      accuracy_score(labels[idx_test], pred))

    # ---- report -------------------------------------------------------------------------------------------
    print("\nHeld-out PBMC cells (20%, stratified), macro-F1 / accuracy:")
    for name, (f1, acc) in results.items():
        print(f"  {name:30s} macro-F1 {f1:.3f}  accuracy {acc:.3f}")
    print(f"  int8 dynamic (pretrained)      macro-F1 {m8['macro_f1']:.3f}  accuracy {m8['acc']:.3f} "
          f"(fp32 {m32['macro_f1']:.3f} / {m32['acc']:.3f})")
    print("\nCPU time (process, all threads) / wall time:")
    for name, (cpu, wall) in TIMES.items():
        print(f"  {name:48s} {cpu:7.1f} s CPU {wall:7.1f} s wall")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
