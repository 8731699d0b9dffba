"""Triton kernels of causal PolySketch attention (forward and backward).

The math is the block algorithm of :mod:`kernelsketch.attn.polysketch.naive`
(its ``_causal_torch`` is the PyTorch twin, used on CPU): with q', k' the
scaled, normalised queries and keys, φ their degree-p/2 sketch (r features)
and Φ = φ ⊗ φ (r² features, never stored: formed tile by tile in registers),

    num_i = Σ_{j in block(i), j <= i} (q'_i·k'_j)^p v_j + Φ(q'_i)ᵀ H_c,   H_c = Σ_{j < start(c)} Φ(k'_j) v_jᵀ
    den_i = Σ_{j in block(i), j <= i} (q'_i·k'_j)^p     + Φ(q'_i)ᵀ z_c,   z_c = Σ_{j < start(c)} Φ(k'_j)
    out_i = num_i / (1 + den_i).

Kernels (fp32 accumulation of every state and score):

* ``state_kernel``: exclusive prefix sums H_c, z_c over blocks (one program
  per kv head and row a of the r×r feature grid, sequential over blocks); run
  in reverse over the blocks in the backward pass for the adjoint states.
* ``fwd_kernel``: one program per (query tile, head): exact local scores up to
  the diagonal and the inter-block term Σ_a (φ_a(q) φ(q))ᵀ H_c[a].
* ``bwd_q_kernel`` / ``bwd_kv_kernel``: gradients of q', k', v and of the
  features φ(q'), φ(k') (the sketch itself is differentiated by autograd).

With A_i = do_i / (1 + den_i) and B_i = -(do_i·out_i) / (1 + den_i) + dden_i,
dL/dw_ij = A_i·v_j + B_i; the inter-block gradients use the adjoint states
R_c = Σ_{i in blocks > c} Φ(q'_i) A_iᵀ and ρ_c = Σ_{i in blocks > c} Φ(q'_i) B_i,
and ∂Φ/∂φ contracts a symmetric r×r matrix X as 2 X φ.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _powers(s, P: tl.constexpr):
    """(s^(P-1), s^P) for an even P >= 2."""
    pm1 = s
    for _ in tl.static_range(P - 2):
        pm1 = pm1 * s
    return pm1, pm1 * s


@triton.jit
def state_kernel(FEAT, X, Y, H, Z, N, NB, SRC_G,
                  R: tl.constexpr, DV: tl.constexpr, BLOCK: tl.constexpr, BM: tl.constexpr,
                  REVERSE: tl.constexpr, HAS_Y: tl.constexpr, DOT: tl.constexpr):
    # Exclusive prefix (or suffix, REVERSE) sums over blocks of
    # Φ(f_j)[a, :] x_jᵀ and Φ(f_j)[a, :] y_j, summed over SRC_G source heads.
    oh = tl.program_id(0).to(tl.int64)  # 64-bit offsets: the states exceed 2^31 entries
    a = tl.program_id(1).to(tl.int64)
    rr = tl.arange(0, R)
    dv = tl.arange(0, DV)
    h = tl.zeros([R, DV], dtype=tl.float32)
    z = tl.zeros([R], dtype=tl.float32)
    for i in range(NB):
        c = (NB - 1 - i) if REVERSE else i
        base = (oh * NB + c) * R + a
        tl.store(H + base * R * DV + rr[:, None] * DV + dv[None, :], h)
        tl.store(Z + base * R + rr, z)
        for g in range(SRC_G):
            sh = oh * SRC_G + g
            for n0 in range(c * BLOCK, c * BLOCK + BLOCK, BM):
                rows = n0 + tl.arange(0, BM)
                m = rows < N
                f = tl.load(FEAT + (sh * N + rows[:, None]) * R + rr[None, :], mask=m[:, None],
                            other=0.0).to(tl.float32)
                fa = tl.load(FEAT + (sh * N + rows) * R + a, mask=m, other=0.0).to(tl.float32)
                phi = f * fa[:, None]
                x = tl.load(X + (sh * N + rows[:, None]) * DV + dv[None, :], mask=m[:, None],
                            other=0.0).to(tl.float32)
                h += tl.dot(tl.trans(phi), x, input_precision=DOT)
                if HAS_Y:
                    y = tl.load(Y + sh * N + rows, mask=m, other=0.0)
                    z += tl.sum(phi * y[:, None], 0)
                else:
                    z += tl.sum(phi, 0)


@triton.jit
def fwd_kernel(Q, K, V, FQ, H, Z, O, DEN, N, G, NB,
                D: tl.constexpr, DV: tl.constexpr, R: tl.constexpr, P: tl.constexpr,
                BLOCK: tl.constexpr, BM: tl.constexpr, DOT: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    bh = tl.program_id(1).to(tl.int64)
    kvh = bh // G
    m0 = pid * BM
    c = m0 // BLOCK
    rows = m0 + tl.arange(0, BM)
    rm = rows < N
    dd = tl.arange(0, D)
    dv = tl.arange(0, DV)
    rr = tl.arange(0, R)
    q = tl.load(Q + (bh * N + rows[:, None]) * D + dd[None, :], mask=rm[:, None], other=0.0)
    num = tl.zeros([BM, DV], dtype=tl.float32)
    den = tl.zeros([BM], dtype=tl.float32)
    # Exact polynomial weights inside the block, up to the diagonal.
    for n0 in range(c * BLOCK, m0 + BM, BM):
        cols = n0 + tl.arange(0, BM)
        cm = cols < N
        k = tl.load(K + (kvh * N + cols[:, None]) * D + dd[None, :], mask=cm[:, None],
                    other=0.0)
        v = tl.load(V + (kvh * N + cols[:, None]) * DV + dv[None, :], mask=cm[:, None],
                    other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT)
        w = _powers(s, P)[1]
        w = tl.where(cols[None, :] <= rows[:, None], w, 0.0)
        num += tl.dot(w.to(v.dtype), v, input_precision=DOT)
        den += tl.sum(w, 1)
    # Earlier blocks through the prefix state, one row a of Φ = φ ⊗ φ at a time.
    f = tl.load(FQ + (bh * N + rows[:, None]) * R + rr[None, :], mask=rm[:, None],
                other=0.0).to(tl.float32)
    base = (kvh * NB + c) * R
    for a in range(R):
        fa = tl.load(FQ + (bh * N + rows) * R + a, mask=rm, other=0.0).to(tl.float32)
        phi = f * fa[:, None]
        ha = tl.load(H + (base + a) * R * DV + rr[:, None] * DV + dv[None, :])
        num += tl.dot(phi, ha, input_precision=DOT)
        za = tl.load(Z + (base + a) * R + rr)
        den += tl.sum(phi * za[None, :], 1)
    out = num / (1.0 + den)[:, None]
    tl.store(O + (bh * N + rows[:, None]) * DV + dv[None, :], out, mask=rm[:, None])
    tl.store(DEN + bh * N + rows, den, mask=rm)


@triton.jit
def bwd_q_kernel(Q, K, V, FQ, A, B, H, Z, DQ, DFQ, N, G, NB,
                  D: tl.constexpr, DV: tl.constexpr, R: tl.constexpr, P: tl.constexpr,
                  BLOCK: tl.constexpr, BM: tl.constexpr, DOT: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    bh = tl.program_id(1).to(tl.int64)
    kvh = bh // G
    m0 = pid * BM
    c = m0 // BLOCK
    rows = m0 + tl.arange(0, BM)
    rm = rows < N
    dd = tl.arange(0, D)
    dv = tl.arange(0, DV)
    rr = tl.arange(0, R)
    q = tl.load(Q + (bh * N + rows[:, None]) * D + dd[None, :], mask=rm[:, None],
                other=0.0).to(tl.float32)
    ga = tl.load(A + (bh * N + rows[:, None]) * DV + dv[None, :], mask=rm[:, None], other=0.0)
    gb = tl.load(B + bh * N + rows, mask=rm, other=0.0)
    dq = tl.zeros([BM, D], dtype=tl.float32)
    for n0 in range(c * BLOCK, m0 + BM, BM):
        cols = n0 + tl.arange(0, BM)
        cm = cols < N
        k = tl.load(K + (kvh * N + cols[:, None]) * D + dd[None, :], mask=cm[:, None],
                    other=0.0).to(tl.float32)
        v = tl.load(V + (kvh * N + cols[:, None]) * DV + dv[None, :], mask=cm[:, None],
                    other=0.0).to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT)
        pm1 = _powers(s, P)[0]
        dw = tl.dot(ga, tl.trans(v), input_precision=DOT) + gb[:, None]
        ds = tl.where(cols[None, :] <= rows[:, None], P * pm1 * dw, 0.0)
        dq += tl.dot(ds, k, input_precision=DOT)
    tl.store(DQ + (bh * N + rows[:, None]) * D + dd[None, :], dq, mask=rm[:, None])
    f = tl.load(FQ + (bh * N + rows[:, None]) * R + rr[None, :], mask=rm[:, None],
                other=0.0).to(tl.float32)
    dfq = tl.zeros([BM, R], dtype=tl.float32)
    base = (kvh * NB + c) * R
    for a in range(R):
        ha = tl.load(H + (base + a) * R * DV + rr[:, None] * DV + dv[None, :])
        za = tl.load(Z + (base + a) * R + rr)
        t = tl.dot(ga, tl.trans(ha), input_precision=DOT) + gb[:, None] * za[None, :]
        col = 2.0 * tl.sum(t * f, 1)
        dfq += tl.where(rr[None, :] == a, col[:, None], 0.0)
    tl.store(DFQ + (bh * N + rows[:, None]) * R + rr[None, :], dfq, mask=rm[:, None])


@triton.jit
def bwd_kv_kernel(Q, K, V, FK, A, B, RS, RZ, DK, DVAL, DFK, N, G, NB,
                   D: tl.constexpr, DV: tl.constexpr, R: tl.constexpr, P: tl.constexpr,
                   BLOCK: tl.constexpr, BM: tl.constexpr, DOT: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1).to(tl.int64)
    n0 = pid * BM
    c = n0 // BLOCK
    cols = n0 + tl.arange(0, BM)
    cm = cols < N
    dd = tl.arange(0, D)
    dv = tl.arange(0, DV)
    rr = tl.arange(0, R)
    k = tl.load(K + (kvh * N + cols[:, None]) * D + dd[None, :], mask=cm[:, None],
                other=0.0).to(tl.float32)
    v = tl.load(V + (kvh * N + cols[:, None]) * DV + dv[None, :], mask=cm[:, None],
                other=0.0).to(tl.float32)
    dk = tl.zeros([BM, D], dtype=tl.float32)
    dval = tl.zeros([BM, DV], dtype=tl.float32)
    for g in range(G):
        bh = kvh * G + g
        for m0 in range(n0, c * BLOCK + BLOCK, BM):
            rows = m0 + tl.arange(0, BM)
            rm = rows < N
            q = tl.load(Q + (bh * N + rows[:, None]) * D + dd[None, :], mask=rm[:, None],
                        other=0.0).to(tl.float32)
            ga = tl.load(A + (bh * N + rows[:, None]) * DV + dv[None, :], mask=rm[:, None],
                         other=0.0)
            gb = tl.load(B + bh * N + rows, mask=rm, other=0.0)
            st = tl.dot(k, tl.trans(q), input_precision=DOT)
            pm1, wt = _powers(st, P)
            keep = (cols[:, None] <= rows[None, :]) & rm[None, :]
            wt = tl.where(keep, wt, 0.0)
            dval += tl.dot(wt, ga, input_precision=DOT)
            dwt = tl.dot(v, tl.trans(ga), input_precision=DOT) + gb[None, :]
            dst = tl.where(keep, P * pm1 * dwt, 0.0)
            dk += tl.dot(dst, q, input_precision=DOT)
    tl.store(DK + (kvh * N + cols[:, None]) * D + dd[None, :], dk, mask=cm[:, None])
    f = tl.load(FK + (kvh * N + cols[:, None]) * R + rr[None, :], mask=cm[:, None],
                other=0.0).to(tl.float32)
    dfk = tl.zeros([BM, R], dtype=tl.float32)
    base = (kvh * NB + c) * R
    for a in range(R):
        fa = tl.load(FK + (kvh * N + cols) * R + a, mask=cm, other=0.0).to(tl.float32)
        ra = tl.load(RS + (base + a) * R * DV + rr[:, None] * DV + dv[None, :])
        rza = tl.load(RZ + (base + a) * R + rr)
        dval += tl.dot(f * fa[:, None], ra, input_precision=DOT)
        t = tl.dot(v, tl.trans(ra), input_precision=DOT) + rza[None, :]
        col = 2.0 * tl.sum(t * f, 1)
        dfk += tl.where(rr[None, :] == a, col[:, None], 0.0)
    tl.store(DVAL + (kvh * N + cols[:, None]) * DV + dv[None, :], dval, mask=cm[:, None])
    tl.store(DFK + (kvh * N + cols[:, None]) * R + rr[None, :], dfk, mask=cm[:, None])


def block_states(feat, x, y, *, heads_out, src_g, n, block_size, tile, reverse, precision):
    """Exclusive block prefix (suffix when ``reverse``) states H [.., NB, R, R, DV], z [.., NB, R, R]."""
    r, dv = feat.shape[-1], x.shape[-1]
    nb = -(-n // block_size)
    h = torch.empty(heads_out, nb, r, r, dv, device=feat.device, dtype=torch.float32)
    z = torch.empty(heads_out, nb, r, r, device=feat.device, dtype=torch.float32)
    state_kernel[(heads_out, r)](
        feat, x, y if y is not None else x, h, z, n, nb, src_g, R=r, DV=dv, BLOCK=block_size,
        BM=tile, REVERSE=reverse, HAS_Y=y is not None, DOT=precision)
    return h, z
