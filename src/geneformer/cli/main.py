"""The ``geneformer`` command: a typer app assembling one sub-command module per stage."""

from __future__ import annotations

import importlib
import logging
from typing import Callable

import typer

from ._errors import guarded

app = typer.Typer(
    name="geneformer",
    help="Geneformer: tokenize single-cell data, embed, perturb and fine-tune transformer models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module defines ``register(app)``; add a stage by adding its module here.
COMMAND_MODULES = ["tokenize", "build_vocab", "embed", "models", "pretrain", "finetune", "perturb", "perturb_stats",
                   "merge", "convert_dict"]


def guard_commands(typer_app: typer.Typer) -> None:
    """Wrap every registered command so that bad input ends as ``error: ...`` and exit 2 (see ``_errors``)."""
    for info in typer_app.registered_commands:
        info.callback = guarded(info.callback)


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"geneformer.cli.{name}").register(app)
    guard_commands(app)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


_register_all()


def main() -> None:
    """Run the ``geneformer`` command."""
    app()


def run_command(register: "Callable[[typer.Typer], None]") -> None:
    """Run one command module as a program of its own (``python -m geneformer.cli.embed ...``, the
    form ``torchrun -m`` launches) with the arguments of ``geneformer <command>``."""
    single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(single)
    guard_commands(single)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    single()


if __name__ == "__main__":
    main()
