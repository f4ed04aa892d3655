"""``geneformer merge``: the output of a sharded run, from the parts its shards wrote."""

from __future__ import annotations

from pathlib import Path

import typer

EXAMPLES = """
Examples:

  geneformer tokenize corpus/*.h5ad --output tokens/ --prefix corpus --shard 0/4   # ... up to 3/4, anywhere

  geneformer merge tokens/corpus.dataset

  geneformer merge vocab/ --overwrite

Every shard of the run must have finished (each leaves OUTPUT.shards/shard-I-of-N.done.json); the
missing ones are named otherwise. The result is what the single run would have written.
"""


def merge_command(
    output: Path = typer.Argument(..., help="The output every shard was given (e.g. tokens/corpus.dataset)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing merged output."),
) -> None:
    """Merge the parts of a sharded run (tokenize, build-vocab, embed, perturb) into its output."""
    from ..shards import merge

    path = merge(output, overwrite=overwrite)
    typer.echo(f"Merged the shards of {output} into {path}")


def register(app: typer.Typer) -> None:
    app.command("merge", help=(merge_command.__doc__ or "") + "\n" + EXAMPLES)(merge_command)
