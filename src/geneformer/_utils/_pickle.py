"""Loading pickles of plain data only: every pickle a user can hand the package comes through here.

Unpickling an arbitrary file runs whatever code it names, so only the classes plain data needs are
allowed: built-in containers and scalars, ``OrderedDict``/``defaultdict``, numpy scalars and arrays,
and torch tensors. Tensors are rebuilt without running code: their storage bytes go to
``torch.load(weights_only=True)`` (PyTorch's own restricted loader) and the tensor is assembled from
them by :func:`_rebuild_tensor`, which accepts only plain offsets, sizes and strides and no
backward hooks. Anything else (a class, a function, ``os.system``) is refused before it is looked
up. ``SECURITY.md`` at the repository root says what is and is not loaded, and why. (Pickles are
written with :func:`geneformer._utils.write_pickle`.)
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import IO, Any, Iterable

from ._errors import GeneformerError, InputFileError

_ALLOWED = {
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "set"), ("builtins", "tuple"),
    ("builtins", "int"), ("builtins", "float"), ("builtins", "str"), ("builtins", "frozenset"),
    ("builtins", "bool"), ("builtins", "complex"), ("builtins", "bytes"), ("builtins", "bytearray"),
    ("collections", "OrderedDict"), ("collections", "defaultdict"),
    ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode"),
}


def _load_storage(data: bytes) -> Any:
    """A tensor storage pickled by ``torch.Tensor.__reduce_ex__`` (the bytes of a ``torch.save``)."""
    import torch

    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("a tensor storage must be bytes")
    return torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)


def _plain_ints(value: Any, what: str) -> tuple:
    items = value if isinstance(value, (tuple, list)) else (value,)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise pickle.UnpicklingError(f"tensor {what} must be integers")
    return tuple(items)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    backward_hooks: Any = None, metadata: Any = None) -> Any:
    """``torch._utils._rebuild_tensor_v2`` for plain arguments only (no hooks, no metadata)."""
    import torch

    if not isinstance(storage, (torch.UntypedStorage, torch.TypedStorage)):
        raise pickle.UnpicklingError("a tensor must be built on a storage")
    if backward_hooks or metadata:
        raise pickle.UnpicklingError("refusing a tensor with backward hooks or metadata")
    _plain_ints(storage_offset, "offset"), _plain_ints(size, "size"), _plain_ints(stride, "stride")
    t = torch._utils._rebuild_tensor(storage, storage_offset, tuple(size), tuple(stride))
    t.requires_grad = bool(requires_grad)
    return t


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> Any:
    """A pickled ``nn.Parameter`` comes back as its plain tensor."""
    import torch

    if not torch.is_tensor(data) or backward_hooks:
        raise pickle.UnpicklingError("refusing a parameter that is not a plain tensor")
    return data.detach()


_TORCH = {
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class PlainDataUnpickler(pickle.Unpickler):
    """Refuses every class outside plain containers, numpy data and torch tensors (and ``allow``)."""

    what = "a data pickle"
    allow: frozenset = frozenset()

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED or (module, name) in self.allow:
            return super().find_class(module, name)
        if (module, name) in _TORCH:
            return _TORCH[module, name]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from {self.what}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"refusing a persistent reference in {self.what}")


def load_plain(fh: IO[bytes], what: str = "a data pickle", allow: Iterable[tuple[str, str]] = ()) -> Any:
    """Unpickle plain data from an open binary file; ``what`` names the file kind in errors;
    ``allow`` adds ``(module, name)`` classes that only hold data (e.g. a named tuple)."""
    unpickler = PlainDataUnpickler(fh)
    unpickler.what = what
    unpickler.allow = frozenset(allow)
    return unpickler.load()


def load_plain_file(path: str | os.PathLike, what: str = "a data pickle", allow: Iterable[tuple[str, str]] = (),
                    error: type[GeneformerError] = InputFileError) -> Any:
    """:func:`load_plain` of a file: any failure (missing, truncated, garbage, a refused class) is
    ``error`` with a message naming the file."""
    p = Path(path)
    if not p.is_file():
        raise error(f"Could not read {what} {p}: {'it is not a file' if p.exists() else 'it does not exist'}.")
    try:
        with open(p, "rb") as fh:
            return load_plain(fh, what, allow)
    except pickle.UnpicklingError as exc:
        reason = str(exc) if "refusing" in str(exc) else f"not a valid pickle ({exc})"
    except EOFError:
        reason = "the file is empty or truncated"
    except GeneformerError:
        raise
    except Exception as exc:  # noqa: BLE001 - arbitrary bytes fail in arbitrary ways
        reason = f"not a valid pickle ({type(exc).__name__}: {exc})"
    raise error(f"Could not read {what} {p}: {reason}.")
