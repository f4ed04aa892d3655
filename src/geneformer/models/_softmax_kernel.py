"""Compiled (numba) unnormalised softmax over bf16 attention scores, used by :mod:`.cpu_attention`.

bf16 values are handled as their bit patterns (``int16`` views of the torch tensors), since numba
has no bf16 type: a bf16 is the upper half of the float32 with the same value. The exponential is
``2**t`` split into an integer power, which goes straight into the bf16's exponent bits, and a
degree-3 polynomial of the fraction (relative error < 9e-5, against bf16's rounding step of
2**-8), rounded into the 7 mantissa bits. The compiler vectorises all of it; PyTorch's own softmax
spends most of its time in a slower, full-precision ``exp``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_LOG2E = np.float32(1.4426950408889634)
# 2**f - 1 ≈ f·(C1 + f·(C2 + f·C3)) on [0, 1), fitted for the least maximum relative error of 2**f
_C1, _C2, _C3 = (np.float32(c) for c in (0.6951163411140442, 0.22764700651168823, 0.07706519961357117))
# below 2**-126 bf16 turns subnormal; such weights are < 1e-37 of the row's largest anyway
_LOWEST = np.float32(-126.0)


@njit(cache=True, nogil=True, fastmath=True)
def exp_rows_bf16(scores, out, sums):
    """``out[r] = bf16(exp(scores[r] - max(scores[r])))`` and ``sums[r]`` = the sum of ``out[r]``.

    ``scores`` and ``out`` are C-contiguous (rows, n) ``int16`` views of bf16 tensors; ``sums`` is
    float32 (rows,). Dividing ``out @ V`` by ``sums`` then gives softmax attention.
    """
    rows, n = scores.shape
    for r in range(rows):
        # the row maximum on the bit patterns: sign-magnitude mapped to two's complement orders
        # them as the values (an integer reduction vectorises where a float max does not)
        top = np.int32(-2147483647)
        for j in range(n):
            v = np.int32(scores[r, j])
            key = v if v >= 0 else np.int32(-32768) - v
            top = key if key > top else top
        top = top if top >= 0 else np.int32(-32768) - top
        shift = np.uint32(np.uint32(np.uint16(top)) << np.uint32(16)).view(np.float32) * _LOG2E
        total = np.float32(0.0)
        for j in range(n):
            x = np.uint32(np.uint32(np.uint16(scores[r, j])) << np.uint32(16)).view(np.float32)
            t = max(x * _LOG2E - shift, _LOWEST)
            whole = np.floor(t)
            f = t - whole
            frac = f * (_C1 + f * (_C2 + f * _C3))
            # bf16 bits = 128·(biased exponent) + the fraction rounded to 7 bits, all in one float
            # (exact: < 2**15) and one conversion; a fraction that rounds up to 1 carries into the
            # exponent, as it should
            hi = np.int32(frac * np.float32(128.0) + (whole * np.float32(128.0) + np.float32(127 * 128 + 0.5)))
            out[r, j] = np.int16(hi)
            total += np.int32(hi << np.int32(16)).view(np.float32)
        sums[r] = total
