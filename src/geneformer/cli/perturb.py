"""``geneformer perturb``: in silico perturbation of a tokenized dataset or an h5ad file."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

HELP = """Perturb genes in silico and measure how the cell and gene embeddings shift.

DATASET is a tokenized dataset folder (from `geneformer tokenize`) or an .h5ad file (tokenized on
the fly). Results go to OUTPUT/in_silico_{type}_{prefix}.parquet, one row per value: perturbed
gene(s) as tokens, Ensembl IDs and symbols; the affected gene likewise (none for the cell-level
value); state, cell, cell id; cosine_similarity (original vs perturbed embedding) or, for the
cell-level rows of a goal-state run, shift_toward_state. The table is what `geneformer.perturb.perturb()`
returns. The *_raw.pickle dictionaries next to it are what `geneformer perturb-stats` reads. An
interrupted run resumes where it stopped when rerun with the same arguments.
`--shard I/N` computes one slice (merge with `geneformer merge OUTPUT/in_silico_{type}_{prefix}.parquet`);
under `torchrun --nproc_per_node K -m geneformer.cli.perturb ...` the K processes share the work.

Examples:

  geneformer perturb pbmc_V1.dataset --model ./mini-V1 --output isp/ --prefix delete_all \\
      --emb-mode cell_and_gene --max-ncells 100

  geneformer perturb pbmc_V1.dataset --model ./mini-V1 --output isp/ --prefix trio \\
      --genes ENSG00000198851 --genes ENSG00000090382 --emb-mode cell_and_gene

  geneformer perturb kang_V2.dataset --model Geneformer-V2-104M --output isp/ --prefix goal \\
      --emb-mode cls --state-key condition --start-state ctrl --goal-state stim --state-embs states.pkl

  geneformer perturb pbmc.h5ad --model ./mini-V1 --output isp/ --prefix lyz_up --type overexpress --genes LYZ
"""


def perturb_command(
    dataset: Path = typer.Argument(..., help="Tokenized dataset folder or .h5ad file.", exists=True),
    model: str = typer.Option(..., "--model", "-m", help="Zoo name (see `geneformer models`) or model folder."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder."),
    prefix: str = typer.Option(..., "--prefix", help="Name of this run's outputs."),
    perturb_type: str = typer.Option("delete", "--type", help="delete, overexpress, inhibit or activate."),
    genes: List[str] = typer.Option(
        [], "--genes", "-g",
        help="Gene to perturb (Ensembl ID or symbol; repeat: perturbed together), or 'all' (default: each gene)."
    ),
    rank_shift: Optional[int] = typer.Option(None, "--rank-shift", help="inhibit/activate: quartiles moved (1-3)."),
    emb_mode: Optional[str] = typer.Option(
        None, "--emb-mode", help="cell, cls, cell_and_gene or cls_and_gene (default: cls for V2, cell for V1)."
    ),
    emb_layer: int = typer.Option(-1, "--emb-layer", help="0 = last layer, -1 = second-to-last."),
    combos: int = typer.Option(0, "--combos", help="1: perturb pairs (with --anchor: anchor + each gene)."),
    anchor: Optional[str] = typer.Option(None, "--anchor", help="Anchor gene for --combos 1."),
    max_ncells: Optional[int] = typer.Option(None, "--max-ncells", help="At most this many cells (seed 42)."),
    state_key: Optional[str] = typer.Option(None, "--state-key", help="Cell attribute holding the states."),
    start_state: Optional[str] = typer.Option(None, "--start-state", help="State of the cells to perturb."),
    goal_state: Optional[str] = typer.Option(None, "--goal-state", help="State to shift towards."),
    alt_state: List[str] = typer.Option([], "--alt-state", help="Alternative state (repeat)."),
    state_embs: Optional[Path] = typer.Option(
        None, "--state-embs", help="Pickle {state: embedding} (EmbExtractor.get_state_embs); default: computed."
    ),
    model_version: Optional[str] = typer.Option(None, "--model-version", help="V1 or V2 (default: from the model)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Sequences per forward (default: by memory)."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
    dtype: Optional[str] = typer.Option(None, help="fp32, bf16 or fp16 (default: bf16 on a CUDA GPU that supports it, else fp32)."),
    gene_names: Optional[str] = typer.Option(None, help="h5ad input: var column with gene IDs/symbols, or 'index'."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start afresh instead of resuming."),
    shard: Optional[str] = typer.Option(
        None, "--shard", help="I/N: compute only slice I (from 0) of N; then `geneformer merge` the tidy table."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    from ..perturb import perturb

    chosen = "all" if not genes or [g.lower() for g in genes] == ["all"] else list(genes)
    path = perturb(
        dataset, model, chosen, perturb_type, emb_mode=emb_mode, rank_shift=rank_shift,
        combos=combos, anchor_gene=anchor, state_key=state_key, start_state=start_state, goal_state=goal_state,
        alt_states=list(alt_state), state_embs=state_embs, max_ncells=max_ncells, emb_layer=emb_layer,
        model_version=model_version, batch_size=batch_size, device=device, dtype=dtype, output_dir=output,
        prefix=prefix, gene_names=gene_names, return_frame=False, progress=not quiet, resume=not no_resume,
        shard=shard,
    )
    if path is not None:  # None: another rank's process, or a shard (the log says how to merge)
        typer.echo(f"Wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("perturb", help=HELP)(perturb_command)


if __name__ == "__main__":  # torchrun --nproc_per_node K -m geneformer.cli.perturb ...
    from .main import run_command

    run_command(register)
