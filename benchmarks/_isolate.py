"""Imported first by every benchmark script: keeps this folder off ``sys.path``.

Run as ``python benchmarks/X.py``, a script's folder leads the import path, where ``tokenize.py``
(the tokenizer benchmark, named by the project's issue) would shadow the standard library's
``tokenize`` module that torch, pandas and linecache import.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]


def sibling(name: str):
    """Import the helper module ``benchmarks/<name>.py`` (this folder is off ``sys.path``)."""
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(_HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
