"""``geneformer finetune`` and ``geneformer predict``: fine-tune a cell/gene classifier, then use it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

FINETUNE_HELP = """Fine-tune a Geneformer model to classify cells (or genes).

DATASET is a tokenized dataset folder (from `geneformer tokenize`, with the label column carried
along). A stratified test split is held out (--test-size), the rest is split into train/validation;
the fine-tuned model goes to OUTPUT/model, test metrics to OUTPUT/metrics.json, test predictions to
OUTPUT/finetune_predictions.csv and a confusion matrix to OUTPUT/finetune_conf_mat.png.

Cell classifiers train at most 5 epochs by default and stop early when the validation macro-F1 has
not improved for 2 epochs (--early-stopping 0: every epoch; the reference class Classifier keeps its
10 epochs); a line per epoch shows the losses and macro-F1 (-q: none). --head mean pools the genes'
states, usually far better than the reference's first-position pooler (--head first, the default);
--balanced weights the loss for imbalanced classes.

Examples:

  geneformer finetune pbmc.dataset --model Geneformer-V1-10M --label cell_type --output runs/pbmc

  geneformer finetune pbmc.dataset --model ./my_model --label cell_type --output runs/lora --lora --epochs 3

  geneformer finetune pbmc.dataset --model ./my_model --label cell_type --output runs/mean --head mean --balanced

  geneformer finetune pbmc.dataset --model gf-6L-30M-i2048 --label cell_type --output runs/search --n-trials 20

  geneformer finetune corpus.dataset --model gf-12L-95M-i4096 --classifier gene \\
      --gene-classes dosage.json --output runs/dosage
"""

#: the CLI's budget for cell classifiers (the reference's 10 epochs are hours on a CPU)
CLI_CELL_EPOCHS, CLI_PATIENCE = 5.0, 2

PREDICT_HELP = """Predict with a fine-tuned model: its folder (from `geneformer finetune`, OUTPUT/model) or a hub id.

--model takes the spellings of the other commands; a zoo name (a pretrained model, without a trained
classifier head) is answered with how to fine-tune it first.

Writes one row per cell (cell_id when the dataset has one, pred_label, prob_<class>...), or for a gene
classifier one row per gene with its class probabilities averaged over the cells that express it.

Examples:

  geneformer predict new_cells.dataset --model runs/pbmc/model --output predictions.csv
"""


def finetune_command(
    dataset: Path = typer.Argument(..., help="Tokenized dataset folder.", exists=True),
    model: str = typer.Option(..., "--model", "-m", help="Pretrained model: zoo name or folder."),
    label: Optional[str] = typer.Option(None, "--label", "-l", help="Dataset column with the cell classes."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder."),
    classifier: str = typer.Option("cell", "--classifier", help="cell or gene."),
    gene_classes: Optional[Path] = typer.Option(
        None, "--gene-classes", help="Gene classifier: JSON or pickle {class: [Ensembl IDs]}.", exists=True),
    epochs: Optional[float] = typer.Option(
        None, "--epochs", help=f"Training epochs (default {CLI_CELL_EPOCHS:g} cell / 1 gene)."),
    head: str = typer.Option("first", "--head", help="Cell pooling: first (reference), mean, or cls (V2 models)."),
    early_stopping: int = typer.Option(
        CLI_PATIENCE, "--early-stopping",
        help="Stop after N epochs without a better validation macro-F1 (0: train every epoch)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (default 5e-5)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Cells per batch (default 12)."),
    freeze_layers: int = typer.Option(0, "--freeze-layers", help="Freeze the first N encoder layers."),
    lora: bool = typer.Option(False, "--lora", help="Train LoRA adapters (query/value) and the head only."),
    n_trials: int = typer.Option(0, "--n-trials", help="Optuna hyperparameter search with N trials."),
    test_size: float = typer.Option(0.1, "--test-size", help="Fraction of cells held out for the test."),
    seed: int = typer.Option(42, "--seed", help="Seed for splits and training."),
    max_ncells: Optional[int] = typer.Option(None, "--max-ncells", help="Use at most N cells."),
    class_weights: bool = typer.Option(False, "--balanced", help="Weight the loss by inverse class frequency."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    from ..train import finetune

    gcd = _read_gene_classes(gene_classes) if gene_classes else None
    if epochs is None and classifier == "cell":
        epochs = CLI_CELL_EPOCHS
    res = finetune(dataset, model, output, label=label, classifier=classifier, gene_class_dict=gcd,
                   head=head, early_stopping=early_stopping or None, epoch_summary=not quiet,
                   epochs=epochs, learning_rate=lr, batch_size=batch_size, freeze_layers=freeze_layers,
                   lora=lora, n_trials=n_trials, test_size=test_size, seed=seed, max_ncells=max_ncells,
                   class_weights="balanced" if class_weights else None, progress=False if quiet else None)
    m = res.metrics
    auc = f", ROC-AUC {m['roc_auc']:.3f}" if m.get("roc_auc") is not None else ""
    typer.echo(f"Test macro-F1 {m['macro_f1']:.3f}, accuracy {m['accuracy']:.3f}{auc} "
               f"({m['n_test']} test items, {len(m['classes'])} classes). Model: {res.model_dir}")


def predict_command(
    dataset: Path = typer.Argument(..., help="Tokenized dataset folder.", exists=True),
    model: str = typer.Option(..., "--model", "-m",
                              help="Fine-tuned model: a folder (OUTPUT/model of finetune) or a hub repository id."),
    output: Path = typer.Option(..., "--output", "-o", help="Output CSV file."),
    batch_size: int = typer.Option(100, "--batch-size", "-b", help="Cells per forward batch."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    from ..train import predict

    table = predict(dataset, model, output, batch_size=batch_size, device=device,
                    progress=False if quiet else None, overwrite=overwrite)
    typer.echo(f"Wrote {len(table)} predictions to {output}")


def _read_gene_classes(path: Path) -> dict:
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    else:
        from ..vocab import load_dict_file

        data = load_dict_file(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a dictionary {{class: [Ensembl IDs]}}.")
    return data


def register(app: typer.Typer) -> None:
    app.command("finetune", help=FINETUNE_HELP, no_args_is_help=True)(finetune_command)
    app.command("predict", help=PREDICT_HELP, no_args_is_help=True)(predict_command)
