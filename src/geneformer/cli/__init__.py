"""The `geneformer` command line: one typer app, one sub-command module per stage (`geneformer --help`)."""

from .main import app, main

__all__ = ["app", "main"]
