"""``geneformer models``: list the model zoo."""

from __future__ import annotations

import json

import typer

HELP = """List the published Geneformer models (zoo names usable with --model and from_pretrained).

Examples:

  geneformer models

  geneformer models --json
"""


def models_command(
    as_json: bool = typer.Option(False, "--json", help="Print the zoo as JSON."),
) -> None:
    from ..models import list_models

    specs = list_models()
    if as_json:
        typer.echo(json.dumps([s.to_dict() for s in specs], indent=1))
        return
    rows = [(s.name, ", ".join(s.aliases) or "-", s.vocab_version, str(s.input_size), str(s.num_layers),
             str(s.hidden_size), str(s.num_heads), f"{s.n_params / 1e6:.0f}M",
             f"{s.repo}/{s.subfolder or ''}" + (f"@{s.revision[:7]}" if s.revision else "")) for s in specs]
    typer.echo("\n".join(format_table(HEADER, rows, RIGHT_ALIGNED)))


HEADER = ("name", "also known as", "vocab", "input", "layers", "hidden", "heads", "params", "hub")
RIGHT_ALIGNED = {"input", "layers", "hidden", "heads", "params"}


def format_table(header: tuple[str, ...], rows: list[tuple[str, ...]], right: set[str]) -> list[str]:
    """Header, rule and rows with every column as wide as its widest cell (numbers right-aligned)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if h in right else c.ljust(w)
                         for c, w, h in zip(cells, widths, header)).rstrip()

    head = line(header)
    return [head, "-" * len(head), *(line(r) for r in rows)]


def register(app: typer.Typer) -> None:
    app.command("models", help=HELP)(models_command)
