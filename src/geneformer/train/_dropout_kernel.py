"""Compiled sparse corrections of attention dropout (numba), used by :mod:`.dropout_attention`.

Arrays are in the (batch, length, heads, head_dim) memory layout that BERT's projections produce,
so no copies are needed. The dropped entries of one (batch, head) block are ``idx[offsets[bh]:
offsets[bh + 1]]``, each ``i * Lk + j`` (query ``i``, key ``j``), sorted. One thread owns a whole
block, so the scattered key/value-row updates of the backward never race.

``bias`` is the additive attention mask in a compact broadcastable form (Bm, Hm, Qm, Lk) with Bm,
Hm, Qm either 1 or full. A bias at or below ``min_bias`` (``-inf`` or the dtype's lowest value)
means "masked": the attention probability there is 0, so the entry needs no correction.
"""

from __future__ import annotations

import math

from numba import njit, prange

# no nnan/ninf: the kernels test for -inf masks and non-finite log-sum-exps
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


# The probability of an entry is computed inline in both kernels (a shared helper function ran
# ~1.4x slower): P = exp(scale * q_i.k_j + bias_ij - lse_i), in the arrays' dtype (float32 dot
# products vectorise twice as wide), 0 where the bias masks the entry or the row is fully masked.


@njit(cache=True, parallel=True, fastmath=_FASTMATH)
def forward_correction(q, k, v, bias, lse, idx, offsets, scale, min_bias, x):
    """``x[b, i, h] -= P_ij * v[b, j, h]`` over the dropped entries (x holds softmax(S) V on entry)."""
    n_b, lk, n_h, n_d = k.shape
    for bh in prange(n_b * n_h):
        b = bh // n_h
        h = bh - b * n_h
        bb_b = b if bias.shape[0] > 1 else 0
        bb_h = h if bias.shape[1] > 1 else 0
        for t in range(offsets[bh], offsets[bh + 1]):
            r = idx[t]
            i = r // lk
            j = r - i * lk
            bb = bias[bb_b, bb_h, i if bias.shape[2] > 1 else 0, j]
            li = lse[b, h, i]
            if bb <= min_bias or not math.isfinite(li):
                continue
            qi = q[b, i, h]
            kj = k[b, j, h]
            s = qi.dtype.type(0)
            for d in range(n_d):
                s += qi[d] * kj[d]
            p = qi.dtype.type(math.exp(float(s) * scale + float(bb) - float(li)))
            xi = x[b, i, h]
            vj = v[b, j, h]
            for d in range(n_d):
                xi[d] -= p * vj[d]


@njit(cache=True, parallel=True, fastmath=_FASTMATH)
def backward_correction(q, k, v, bias, lse, idx, offsets, scale, min_bias, g, dq, dk, dv):
    """Turn the no-dropout kernel's gradients into those of the dropout attention, in place.

    For each dropped entry (i, j) with probability P: c = -P * (g_i . v_j);
    dq_i += scale * c * k_j; dk_j += scale * c * q_i; dv_j -= P * g_i.
    """
    n_b, lk, n_h, n_d = k.shape
    for bh in prange(n_b * n_h):
        b = bh // n_h
        h = bh - b * n_h
        bb_b = b if bias.shape[0] > 1 else 0
        bb_h = h if bias.shape[1] > 1 else 0
        for t in range(offsets[bh], offsets[bh + 1]):
            r = idx[t]
            i = r // lk
            j = r - i * lk
            bb = bias[bb_b, bb_h, i if bias.shape[2] > 1 else 0, j]
            li = lse[b, h, i]
            if bb <= min_bias or not math.isfinite(li):
                continue
            qi = q[b, i, h]
            kj = k[b, j, h]
            gi = g[b, i, h]
            vj = v[b, j, h]
            s = qi.dtype.type(0)
            gv = qi.dtype.type(0)
            for d in range(n_d):
                s += qi[d] * kj[d]
                gv += gi[d] * vj[d]
            pf = math.exp(float(s) * scale + float(bb) - float(li))
            p = qi.dtype.type(pf)
            c = qi.dtype.type(-pf * float(gv) * scale)
            dqi = dq[b, i, h]
            dkj = dk[b, j, h]
            dvj = dv[b, j, h]
            for d in range(n_d):
                dqi[d] += c * kj[d]
                dkj[d] += c * qi[d]
                dvj[d] -= p * gi[d]
