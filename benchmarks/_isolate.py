"""Imported first by every benchmark script: keeps this folder off ``sys.path``.

Run as ``python benchmarks/X.py``, a script's folder leads the import path, where ``tokenize.py``
(the tokenizer benchmark, named by the project's issue) would shadow the standard library's
``tokenize`` module that torch, pandas and linecache import.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
