"""``geneformer pretrain``: masked-gene pretraining or continual learning on a tokenized corpus.

Also runnable on its own, which is what distributed launchers need:
``torchrun --nproc_per_node 4 -m geneformer.cli.pretrain DATASET --output DIR`` or
``accelerate launch -m geneformer.cli.pretrain DATASET --output DIR``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

HELP = "Pretrain a Geneformer by masked-gene modelling, or continue training a checkpoint."

EXAMPLES = """Examples:

  geneformer pretrain corpus.dataset --output runs/v1 --config gf-6L-30M-i2048 --vocab V1 --max-steps 100000

  geneformer pretrain cancer.dataset --output runs/cl --from-checkpoint Geneformer-V2-104M --lr 1e-4

  geneformer pretrain corpus.dataset --output runs/v1 --resume    (continue after an interruption)

  torchrun --nproc_per_node 4 -m geneformer.cli.pretrain corpus.dataset --output runs/v1 --config my_config.json

Presets: gf-6L-30M-i2048 (V1-10M), gf-12L-30M-i2048, gf-12L-95M-i4096, gf-12L-104M-i4096 (V2-104M),
gf-18L-316M-i4096 (V2-316M), gf-20L-95M-i4096, tiny. DeepSpeed: --deepspeed zero2 (shipped ZeRO-2 config) or a JSON.
"""


def pretrain_command(
    dataset: Path = typer.Argument(..., help="Tokenized dataset folder (input_ids and length columns)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder: checkpoints, logs and model/."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="Architecture preset or a config JSON."),
    vocab: Optional[str] = typer.Option(None, "--vocab", help="Gene vocabulary: V1, V2 or a vocabulary folder."),
    from_checkpoint: Optional[Path] = typer.Option(
        None, "--from-checkpoint", help="Continue training this model folder (keeps its vocabulary)."
    ),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps (overrides --epochs)."),
    epochs: float = typer.Option(1.0, "--epochs", help="Passes over the corpus."),
    batch_size: int = typer.Option(12, "--batch-size", "-b", help="Cells per device and step."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate."),
    warmup: float = typer.Option(0.01, "--warmup", help="Warm-up steps (>= 1) or fraction of steps (< 1)."),
    weight_decay: float = typer.Option(0.001, "--weight-decay"),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Gradient accumulation steps."),
    seed: int = typer.Option(42, "--seed"),
    eval_fraction: float = typer.Option(0.0, "--eval-fraction", help="Hold out this fraction for evaluation."),
    save_steps: int = typer.Option(1000, "--save-steps", help="Checkpoint (and evaluate) every N steps."),
    logging_steps: int = typer.Option(50, "--logging-steps"),
    deepspeed: Optional[str] = typer.Option(None, "--deepspeed", help="'zero2' or a DeepSpeed JSON config."),
    resume: bool = typer.Option(False, "--resume", help="Resume from the newest complete checkpoint in --output."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start afresh in an --output that holds a previous run."),
    compute_length: bool = typer.Option(False, "--compute-length", help="Add a missing length column."),
    workers: int = typer.Option(0, "--workers", help="Data-loader worker processes."),
    fused_attention_dropout: bool = typer.Option(
        True, "--fused-attention-dropout/--no-fused-attention-dropout",
        help="Exact attention dropout at fused-kernel speed on CPU (off: PyTorch's slower sdpa dropout path).",
    ),
) -> None:
    """Pretrain a Geneformer by masked-gene modelling, or continue training a checkpoint."""
    from ..train import pretrain
    from ._errors import fail

    try:
        result = pretrain(
            str(dataset),
            output,
            config=config,
            vocab=vocab,
            from_checkpoint=from_checkpoint,
            max_steps=max_steps,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=lr,
            warmup=int(warmup) if warmup >= 1 else warmup,
            weight_decay=weight_decay,
            gradient_accumulation_steps=grad_accum,
            seed=seed,
            eval_fraction=eval_fraction,
            save_steps=save_steps,
            logging_steps=logging_steps,
            deepspeed=deepspeed,
            resume_from_checkpoint=True if resume else None,
            compute_length=compute_length,
            dataloader_num_workers=workers,
            fused_attention_dropout=fused_attention_dropout,
            overwrite=overwrite,
        )
    except TypeError as exc:  # a config or argument of the wrong kind; the guard takes the rest
        fail(exc)
    typer.echo(f"Trained {result.global_step} steps; model written to {result.model_dir}")
    for key in ("eval_masked_accuracy", "eval_masked_gene_loss"):
        if key in result.eval_metrics:
            typer.echo(f"{key}: {result.eval_metrics[key]:.4f}")


def register(app: typer.Typer) -> None:
    """Add ``pretrain`` to the ``geneformer`` command."""
    app.command("pretrain", help=HELP, epilog=EXAMPLES, no_args_is_help=True)(pretrain_command)


def main() -> None:
    """Run ``pretrain`` alone (for torchrun / accelerate launch)."""
    from .main import run_command

    run_command(register)


if __name__ == "__main__":
    main()
