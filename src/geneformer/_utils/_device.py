"""Where models run and in which precision: the one place that decides device, dtype and CPU threads.

``device=None`` in any call means ``settings.device`` ("auto": CUDA when available, else CPU); in
a ``torchrun`` / ``accelerate launch`` process on GPUs "auto" (and a plain "cuda") means the
process's own GPU (``LOCAL_RANK``). ``dtype=None`` means ``settings.dtype``; when that is None too, inference computes
in bf16 on a CUDA GPU that supports it and in fp32 everywhere else ("fp32" asks for fp32 on GPUs).

CPU threads (:func:`limit_cpu_threads`, run from ``_settings`` when ``geneformer`` is first imported):
on a shared machine the CPU path used to slow down 10-17x under a load of 5-9 on 2 cores, far more
than its share of the CPU explains. OpenMP teams (torch's intra-op threads, MKL, numba's omp layer) spin-wait at
every barrier by default, so a thread waiting for a descheduled team-mate burns the time slice the
team-mate needs; and the thread counts followed the machine's core count (numba's even ignores the
affinity mask), not the CPUs the process may use (affinity mask, cgroup CPU quota). The defaults
set here (only where the user set nothing): ``OMP_WAIT_POLICY=PASSIVE`` and ``KMP_BLOCKTIME=0``
(waiting threads sleep), and ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``NUMBA_NUM_THREADS`` =
:func:`usable_cpus`. Environment variables only act before the OpenMP runtime loads (import
``geneformer`` before ``torch``, or set them in the shell); torch's thread count is capped either way.
"""

from __future__ import annotations

import math
import os
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ._errors import OptionError

if TYPE_CHECKING:  # pragma: no cover
    import torch

_DTYPE_NAMES = {
    "fp32": "float32", "float32": "float32", "float": "float32",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp16": "float16", "float16": "float16", "half": "float16",
}


def cuda_available() -> bool:
    """Whether PyTorch sees a CUDA device."""
    import torch

    return bool(torch.cuda.is_available())


def bf16_supported() -> bool:
    """Whether the CUDA device computes in bf16 (False on CPU-only machines)."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def _process_group() -> Any:
    """``torch.distributed`` when a process group is initialised (without importing torch)."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None


def world_size() -> int:
    """Number of processes of a ``torchrun`` / ``accelerate launch`` run, or of the initialised
    process group (1 otherwise)."""
    dist = _process_group()
    return int(dist.get_world_size()) if dist is not None else int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank in a multi-process run (0 otherwise)."""
    dist = _process_group()
    return int(dist.get_rank()) if dist is not None else int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``; 0 otherwise): the index of its GPU."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed() -> bool:
    """Join the process group of a ``torchrun`` launch when there is none yet (NCCL when CUDA is
    available, gloo on CPU). True when this process is one of several; a single process (no
    ``WORLD_SIZE`` above 1) starts nothing."""
    if _process_group() is not None:
        return world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "MASTER_ADDR" not in os.environ:
        return False
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True


def barrier() -> None:
    """Wait for every process of the initialised process group (a no-op without one)."""
    dist = _process_group()
    if dist is not None:
        if dist.get_backend() == "nccl":
            import torch

            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def resolve_device(device: "str | torch.device | None" = None) -> "torch.device":
    """``device`` as a ``torch.device``; None or "auto" follows ``settings.device`` (see the module docstring)."""
    import torch

    from .._settings import settings

    if device is None:
        device = settings.device
    if isinstance(device, torch.device):
        dev = device
    elif str(device) == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        if world_size() > 1:
            return torch.device("cuda", local_rank())
        return torch.device("cuda")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise OptionError(f"Unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'.") from exc
        if dev.type == "cuda" and dev.index is None and world_size() > 1:
            dev = torch.device("cuda", local_rank())  # each process of a launch on its own GPU
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"device={str(device)!r} was requested but CUDA is not available; use device='cpu'.")
    return dev


def resolve_dtype(dtype: "str | torch.dtype | None") -> "torch.dtype | None":
    """Torch dtypes and the names fp32/float32, bf16/bfloat16, fp16/float16 (None stays None)."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().replace("torch.", "")
    if key not in _DTYPE_NAMES:
        raise OptionError(f"Unknown dtype {dtype!r}; use 'fp32', 'bf16' or 'fp16'.")
    return getattr(torch, _DTYPE_NAMES[key])


def compute_dtype(dtype: "str | torch.dtype | None" = None,
                  device: "torch.device | None" = None) -> "torch.dtype | None":
    """The dtype a call computes in: ``dtype``, else ``settings.dtype``; when both are None, bf16 on
    a CUDA ``device`` that supports it (None elsewhere: the weights' own, fp32 for every CPU call)."""
    from .._settings import settings

    resolved = resolve_dtype(settings.dtype if dtype is None else dtype)
    if resolved is None and device is not None and device.type == "cuda" and bf16_supported():
        import torch

        return torch.bfloat16
    return resolved


def host_to_device(data: Any, device: "torch.device | str") -> "torch.Tensor":
    """A numpy array or CPU tensor on ``device``: on a GPU through pinned memory without blocking the
    host (a pageable copy would wait for every queued kernel first), on CPU without a copy."""
    import torch

    tensor, device = torch.as_tensor(data), torch.device(device)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def itemsize(dtype: "torch.dtype | None") -> int:
    """Bytes per activation value in ``dtype`` (fp32 when None)."""
    import torch

    return 2 if dtype in (torch.float16, torch.bfloat16) else 4


def autocast(device: "torch.device", dtype: "torch.dtype | None", model: Any = None) -> Any:
    """Autocast to ``dtype`` on ``device`` (a no-op for fp32, or when the weights already are ``dtype``)."""
    import torch

    if dtype is None or dtype == torch.float32:
        return nullcontext()
    param = next(model.parameters(), None) if model is not None else None
    if param is not None and param.dtype == dtype:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def model_device(model: Any) -> "torch.device":
    """The device of a model's first parameter (CPU for a parameterless module)."""
    import torch

    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def free_memory_bytes(device: "torch.device") -> int:
    """Free memory on ``device``: the GPU's free memory, or the machine's available RAM."""
    if device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 4 << 30


def trainer_device_args() -> dict[str, Any]:
    """``TrainingArguments`` fields that follow the machine: CPU training without CUDA (gloo between
    processes), pinned memory with it."""
    cuda = cuda_available()
    return {"use_cpu": not cuda, "dataloader_pin_memory": cuda,
            "ddp_backend": "gloo" if (not cuda and world_size() > 1) else None}


CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_quota(root: str | os.PathLike = CGROUP_ROOT) -> float | None:
    """CPUs the cgroup's CPU quota grants (quota / period; may be fractional), None without a quota.

    Reads cgroup v2 ``cpu.max`` ("max 100000" or "200000 100000"), else v1
    ``cpu/cpu.cfs_quota_us`` / ``cpu/cpu.cfs_period_us`` (quota -1: none).
    """
    base = Path(root)
    try:
        fields = (base / "cpu.max").read_text().split()
        if fields and fields[0] != "max":
            quota, period = int(fields[0]), int(fields[1]) if len(fields) > 1 else 100_000
            return quota / period if quota > 0 and period > 0 else None
        if fields:
            return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((base / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((base / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def usable_cpus(cgroup_root: str | os.PathLike = CGROUP_ROOT) -> int:
    """CPUs this process may use: its affinity mask (where the OS has one), capped by the cgroup's
    CPU quota rounded up (a quota of 1.5 CPUs allows 2 threads); at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        n = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        n = min(n, math.ceil(quota))
    return max(1, n)


#: what :func:`limit_cpu_threads` sets where the environment says nothing ("{n}": usable CPUs)
THREAD_ENV_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0", "OMP_NUM_THREADS": "{n}",
                       "MKL_NUM_THREADS": "{n}", "NUMBA_NUM_THREADS": "{n}"}


def limit_cpu_threads(environ: dict | None = None, cgroup_root: str | os.PathLike = CGROUP_ROOT) -> int:
    """No spinning threads and no more threads than :func:`usable_cpus` (see the module docstring).

    Sets :data:`THREAD_ENV_DEFAULTS` in ``environ`` (default ``os.environ``) where unset, and caps
    torch's intra-op threads when torch is already imported. Returns the usable CPUs.
    """
    env = os.environ if environ is None else environ
    n = usable_cpus(cgroup_root)
    for name, value in THREAD_ENV_DEFAULTS.items():
        env.setdefault(name, value.format(n=n))
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_num_threads") and torch.get_num_threads() > n:
        torch.set_num_threads(n)
    return n


@contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run a block with ``n`` torch CPU threads (capped at :func:`usable_cpus`), restored afterwards;
    ``None`` leaves torch's own setting."""
    import torch

    before = torch.get_num_threads()
    if n is None:
        yield before
        return
    torch.set_num_threads(max(1, min(int(n), usable_cpus())))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
