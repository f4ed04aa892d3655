"""The offline end-to-end demo (``make demo``): a new vocabulary and rank value encoding of real cells.

Uses the 700 PBMCs that ship inside the scanpy wheel (``scanpy.datasets.pbmc68k_reduced``), so it
needs no network and no published files:

1. recover raw counts from ``.raw`` (log-normalised values of 765 genes);
2. estimate each gene's non-zero median and build a vocabulary from these cells;
3. tokenize the cells with that vocabulary;
4. pretrain a mini model by masked-gene modelling;
5. embed the cells, draw a UMAP coloured by cell type, and compare zero-shot kNN cell-type accuracy
   of the pretrained and a randomly initialised model;
6. fine-tune a cell-type classifier and score it on held-out cells;
7. in silico deletion of every gene of a few CD8+ cytotoxic T cells, measuring the shift toward NK
   cells (goal-state modelling), and its statistics (each gene's FDR in the report);
8. write a short report (text + PNGs) next to the outputs.

    python examples/demo.py --output demo_output

With ``GENEFORMER_MODEL=<zoo name or model folder>`` (or ``--model``) the same steps run on that
model and its published V1/V2 vocabulary (genes matched by symbol) instead of steps 2 and 4.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger("geneformer.demo")


def load_pbmc68k_counts():
    """The scanpy PBMC sample with integer counts recovered from its log-normalised ``.raw``.

    ``raw.X`` holds ``log1p(count * s)`` with one scale ``s`` per cell; ``expm1`` undoes the log
    and dividing by the cell's smallest non-zero value (a count of 1 in practice) undoes ``s``.
    """
    import anndata as ad
    import scanpy as sc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pbmc = sc.datasets.pbmc68k_reduced()
    x = sp.csr_matrix(pbmc.raw.X, dtype=np.float64)
    x.data = np.expm1(x.data)
    unit = np.asarray([x.data[a:b].min() if b > a else 1.0 for a, b in zip(x.indptr[:-1], x.indptr[1:])])
    x.data = np.rint(x.data / np.repeat(unit, np.diff(x.indptr)))
    counts = sp.csr_matrix(x, dtype=np.int32)
    obs = pbmc.obs[["bulk_labels", "n_counts"]].rename(columns={"bulk_labels": "cell_type"}).copy()
    obs["cell_type"] = obs["cell_type"].astype(str)
    obs["cell_id"] = obs.index.astype(str)
    var = pbmc.raw.var[[]].copy()
    var.index = var.index.astype(str)
    return ad.AnnData(X=counts, obs=obs, var=var)


#: the demo's mini architecture (a 3-layer, 64-wide BERT: minutes on 2 CPU cores)
MINI_CONFIG = dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                   max_position_embeddings=1024, hidden_dropout_prob=0.02, attention_probs_dropout_prob=0.02)
PRETRAIN_STEPS = 200


def knn_accuracy(embs: np.ndarray, labels: np.ndarray, k: int = 10, seed: int = 0) -> float:
    """Zero-shot cell-type accuracy: 5-fold cross-validated k-nearest-neighbour classification."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    return float(cross_val_score(KNeighborsClassifier(k), embs, labels, cv=cv).mean())


def pretrain_mini(dataset, vocab, output: Path, steps: int = PRETRAIN_STEPS):
    """Step 4: pretrain the mini model; returns it, a random-init twin, and report entries."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from geneformer.train import pretrain

    t = time.perf_counter()
    res = pretrain(dataset, output / "pretrain", config=dict(MINI_CONFIG), vocab=vocab, max_steps=steps,
                   batch_size=16, learning_rate=1e-3, warmup=0.05, seed=0, disable_tqdm=True, report_to=[],
                   save_steps=10**6)
    model = BertForMaskedLM.from_pretrained(res.model_dir)
    loss = res.train_metrics.get("train_loss", float("nan"))
    print(f"[4/8] Pretrained a mini model ({MINI_CONFIG['num_hidden_layers']} layers x "
          f"{MINI_CONFIG['hidden_size']}) for {steps} masked-gene steps in {time.perf_counter() - t:.0f}s "
          f"(mean loss {loss:.2f}); saved to {res.model_dir}.")
    torch.manual_seed(0)
    random_model = BertForMaskedLM(BertConfig(vocab_size=vocab.size, pad_token_id=vocab.pad_id, hidden_act="relu",
                                              **MINI_CONFIG))
    return model, random_model, {"model_dir": str(res.model_dir), "pretrain_loss": loss}


def embed_and_compare(model, random_model, dataset, vocab, output: Path, title: str) -> dict:
    """Step 5: embed, draw the UMAP, and compare zero-shot kNN accuracy with a random-init twin."""
    from geneformer.embeddings import cell_embeddings
    from geneformer.plotting import plot_umap

    labels = np.asarray(dataset["cell_type"])
    embs = cell_embeddings(model, dataset, mode="cell", emb_layer=-1, vocab=vocab, progress=False)
    rand = cell_embeddings(random_model, dataset, mode="cell", emb_layer=-1, vocab=vocab, progress=False)
    np.save(output / "cell_embeddings.npy", embs)
    acc_pre, acc_rand = knn_accuracy(embs, labels), knn_accuracy(rand, labels)
    umap_png = plot_umap(embs, labels, output / "umap_cell_type.png", label="cell type", title=title)
    print(f"[5/8] Cell embeddings ({embs.shape[1]} dims) -> {umap_png}; zero-shot kNN cell-type accuracy: "
          f"pretrained {acc_pre:.3f} vs random init {acc_rand:.3f}.")
    return {"knn_accuracy_pretrained": acc_pre, "knn_accuracy_random_init": acc_rand, "umap": str(umap_png)}


FINETUNE_EPOCHS = 8.0


def finetune_classifier(dataset, model_dir: str, vocab_dir: Path | None, output: Path,
                        epochs: float = FINETUNE_EPOCHS) -> dict:
    """Step 6: fine-tune the pretrained mini model as a cell-type classifier; held-out macro-F1."""
    from geneformer.train import finetune

    t = time.perf_counter()
    # a small model pooled at <cls> needs a brisk learning rate to learn in minutes
    res = finetune(dataset, model_dir, output / "finetune", label="cell_type", epochs=epochs, learning_rate=2e-3,
                   batch_size=16, test_size=0.2, eval_size=0.1, seed=0, progress=False,
                   training_args={"logging_strategy": "no", "disable_tqdm": True, "warmup_ratio": 0.1,
                                  "save_strategy": "no", "load_best_model_at_end": False},
                   token_dictionary_file=vocab_dir / "token_dictionary.json" if vocab_dir else None)
    m = res.metrics
    print(f"[6/8] Fine-tuned a cell-type classifier ({len(m['classes'])} classes, {m['n_train']} training cells) "
          f"in {time.perf_counter() - t:.0f}s: held-out macro-F1 {m['macro_f1']:.3f}, accuracy {m['accuracy']:.3f} "
          f"on {m['n_test']} cells.")
    return {"finetune_macro_f1": float(m["macro_f1"]), "finetune_accuracy": float(m["accuracy"]),
            "finetune_dir": str(res.output_dir)}


# The sample's labels come from correlation with bulk-sorted profiles: its 240 "Dendritic" cells are
# mostly LYZ+/CST3+ monocytes, so a monocyte -> dendritic pair would read noise into a label. CD8+
# cytotoxic T cells and CD56+ NK cells are both supported by their markers (NKG7/GNLY in 93-100%)
# and lie next to each other (one Louvain cluster holds most of both): a pair whose shift can mean
# something.
START_STATE, GOAL_STATE = "CD8+ Cytotoxic T", "CD56+ NK"
FDR_LEVEL = 0.05


def summarize_goal_shifts(table, goal: str = GOAL_STATE, n: int = 5, alpha: float = FDR_LEVEL) -> tuple[str, dict]:
    """The report's reading of a ``goal_state_shift`` table: the top shifts toward ``goal`` with their
    FDR and detections, and a plain statement when no gene reaches ``alpha``.

    Genes detected in one cell only are listed after the others (a single value has no spread).
    """
    t = table.copy()
    t["_single"] = t["N_Detections"] <= 1
    t = t.sort_values(["_single", "Shift_to_goal_end"], ascending=[True, False])
    n_sig = int((t["Goal_end_FDR"] < alpha).sum())
    top = t.head(n)
    genes = [f"{g} (shift {v:+.2e}, FDR {f:.2g}, {int(d)} cell{'s' if d != 1 else ''})"
             for g, v, f, d in zip(top["Gene_name"], top["Shift_to_goal_end"], top["Goal_end_FDR"], top["N_Detections"])]
    min_fdr = float(t["Goal_end_FDR"].min()) if len(t) else float("nan")
    if n_sig:
        verdict = f"{n_sig} of {len(t)} genes shift significantly toward {goal} (FDR < {alpha:g})."
    else:
        verdict = (f"No deletion shifts the cells significantly toward {goal}: the lowest FDR of {len(t)} genes is "
                   f"{min_fdr:.2g} (>= {alpha:g}); the genes below are the largest shifts, not findings.")
    n_single = int(t["_single"].sum())
    if n_single:
        verdict += f" {n_single} genes were seen in one cell only."
    info = {"goal_state_verdict": verdict, "significant_goal_shift_genes": n_sig,
            "min_goal_fdr": min_fdr, "top_goal_shift_genes": "; ".join(genes)}
    return verdict + " Top: " + "; ".join(genes), info


def goal_state_perturbation(dataset, model_dir: str, vocab, vocab_dir: Path | None, output: Path, n_cells: int = 4,
                            version: str = "V2") -> dict:
    """Step 7: delete each gene of a few CD8+ T cells; which deletions move them toward NK cells?"""
    import torch

    from geneformer import InSilicoPerturberStats, settings
    from geneformer.embeddings import cell_embeddings
    from geneformer.models import load_model
    from geneformer.perturb import perturb

    t = time.perf_counter()
    model = load_model(model_dir, device="cpu")
    labels = np.asarray(dataset["cell_type"])
    # mean-pooled cell embeddings: the mini model's <cls> state is never trained directly
    embs = cell_embeddings(model, dataset, mode="cell", emb_layer=-1, vocab=vocab, progress=False)
    state_embs = {s: torch.tensor(embs[labels == s].mean(axis=0)) for s in (START_STATE, GOAL_STATE)}
    states = {"state_key": "cell_type", "start_state": START_STATE, "goal_state": GOAL_STATE, "alt_states": []}
    isp_dir = output / "perturb"
    # a vocabulary of the demo's own needs its files; a published one is found by version
    files = {} if vocab_dir is None else {"token_dictionary_file": vocab_dir / "token_dictionary.json"}
    df = perturb(dataset, model, "all", "delete", emb_mode="cell", state_key="cell_type", start_state=START_STATE,
                 goal_state=GOAL_STATE, state_embs=state_embs, max_ncells=n_cells, model_version=version,
                 output_dir=isp_dir, prefix="demo", annotate=False, progress=False, **files)
    if vocab_dir is not None:
        files["gene_name_id_dictionary_file"] = vocab_dir / "gene_name_id_dict.json"
    stats = InSilicoPerturberStats(mode="goal_state_shift", cell_states_to_model=states, model_version=version,
                                   **files)
    with settings.override(progress=False):  # the demo prints one line per step instead of bars
        table = stats.get_stats(isp_dir, None, output, "goal_state_shift")
    text, info = summarize_goal_shifts(table)
    print(f"[7/8] Deleted each gene of {n_cells} {START_STATE} cells in silico ({len(df)} results, "
          f"{time.perf_counter() - t:.0f}s). {text} Statistics in {output / 'goal_state_shift.csv'}.")
    return {"perturbations": int(len(df)), "goal_state_pair": f"{START_STATE} -> {GOAL_STATE}", **info,
            "goal_state_stats": str(output / "goal_state_shift.csv")}


#: What a demo run writes into its output folder; a new run replaces these and nothing else.
DEMO_OUTPUTS = ("vocab", "pbmc68k.dataset", "pretrain", "finetune", "perturb", "report.txt")


def _clear_previous_run(output: Path) -> None:
    """Remove a previous demo run's outputs, so that ``make demo`` always starts fresh (pretraining
    would otherwise resume from the old checkpoints, and fine-tuning refuses an existing model)."""
    for name in DEMO_OUTPUTS:
        path = output / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def run(output: Path, pretrain_steps: int = PRETRAIN_STEPS, finetune_epochs: float = FINETUNE_EPOCHS,
        model: str | None = None) -> dict:
    """Run the demo into ``output``; with ``model`` (a zoo name or folder, default ``$GENEFORMER_MODEL``)
    the published model and vocabulary replace the demo's own vocabulary and mini pretraining."""
    output.mkdir(parents=True, exist_ok=True)
    _clear_previous_run(output)
    report: dict = {}
    t0 = time.perf_counter()
    adata = load_pbmc68k_counts()
    report["cells"], report["genes"] = adata.n_obs, adata.n_vars
    print(f"[1/8] Loaded {adata.n_obs} PBMCs x {adata.n_vars} genes from the scanpy wheel; "
          f"raw counts recovered from log-normalised values ({int(adata.X.sum())} UMIs in these genes).")
    model = model or os.environ.get("GENEFORMER_MODEL") or None
    if model:
        report.update(_run_published(adata, model, output, finetune_epochs))
    else:
        report.update(_run_own_vocabulary(adata, output, pretrain_steps, finetune_epochs))
    report["seconds"] = time.perf_counter() - t0
    lines = [f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in report.items()]
    (output / "report.txt").write_text("Geneformer demo\n" + "\n".join(lines) + "\n")
    print(f"[8/8] Done in {report['seconds']:.1f}s; report in {output / 'report.txt'}.")
    return report


def _run_published(adata, model_src: str, output: Path, finetune_epochs: float) -> dict:
    """Steps 2-7 with a published model (or any local checkpoint with a V1/V2 vocabulary)."""
    import torch
    from transformers import BertForMaskedLM

    from geneformer.models import load_model
    from geneformer.models import model_vocab_version
    from geneformer.tokenization import tokenize_anndata
    from geneformer.vocab import GeneVocab

    model = load_model(model_src, device="cpu")
    version = model_vocab_version(model) or "V2"
    vocab = GeneVocab.load(version)
    print(f"[2/8] Using {model_src} ({model.config.num_hidden_layers} layers x {model.config.hidden_size}) "
          f"with the published {version} vocabulary of {vocab.size} tokens.")
    dataset = tokenize_anndata(adata, vocab, gene_symbol_column="index",
                               custom_attr_name_dict={"cell_type": "cell_type", "cell_id": "cell_id"})
    lengths = np.asarray(dataset["length"])
    print(f"[3/8] Tokenized {len(dataset)} cells by gene symbol (mean {lengths.mean():.0f} tokens).")
    torch.manual_seed(0)
    random_model = BertForMaskedLM(model.config)
    print("[4/8] No pretraining needed: the published weights are used as they are.")
    out = {"model_dir": str(model_src), "vocab_size": vocab.size, "tokenized": len(dataset),
           "mean_length": float(lengths.mean())}
    out.update(embed_and_compare(model, random_model, dataset, vocab, output,
                                 f"{Path(str(model_src)).name} embeddings of {len(dataset)} PBMCs"))
    out.update(finetune_classifier(dataset, str(model_src), None, output, epochs=finetune_epochs))
    out.update(goal_state_perturbation(dataset, str(model_src), vocab, None, output, version=version))
    return out


def _run_own_vocabulary(adata, output: Path, pretrain_steps: int, finetune_epochs: float) -> dict:
    """Steps 2-7 from scratch: the demo's own vocabulary, tokens and mini pretrained model."""
    from geneformer.vocab import build_vocab, estimate_gene_medians
    from geneformer import TranscriptomeTokenizer

    report: dict = {}

    medians = estimate_gene_medians([adata], exact=True, progress=False)
    vocab = build_vocab(medians, special_tokens=True)
    vocab.gene_name_id = {g: g for g in vocab.genes}  # the demo's gene IDs are symbols
    vocab_dir = vocab.save(output / "vocab")
    report["vocab_size"] = vocab.size
    print(f"[2/8] Gene medians of {len(medians)} detected genes -> vocabulary of {vocab.size} tokens "
          f"({', '.join(vocab.special_tokens)} + genes), saved to {vocab_dir}.")

    tk = TranscriptomeTokenizer({"cell_type": "cell_type", "cell_id": "cell_id"}, vocab=vocab,
                                use_h5ad_index=True)
    dataset = tk.tokenize_files([adata], output / "pbmc68k.dataset", overwrite=True, progress=False)
    lengths = np.asarray(dataset["length"])
    first = dataset[0]
    top = [vocab.id_to_token[t] for t in first["input_ids"][1:6]]
    report.update(tokenized=len(dataset), mean_length=float(lengths.mean()))
    print(f"[3/8] Tokenized {len(dataset)} cells (mean {lengths.mean():.0f} tokens, <cls> ... <eos>) to "
          f"{output / 'pbmc68k.dataset'}; cell {first['cell_id']} ({first['cell_type']}) ranks {', '.join(top)} first.")
    model, random_model, info = pretrain_mini(dataset, vocab, output, steps=pretrain_steps)
    report.update(info)
    report.update(embed_and_compare(model, random_model, dataset, vocab, output,
                                    f"Mini Geneformer embeddings of {len(dataset)} PBMCs"))
    report.update(finetune_classifier(dataset, report["model_dir"], vocab_dir, output, epochs=finetune_epochs))
    report.update(goal_state_perturbation(dataset, report["model_dir"], vocab, vocab_dir, output))
    return report


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Geneformer offline demo")
    ap.add_argument("--output", type=Path, default=Path("demo_output"))
    ap.add_argument("--pretrain-steps", type=int, default=PRETRAIN_STEPS)
    ap.add_argument("--finetune-epochs", type=float, default=FINETUNE_EPOCHS)
    ap.add_argument("--model", default=None, help="zoo name or model folder (default: $GENEFORMER_MODEL)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()  # the demo's own lines say what happens
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    run(args.output, pretrain_steps=args.pretrain_steps, finetune_epochs=args.finetune_epochs, model=args.model)


if __name__ == "__main__":
    main()
