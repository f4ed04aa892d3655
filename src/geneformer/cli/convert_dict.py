"""``geneformer convert-dict``: a dictionary pickle to JSON, once, so it is never unpickled again."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

HELP = """Convert a dictionary pickle (the published gene dictionaries, an id-class dictionary) to JSON.

The pickle is read with the package's restricted loader (plain data only, see SECURITY.md); every
command and class that takes these dictionaries also reads the JSON file, and the published
vocabularies are found as .json files in GENEFORMER_DICTS_DIR as well.

Examples:

  geneformer convert-dict token_dictionary_gc104M.pkl

  geneformer convert-dict gene_median_dictionary_gc104M.pkl --output medians.json
"""


def convert_dict_command(
    path: Path = typer.Argument(..., help="Dictionary pickle (.pkl)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="JSON file (default: beside it, .json)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing JSON file."),
) -> None:
    from ..vocab import convert_dict_file

    out = convert_dict_file(path, output, overwrite=overwrite)
    typer.echo(f"Wrote {out}")


def register(app: typer.Typer) -> None:
    app.command("convert-dict", help=HELP, no_args_is_help=True)(convert_dict_command)
