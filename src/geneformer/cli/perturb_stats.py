"""``geneformer perturb-stats``: statistics over in silico perturbation results."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

EXAMPLES = """
Examples:

  geneformer perturb-stats isp_out/ --output stats/ --prefix delete_all --mode mixture_model --model-version V1

  geneformer perturb-stats isp_out/ --output stats/ --prefix goal --mode goal_state_shift \\
      --state-key condition --start-state ctrl --goal-state stim

  geneformer perturb-stats isp_out/ --output stats/ --prefix group --mode aggregate_gene_shifts \\
      --genes ENSG00000198851 --genes ENSG00000090382

  geneformer perturb-stats isp_out/ --null isp_null/ --output stats/ --prefix test --mode vs_null
"""


def perturb_stats(
    input_dir: Path = typer.Argument(..., help="Folder of the perturber's *_raw.pickle files."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the CSV."),
    prefix: str = typer.Option(..., "--prefix", help="CSV name: OUTPUT/PREFIX.csv."),
    mode: str = typer.Option(
        "mixture_model", "--mode",
        help="goal_state_shift, vs_null, mixture_model, aggregate_data or aggregate_gene_shifts.",
    ),
    model_version: str = typer.Option("V2", "--model-version", help="Vocabulary for gene names: V1 or V2."),
    genes: List[str] = typer.Option([], "--genes", help="Ensembl ID perturbed together (repeat); default all."),
    null: Optional[Path] = typer.Option(None, "--null", help="Folder of null-distribution results (vs_null)."),
    anchor: Optional[str] = typer.Option(None, "--anchor", help="Anchor gene (Ensembl ID)."),
    combos: int = typer.Option(0, "--combos", help="1 for anchor + gene pair results."),
    state_key: Optional[str] = typer.Option(None, "--state-key", help="Cell attribute holding the states."),
    start_state: Optional[str] = typer.Option(None, "--start-state", help="Start state."),
    goal_state: Optional[str] = typer.Option(None, "--goal-state", help="Goal state."),
    alt_state: List[str] = typer.Option([], "--alt-state", help="Alternative state (repeat)."),
    pickle_suffix: str = typer.Option("_raw.pickle", "--pickle-suffix", help="Suffix of the result files."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUTPUT/PREFIX.csv."),
) -> None:
    """Compute perturbation statistics (in silico perturber stats) and write them as a CSV."""
    from .._utils import refuse_existing
    from ..perturb import perturbation_stats, stats_spec

    refuse_existing(output / f"{prefix}.csv", overwrite)

    states = None
    if any(v is not None for v in (state_key, start_state, goal_state)) or alt_state:
        states = {"state_key": state_key, "start_state": start_state, "goal_state": goal_state,
                  "alt_states": list(alt_state)}
    spec = stats_spec(mode, list(genes) if genes else "all", combos=combos, anchor_gene=anchor,
                      cell_states_to_model=states, pickle_suffix=pickle_suffix, vocab=model_version)
    df = perturbation_stats(input_dir, output, prefix, spec, null_dir=null)
    typer.echo(f"Wrote {len(df)} rows to {output / (prefix + '.csv')}")


def register(app: typer.Typer) -> None:
    app.command("perturb-stats", help=(perturb_stats.__doc__ or "") + "\n" + EXAMPLES)(perturb_stats)
