"""Where models run and in which precision: the one place that decides device and dtype.

``device=None`` in any call means ``settings.device`` ("auto": CUDA when available, else CPU); in
a ``torchrun`` / ``accelerate launch`` process on GPUs "auto" means the process's own GPU
(``LOCAL_RANK``). ``dtype=None`` means ``settings.dtype``; when that is None too, inference computes
in bf16 on a CUDA GPU that supports it and in fp32 everywhere else ("fp32" asks for fp32 on GPUs).
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


def world_size() -> int:
    """Number of processes of a ``torchrun`` / ``accelerate launch`` run (1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank in a multi-process run (0 otherwise)."""
    return int(os.environ.get("RANK", "0"))


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
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cuda")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise OptionError(f"Unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'.") from exc
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
