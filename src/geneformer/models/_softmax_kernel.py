"""Compiled (numba) steps of the bf16 CPU attention (:mod:`.cpu_attention`): the unnormalised
softmax of a block of scores, and the division of ``exp @ V`` by the row sums.

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
        # the row maximum on the bit patterns: flipping the magnitude bits of negative numbers
        # orders sign-magnitude patterns as their values (an int16 reduction vectorises 32 lanes
        # wide, where numba leaves a float max scalar); the same flip maps the maximum back
        top = np.int16(-32768)
        for j in range(n):
            v = scores[r, j]
            key = np.int16(v ^ ((v >> np.int16(15)) & np.int16(0x7FFF)))
            top = key if key > top else top
        top = np.int16(top ^ ((top >> np.int16(15)) & np.int16(0x7FFF)))
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


@njit(cache=True, nogil=True, fastmath=True)
def divide_rows_bf16(values, sums, out, cell, first, column):
    """``out[cell, first + r, column:column + size] = bf16(values[r] / sums[r])`` for every row r.

    ``values`` is a C-contiguous (rows, size) ``int16`` view of bf16 ``exp @ V``; ``out`` the
    (B, L, width) ``int16`` view of the bf16 context. (``torch.div`` from bf16 and float32 into a
    strided bf16 slice takes a slow mixed-dtype path, ~5x this.)
    """
    rows, size = values.shape
    for r in range(rows):
        inv = np.float32(1.0) / sums[r]
        for c in range(size):
            x = np.uint32(np.uint32(np.uint16(values[r, c])) << np.uint32(16)).view(np.float32) * inv
            bits = np.float32(x).view(np.uint32)
            # round to nearest even
            out[cell, first + r, column + c] = np.int16(np.uint16(
                np.uint32(bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)))
