"""Worker processes for tokenization and gene-median estimation: ordered results, bounded memory.

:func:`ordered_map` hands tasks to ``nproc`` processes, keeps at most ``window`` tasks in flight (so
that memory stays flat when the consumer falls behind) and yields the results in task order, so
outputs depend only on the inputs. A worker that dies (killed, out of memory) fails the whole run
at once with :class:`WorkerError` instead of leaving the parent waiting.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Iterator

from ._errors import GeneformerError


class WorkerError(GeneformerError, RuntimeError):
    """A worker process died before finishing its task."""


def _context() -> Any:
    # fork starts workers at once and shares the parent's read-only state; spawn elsewhere
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def ordered_map(fn: Callable[[Any], Any], tasks: Iterable[Any], nproc: int, *, initializer: Callable | None = None,
                initargs: tuple = (), window: int | None = None, what: str = "the work") -> Iterator[Any]:
    """Yield ``fn(task)`` for every task, in task order, computed by ``nproc`` worker processes.

    ``initializer(*initargs)`` runs once in each worker (to receive large shared state once);
    ``window`` bounds the tasks in flight (default ``2 * nproc``).
    """
    window = max(1, int(window or 2 * nproc))
    tasks = iter(tasks)
    with ProcessPoolExecutor(max_workers=int(nproc), mp_context=_context(), initializer=initializer,
                             initargs=initargs) as pool:
        pending: deque = deque()
        try:
            for task in tasks:
                pending.append(pool.submit(fn, task))
                if len(pending) >= window:
                    break
            while pending:
                result = pending.popleft().result()
                nxt = next(tasks, None)
                if nxt is not None:
                    pending.append(pool.submit(fn, nxt))
                yield result
        except BrokenProcessPool as exc:
            raise WorkerError(
                f"A worker process died while processing {what} (killed, or out of memory). Try fewer worker "
                "processes (--nproc) or smaller chunks (--chunk-size)."
            ) from exc
        finally:
            for fut in pending:
                fut.cancel()
