"""Compiled sparse corrections of attention dropout (numba), used by :mod:`.dropout_attention`.

Arrays are in the (batch, length, heads, head_dim) memory layout that BERT's projections produce,
so no copies are needed. The dropped entries of one (batch, head) block ``bh`` are
``idx[bh, :counts[bh]]``, each ``i * Lk + j`` (query ``i``, key ``j``), sorted; ``lse`` (the fused
kernel's log-sum-exp per query row) is (batch, length, heads) too. One thread owns a
whole block, so the scattered key/value-row updates of the backward never race.

:func:`sample_blocks` draws the dropped entries: iid Bernoulli(p) over every entry, as the
geometric gaps between successive dropped entries, from one xoshiro256** stream per block seeded
(splitmix64) by a caller's seed and the block number, so the result does not depend on threading.

``bias`` is the additive attention mask in a compact broadcastable form (Bm, Hm, Qm, Lk) with Bm,
Hm, Qm either 1 or full. A bias at or below ``min_bias`` (``-inf`` or the dtype's lowest value)
means "masked": the attention probability there is 0, so the entry needs no correction.
"""

from __future__ import annotations

import math

from numba import njit, prange, uint64

# no nnan/ninf: the kernels test for -inf masks and non-finite log-sum-exps
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


@njit(cache=True, inline="always")
def _rotl(x, k):
    return (x << uint64(k)) | (x >> uint64(64 - k))


@njit(cache=True, inline="always")
def _splitmix(state):
    state = state + uint64(0x9E3779B97F4A7C15)
    z = state
    z = (z ^ (z >> uint64(30))) * uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> uint64(27))) * uint64(0x94D049BB133111EB)
    return state, z ^ (z >> uint64(31))


@njit(cache=True, parallel=True)
def sample_blocks(seed, block_size, p, out, counts):
    """Dropped entries of ``out.shape[0]`` blocks of ``block_size`` entries each, iid Bernoulli(p).

    Writes the sorted positions of block ``b`` to ``out[b, :counts[b]]``; ``counts[b]`` is the
    full number even when it exceeds ``out.shape[1]`` (then the caller draws again, with room:
    the same seed gives the same entries).
    """
    log_q = math.log1p(-p)
    cap = out.shape[1]
    limit = float(block_size)
    for blk in prange(out.shape[0]):
        st = uint64(seed) ^ (uint64(blk) * uint64(0xD1B54A32D192ED03))
        st, s0 = _splitmix(st)
        st, s1 = _splitmix(st)
        st, s2 = _splitmix(st)
        st, s3 = _splitmix(st)
        pos = -1.0
        c = 0
        while True:
            r = _rotl(s1 * uint64(5), 7) * uint64(9)  # xoshiro256**
            t = s1 << uint64(17)
            s2 ^= s0
            s3 ^= s1
            s1 ^= s2
            s0 ^= s3
            s2 ^= t
            s3 = _rotl(s3, 45)
            u = (float(r >> uint64(11)) + 1.0) * (1.0 / 9007199254740992.0)  # uniform on (0, 1]
            # P(gap > k) = P(u <= (1-p)^k) = (1-p)^k: the gap to the next dropped entry is Geometric(p)
            pos += math.floor(math.log(u) / log_q) + 1.0
            if pos >= limit:
                break
            if c < cap:
                out[blk, c] = int(pos)
            c += 1
        counts[blk] = c


# The probability of an entry is computed inline in both kernels (a shared helper function ran
# ~1.4x slower): P = exp(scale * q_i.k_j + bias_ij - lse_i), in the arrays' dtype (float32 dot
# products vectorise twice as wide), 0 where the bias masks the entry or the row is fully masked.


@njit(cache=True, parallel=True, fastmath=_FASTMATH)
def forward_correction(q, k, v, bias, lse, idx, counts, scale, min_bias, x):
    """``x[b, i, h] -= P_ij * v[b, j, h]`` over the dropped entries (x holds softmax(S) V on entry)."""
    n_b, lk, n_h, n_d = k.shape
    for bh in prange(n_b * n_h):
        b = bh // n_h
        h = bh - b * n_h
        bb_b = b if bias.shape[0] > 1 else 0
        bb_h = h if bias.shape[1] > 1 else 0
        for t in range(counts[bh]):
            r = idx[bh, t]
            i = r // lk
            j = r - i * lk
            bb = bias[bb_b, bb_h, i if bias.shape[2] > 1 else 0, j]
            li = lse[b, i, h]
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
def backward_correction(q, k, v, bias, lse, idx, counts, scale, min_bias, g, dq, dk, dv):
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
        for t in range(counts[bh]):
            r = idx[bh, t]
            i = r // lk
            j = r - i * lk
            bb = bias[bb_b, bb_h, i if bias.shape[2] > 1 else 0, j]
            li = lse[b, i, h]
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
