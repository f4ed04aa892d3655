"""Where models run and in which precision: the one place that decides device and dtype.

``device=None`` in any call means ``settings.device`` ("auto": CUDA when available, else CPU); in
a ``torchrun`` / ``accelerate launch`` process on GPUs "auto" (and a plain "cuda") means the
process's own GPU (``LOCAL_RANK``). ``dtype=None`` means ``settings.dtype`` (None: fp32).
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
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


def compute_dtype(dtype: "str | torch.dtype | None" = None) -> "torch.dtype | None":
    """The dtype a call computes in: ``dtype``, else ``settings.dtype`` (None: the weights' own)."""
    from .._settings import settings

    return resolve_dtype(settings.dtype if dtype is None else dtype)


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


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


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
