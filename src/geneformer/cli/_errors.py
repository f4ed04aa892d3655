"""The one place where the command line turns errors about its inputs into ``error: ...`` and exit 2.

Every sub-command's function is wrapped by :func:`guarded` when it is registered
(:func:`geneformer.cli.main.guard_commands`), so no command prints a traceback for bad input: the
package's own errors (:class:`geneformer.GeneformerError`, whose messages name the file, column,
gene or flag), and the few library and OS errors that mean a bad or unreadable input. Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import pickle
from typing import Any, Callable

import typer


def _input_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input (imported lazily: ``geneformer --help`` stays fast)."""
    from .._utils import GeneformerError

    kinds: list[type[BaseException]] = [GeneformerError, ValueError, KeyError, OSError, pickle.UnpicklingError,
                                        EOFError]
    try:
        from safetensors import SafetensorError

        kinds.append(SafetensorError)
    except ImportError:  # pragma: no cover - safetensors comes with transformers
        pass
    return tuple(kinds)


def message(exc: BaseException) -> str:
    """The one-line message of an error (a ``KeyError``'s own text, not its repr), with the core's
    parameter names spelled as the command line's flags."""
    from ._flags import cli_spelling

    if isinstance(exc, KeyError) and exc.args:
        return cli_spelling(str(exc.args[0]))
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return cli_spelling(text)


def fail(exc: BaseException) -> None:
    """Print ``error: <message>`` to stderr and exit with code 2."""
    typer.secho(f"error: {message(exc)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2) from None


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with every input error reported by :func:`fail` (the signature is kept for typer)."""
    if getattr(fn, "__gf_guarded__", False):
        return fn

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except _input_errors() as exc:
            fail(exc)

    wrapper.__gf_guarded__ = True  # type: ignore[attr-defined]
    return wrapper


__all__ = ["fail", "guarded", "message"]
