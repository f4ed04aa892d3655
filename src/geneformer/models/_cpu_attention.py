"""Softmax attention (exact, not approximated) in bf16 on CPU, per cell and head over each cell's
own length.

PyTorch's fused CPU attention has no fast bf16 path on CPUs without AMX, while bf16 matrix products
run at ~3x the fp32 rate. So attention is computed in query blocks: scores ``Q_blk @ K^T`` (a bf16
matrix product), their unnormalised exponentials with a compiled kernel
(:func:`._softmax_kernel.exp_rows_bf16`, ~2.8x as fast as ``torch.softmax``), ``exp @ V``, and a
division by the row sums (:func:`._softmax_kernel.divide_rows_bf16`) that writes straight into the
(B, L, heads·size) context layout.

The blocks run on a small pool of worker threads, each with a single intra-op thread: every core
then works through whole blocks, whose scores stay in its own cache, and no OpenMP team has to be
woken and synchronised three times per block (which costs more than the kernel saves when the
blocks are split across cores instead).
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Callable

import torch

from ._softmax_kernel import divide_rows_bf16, exp_rows_bf16
from ._workspace import scratch

#: Query rows per attention block: a block's scores (rows x length) stay in the core's cache at
#: 2,048-4,096 genes.
QUERY_BLOCK = 512


class _Workers:
    """``n`` daemon threads, each limited to one intra-op thread, that run lists of jobs."""

    def __init__(self, n: int) -> None:
        self.size = n
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        ready = threading.Barrier(n + 1)
        for _ in range(n):
            threading.Thread(target=self._loop, args=(ready,), daemon=True, name="geneformer-attention").start()
        ready.wait()
        # a worker's set_num_threads(1) also changed the process-wide default that new threads
        # start from; restore it (the calling thread's own setting was never touched)
        torch.set_num_threads(n)

    def _loop(self, ready: threading.Barrier) -> None:
        torch.set_num_threads(1)
        # torch sets a thread's count lazily, from the process-wide default, at its first parallel
        # call: make that happen now, before the caller restores the default
        torch.get_num_threads()
        ready.wait()
        while True:
            job, results = self._jobs.get()
            if job is None:  # close()
                return
            try:
                job()
            except BaseException as exc:  # handed to run(), which re-raises it in the caller
                results.put(exc)
            else:
                results.put(None)

    def run(self, jobs: list[Callable[[], None]]) -> None:
        """Run ``jobs`` on the workers and wait for all of them; re-raises the first failure."""
        results: queue.SimpleQueue = queue.SimpleQueue()
        for job in jobs:
            self._jobs.put((job, results))
        errors = [e for e in (results.get() for _ in jobs) if e is not None]
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Let the threads finish (after any jobs already queued)."""
        for _ in range(self.size):
            self._jobs.put((None, None))


_pool: _Workers | None = None
_pool_lock = threading.Lock()


def _workers(n: int) -> _Workers:
    """The shared pool, of ``n`` threads (rebuilt when the intra-op thread count has changed)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool.size != n:
            if _pool is not None:
                _pool.close()
            _pool = _Workers(n)
        return _pool


def _forget_pool_in_child() -> None:
    # a forked child has the pool object but none of its threads: it must start its own
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_in_child)


_per_thread = threading.local()  # each worker's own scratch buffers, kept for the next layer


@torch.inference_mode()  # (thread-local: the caller's mode does not reach worker threads)
def _run_blocks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                tasks: list[tuple[int, int, int, int]], lengths: list[int], block: int) -> None:
    size = q.shape[-1]
    longest = max(lengths)
    if not hasattr(_per_thread, "workspace"):
        _per_thread.workspace = {}
    ws = _per_thread.workspace
    scores_flat = scratch(ws, "scores", (block * longest,), q.dtype)
    exps_flat = scratch(ws, "exps", (block * longest,), q.dtype)
    sums = scratch(ws, "sums", (block,), torch.float32)
    values = scratch(ws, "values", (block, size), q.dtype)
    out_bits = out.view(torch.int16).numpy()
    # views made once per shape and per head, not per block: with several workers, every Python
    # step of a block is time that another worker may spend waiting for the GIL
    shaped: dict[tuple[int, int], tuple] = {}
    heads: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    for b, h, i, j in tasks:
        n, rows = lengths[b], j - i
        views = shaped.get((rows, n))
        if views is None:
            scores, exps = scores_flat[: rows * n].view(rows, n), exps_flat[: rows * n].view(rows, n)
            vals = values[:rows]
            bits = [t.view(torch.int16).numpy() for t in (scores, exps, vals)]
            views = shaped[rows, n] = (scores, exps, vals, *bits, sums[:rows].numpy())
        scores, exps, vals, scores_bits, exps_bits, vals_bits, sums_np = views
        kv = heads.get((b, h))
        if kv is None:
            kv = heads[b, h] = (k[b, h, :n].t(), v[b, h, :n])
        torch.mm(q[b, h, i:j], kv[0], out=scores)
        exp_rows_bf16(scores_bits, exps_bits, sums_np)
        torch.mm(exps, kv[1], out=vals)
        divide_rows_bf16(vals_bits, sums_np, out_bits, b, i, h * size)


def blocked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int],
                      out: torch.Tensor, block: int = QUERY_BLOCK) -> torch.Tensor:
    """Softmax attention per cell and head over each cell's first ``lengths[b]`` positions (bf16, CPU).

    ``q``, ``k``, ``v`` are (B, heads, L, size) with each head's rows contiguous, ``q`` already
    scaled; ``out`` is (B, L, heads·size), the layout the output projection reads. Rows past a
    cell's length are set to zero. The attention weights are bf16 like ``torch.softmax``'s in bf16,
    but normalised after the product with V (one division per output, not per weight).
    """
    if not q.dtype == k.dtype == v.dtype == out.dtype == torch.bfloat16:
        raise TypeError(f"blocked_attention computes in bf16, got {q.dtype}/{k.dtype}/{v.dtype} -> {out.dtype}")
    for b, n in enumerate(lengths):
        if n < out.shape[1]:
            out[b, n:].zero_()
    # (cell, head, first row, end row) of every query block
    tasks = [(b, h, i, min(i + block, n)) for b, n in enumerate(lengths) for h in range(q.shape[1])
             for i in range(0, n, block)]
    if not tasks:
        return out
    cores = torch.get_num_threads()
    threads = min(cores, len(tasks))
    if threads <= 1:
        _run_blocks(q, k, v, out, tasks, lengths, block)
        return out
    # interleaved shares: neighbouring blocks (the same head) go to different threads, so the
    # shares stay even when cells differ in length
    pool = _workers(cores)
    pool.run([lambda part=tasks[t::threads]: _run_blocks(q, k, v, out, part, lengths, block)
              for t in range(threads)])
    return out
