"""The ``geneformer`` command: a typer app assembling one sub-command module per stage."""

from __future__ import annotations

import importlib
import logging
from typing import Callable

import typer

from ._errors import guarded

HELP = """Geneformer: tokenize single-cell data, embed, perturb and fine-tune transformer models.

Models: zoo names (geneformer models) or folders. Dictionaries: GENEFORMER_DICTS_DIR, the cache or the hub.

Every command has examples of its own: geneformer COMMAND --help.

Examples:

  geneformer tokenize pbmc.h5ad --output tokens/ --attr cell_type

  geneformer embed tokens/pbmc.dataset --model Geneformer-V2-104M --output embs.parquet --label cell_type

  geneformer finetune tokens/pbmc.dataset --model Geneformer-V1-10M --label cell_type --output runs/pbmc

  geneformer perturb tokens/pbmc.dataset --model Geneformer-V2-104M --output isp/ --genes LYZ

  geneformer models
"""

app = typer.Typer(
    name="geneformer",
    help=HELP,
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
def _main(verbose: bool = typer.Option(False, "--verbose", "-v",
                                       help="Log debug messages, third-party ones included.")) -> None:
    _configure_console(verbose)


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (not the stream of the first
    call: a redirected or captured stderr, as in typer's test runner, may be closed by then)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    @property
    def stream(self):  # noqa: D102
        import sys

        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


def _log_to_stderr(level: int) -> None:
    """One root handler of ours (a second command in one process replaces the first's)."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, _CurrentStderr)]:
        root.removeHandler(h)
    if not root.handlers:
        root.addHandler(_CurrentStderr())
    root.setLevel(level)


def _configure_console(verbose: bool) -> None:
    """Our messages at INFO (DEBUG with -v); other libraries' at WARNING (INFO with -v)."""
    import os

    from .._settings import settings

    if not verbose:  # read when datasets is imported: its Map/Filter/Saving bars are not ours
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    # records of the geneformer logger reach the root handler whatever the root level
    _log_to_stderr(logging.INFO if verbose else logging.WARNING)
    settings.verbosity = "debug" if verbose else "info"  # "debug" also lets transformers' own output through


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
    _configure_console(False)
    single()


if __name__ == "__main__":
    main()
