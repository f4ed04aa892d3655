"""Loading pickles of plain data only (dictionaries, lists, numbers, numpy scalars and arrays).

The published dictionaries and the perturber's result files are pickles; unpickling an arbitrary
file can run code, so only the classes plain data needs are allowed. (Pickles are written with
:func:`geneformer._utils.write_pickle`.)
"""

from __future__ import annotations

import pickle
from typing import IO, Any

_ALLOWED = {
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "set"), ("builtins", "tuple"),
    ("builtins", "int"), ("builtins", "float"), ("builtins", "str"),
    ("collections", "OrderedDict"), ("collections", "defaultdict"),
    ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode"),
}


class PlainDataUnpickler(pickle.Unpickler):
    """Refuses every class outside plain containers and numpy data."""

    what = "a data pickle"

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from {self.what}")


def load_plain(fh: IO[bytes], what: str = "a data pickle") -> Any:
    """Unpickle plain data from an open binary file; ``what`` names the file kind in errors."""
    unpickler = PlainDataUnpickler(fh)
    unpickler.what = what
    return unpickler.load()
