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
    header = f"{'name':<30} {'also known as':<28} {'vocab':<5} {'input':>5} {'layers':>6} {'hidden':>6} {'heads':>5} {'params':>7}  hub"
    typer.echo(header)
    typer.echo("-" * len(header))
    for s in specs:
        where = f"{s.repo}/{s.subfolder or ''}" + (f"@{s.revision[:7]}" if s.revision else "")
        typer.echo(
            f"{s.name:<30} {', '.join(s.aliases) or '-':<28} {s.vocab_version:<5} {s.input_size:>5} "
            f"{s.num_layers:>6} {s.hidden_size:>6} {s.num_heads:>5} {s.n_params / 1e6:>6.0f}M  {where}"
        )


def register(app: typer.Typer) -> None:
    app.command("models", help=HELP)(models_command)
