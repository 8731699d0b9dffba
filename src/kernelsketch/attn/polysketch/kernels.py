"""Triton kernels of causal PolySketch attention (forward and backward) and their launchers.

The math is the block algorithm of :mod:`kernelsketch.attn.polysketch.naive`
(its ``_causal_torch`` is the PyTorch twin, used on CPU): with q', k' the
scaled, normalised queries and keys, φ their degree-p/2 sketch (r features)
and Φ = φ ⊗ φ (r² features, flattened as j = a·r + b; never stored: formed
FEAT features at a time from gathered products of φ),

    num_i = Σ_{j in block(i), j <= i} (q'_i·k'_j)^p v_j + Φ(q'_i)ᵀ H_c,   H_c = Σ_{j < start(c)} Φ(k'_j) v_jᵀ
    den_i = Σ_{j in block(i), j <= i} (q'_i·k'_j)^p     + Φ(q'_i)ᵀ z_c,   z_c = Σ_{j < start(c)} Φ(k'_j)
    out_i = num_i / (1 + den_i).

Kernels (float32 accumulation of every state and score):

* ``state_kernel``: exclusive prefix sums H_c [r², Dv], z_c [r²] over blocks
  (one program per kv head, FEAT consecutive features and STATE_DV value
  columns, sequential over blocks); run in reverse over the blocks in the
  backward pass for the adjoint states.
* ``fwd_kernel``: one program per (query tile, head): exact local scores up to
  the diagonal and the inter-block term Φ(q')ᵀ H_c.
* ``bwd_q_kernel`` / ``bwd_kv_kernel``: the local (in-block) gradients of q',
  k' and v, FlashAttention-2 style.
* ``state_grad_kernel``: the gradients through the states: of the features
  φ(q'), φ(k') (the sketch itself is differentiated by autograd) and the
  inter-block part of dv.

With A_i = do_i / (1 + den_i) and B_i = -(do_i·out_i) / (1 + den_i) + dden_i,
dL/dw_ij = A_i·v_j + B_i; the inter-block gradients use the adjoint states
R_c = Σ_{i in blocks > c} Φ(q'_i) A_iᵀ and ρ_c = Σ_{i in blocks > c} Φ(q'_i) B_i,
and ∂Φ/∂φ contracts a symmetric r×r matrix X as 2 X φ.

Precision (:mod:`..common.triton_utils`): products of q, k, v, A run in the
input dtype with float32 accumulation (polynomial weights and their gradients
are rounded to it after scaling each row by its largest entry, so float16
cannot overflow); products with the float32 features and states run in TF32.
Tiles, warps and stages: :func:`forward_candidates` (autotuned),
``BACKWARD_CONFIG``, ``STATE_CONFIG``; every choice is compiled for sm_90
and sm_80 by tests/attn/test_aot.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common.triton_utils import check_aligned, head_tile

TILE = 64  # query / key rows per program (the M of a wgmma tile): the block size is a multiple
FEAT = 64  # features of Φ per step in fwd_kernel and state_kernel (its wgmma M)
STATE_ROWS = 32  # rows per step in state_kernel
STATE_DV = 128  # value columns per state_kernel program (wider heads: several programs)
GRAD_FEAT = 32  # features of Φ per step in state_grad_kernel
MAX_ROWS = GRAD_FEAT // 16  # rows a of the r×r grid in one state_grad_kernel step (r >= 16)
# Under the interpreter (tests on CPU) nothing can be timed: the first candidate runs.
_INTERPRET = triton.knobs.runtime.interpret


# Tiles, warps and stages, from the compile metadata (tests/attn/test_aot.py): 8 warps keep
# the [64, Dv] float32 accumulators of 64-row programs in registers on both chips; the
# backward kernels hold two of them (dk, dv) and take 32-row tiles of the other side; heads
# of 256 spill on sm_90 in every configuration tried (the eligibility stops at 128).
BACKWARD_CONFIG = {"BLOCK_N": 32, "num_warps": 8, "num_stages": 2}


def forward_candidates(itemsize: int) -> list[tuple]:
    """Autotuning candidates (BLOCK_N, num_warps, num_stages) of ``fwd_kernel``: the key
    tile and the pipeline depth trade registers against shared memory (all fit both chips
    without spills in half precision); float32 (TF32) takes the smallest."""
    return [(32, 8, 2)] if itemsize == 4 else [(32, 8, 2), (64, 8, 2)]


def _config(candidate: tuple) -> triton.Config:
    block_n, warps, stages = candidate
    return triton.Config({"BLOCK_N": block_n}, num_warps=warps, num_stages=stages)


def _prune(configs, named_args, **kwargs):
    """The candidates of this launch's dtype (the first under the interpreter)."""
    cands = forward_candidates(named_args["Q"].element_size())
    return [_config(c) for c in (cands[:1] if _INTERPRET else cands)]


# state_kernel and state_grad_kernel ([64, Dv] float32 accumulators and gathered feature
# products per program): 8 warps in two stages, all 255 registers allowed (ptxas otherwise
# caps some at 128 registers and spills), keep them out of local memory.
STATE_CONFIG = {"num_warps": 8, "num_stages": 2, "maxnreg": 255}


@triton.jit
def _powers(s, P):
    """(s^(P-1), s^P) for an even P >= 2."""
    pm1 = s
    for _ in range(P - 2):
        pm1 = pm1 * s
    return pm1, pm1 * s


@triton.jit
def _dot_rows_scaled(a, b):
    """a @ b for float32 ``a`` and ``b`` in the input dtype, float32 result: ``a`` is
    rounded to b's dtype; for float16 each row is first divided by its largest
    magnitude (and the product multiplied back), so large weights cannot overflow."""
    if b.dtype == tl.float16:
        amax = tl.max(tl.abs(a), 1)
        amax = tl.where(amax > 0, amax, 1.0)
        return tl.dot((a / amax[:, None]).to(b.dtype), b, input_precision="tf32") * amax[:, None]
    return tl.dot(a.to(b.dtype), b, input_precision="tf32")


@triton.jit
def _phi(F, rows, rm, j, R):
    """Φ columns j = a·R + b (φ_a φ_b) of the rows ``rows`` of features F [., R]: [rows, FEAT]."""
    base = F + rows[:, None] * R
    fa = tl.load(base + (j // R)[None, :], mask=rm[:, None], other=0.0)
    fb = tl.load(base + (j % R)[None, :], mask=rm[:, None], other=0.0)
    return fa * fb


# Offsets: every program first moves its pointers to its head (and block) with 64-bit
# scalar arithmetic (the states exceed 2^31 entries); offsets inside a head are int32.


@triton.jit(do_not_specialize=["N", "NB", "SRC_G", "R", "BLOCK", "reverse", "has_y"])
def state_kernel(FEAT_PTR, X, Y, H, Z, N, NB, SRC_G, R, BLOCK, DV, reverse, has_y,
                 BLOCK_DV: tl.constexpr, FEAT: tl.constexpr, BM: tl.constexpr):
    # Exclusive prefix (suffix if reverse) sums over blocks of Φ(f_j)[jj] x_jᵀ and
    # Φ(f_j)[jj] y_j (y = 1 unless has_y) for the FEAT features jj of program_id(1),
    # summed over SRC_G source heads.
    oh = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * FEAT + tl.arange(0, FEAT)
    dv = tl.program_id(2) * BLOCK_DV + tl.arange(0, BLOCK_DV)  # one slice of the value columns
    dvm = dv < DV
    z_slice = (j * 0 + tl.program_id(2)) == 0  # the first slice stores z
    h = tl.zeros([FEAT, BLOCK_DV], dtype=tl.float32)
    z = tl.zeros([FEAT], dtype=tl.float32)
    for i in range(NB):
        c = i + reverse * (NB - 1 - 2 * i)
        state = (oh * NB + c) * R * R
        tl.store(H + state * DV + j[:, None] * DV + dv[None, :], h, mask=dvm[None, :])
        tl.store(Z + state + j, z, mask=z_slice)
        for g in range(SRC_G):
            sh = (oh * SRC_G + g) * N
            for n0 in range(c * BLOCK, c * BLOCK + BLOCK, BM):
                rows = n0 + tl.arange(0, BM)
                m = rows < N
                phi = _phi(FEAT_PTR + sh * R, rows, m, j, R)
                x = tl.load(X + sh * DV + rows[:, None] * DV + dv[None, :],
                            mask=m[:, None] & dvm[None, :], other=0.0)
                h += tl.dot(tl.trans(phi.to(x.dtype)), x, input_precision="tf32")
                y = tl.load(Y + sh + rows, mask=m & ((rows * 0 + has_y) != 0), other=1.0)
                z += tl.sum(phi * y[:, None], 0)


@triton.autotune(configs=[_config(c) for c in sorted(set(forward_candidates(2)
                                                        + forward_candidates(4)))],
                 key=["BLOCK_D", "BLOCK_DV"], prune_configs_by={"early_config_prune": _prune})
@triton.jit(do_not_specialize=["N", "G", "NB", "R", "P", "BLOCK"])
def fwd_kernel(Q, K, V, FQ, H, Z, O, DEN, N, G, NB, R, P, BLOCK, D, DV,
               BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BM: tl.constexpr,
               BLOCK_N: tl.constexpr, FEAT: tl.constexpr):
    m0 = tl.program_id(0) * BM
    bh = tl.program_id(1)
    kvh = bh // G
    c = m0 // BLOCK
    q_head, kv_head = bh.to(tl.int64) * N, kvh.to(tl.int64) * N
    state = (kvh.to(tl.int64) * NB + c) * R * R
    rows = m0 + tl.arange(0, BM)
    rm = rows < N
    dd = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    dm, dvm = dd < D, dv < DV
    q = tl.load(Q + q_head * D + rows[:, None] * D + dd[None, :], mask=rm[:, None] & dm[None, :],
                other=0.0)
    num = tl.zeros([BM, BLOCK_DV], dtype=tl.float32)
    den = tl.zeros([BM], dtype=tl.float32)
    # Exact polynomial weights inside the block, up to the diagonal.
    for n0 in range(c * BLOCK, m0 + BM, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        cm = cols < N
        k = tl.load(K + kv_head * D + cols[:, None] * D + dd[None, :],
                    mask=cm[:, None] & dm[None, :], other=0.0)
        v = tl.load(V + kv_head * DV + cols[:, None] * DV + dv[None, :],
                    mask=cm[:, None] & dvm[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision="tf32")
        w = _powers(s, P)[1]
        w = tl.where(cols[None, :] <= rows[:, None], w, 0.0)
        num += _dot_rows_scaled(w, v)
        den += tl.sum(w, 1)
    # Earlier blocks through the prefix state, FEAT features of Φ at a time.
    for j0 in range(0, R * R, FEAT):
        j = j0 + tl.arange(0, FEAT)
        phi = _phi(FQ + q_head * R, rows, rm, j, R)
        hj = tl.load(H + state * DV + j[:, None] * DV + dv[None, :], mask=dvm[None, :],
                     other=0.0)
        num += tl.dot(phi, hj, input_precision="tf32")
        den += tl.sum(phi * tl.load(Z + state + j)[None, :], 1)
    out = num / (1.0 + den)[:, None]
    tl.store(O + q_head * DV + rows[:, None] * DV + dv[None, :], out,
             mask=rm[:, None] & dvm[None, :])
    tl.store(DEN + q_head + rows, den, mask=rm)


@triton.jit(do_not_specialize=["N", "G", "P", "BLOCK"])
def bwd_q_kernel(Q, K, V, A, B, DQ, N, G, P, BLOCK, D, DV,
                 BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BM: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    m0 = tl.program_id(0) * BM
    bh = tl.program_id(1)
    kvh = bh // G
    c = m0 // BLOCK
    q_head, kv_head = bh.to(tl.int64) * N, kvh.to(tl.int64) * N
    rows = m0 + tl.arange(0, BM)
    rm = rows < N
    dd = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    dm, dvm = dd < D, dv < DV
    q = tl.load(Q + q_head * D + rows[:, None] * D + dd[None, :], mask=rm[:, None] & dm[None, :],
                other=0.0)
    ga = tl.load(A + q_head * DV + rows[:, None] * DV + dv[None, :],
                 mask=rm[:, None] & dvm[None, :], other=0.0)
    gb = tl.load(B + q_head + rows, mask=rm, other=0.0)
    dq = tl.zeros([BM, BLOCK_D], dtype=tl.float32)
    for n0 in range(c * BLOCK, m0 + BM, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        cm = cols < N
        k = tl.load(K + kv_head * D + cols[:, None] * D + dd[None, :],
                    mask=cm[:, None] & dm[None, :], other=0.0)
        v = tl.load(V + kv_head * DV + cols[:, None] * DV + dv[None, :],
                    mask=cm[:, None] & dvm[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision="tf32")
        pm1 = _powers(s, P)[0]
        dw = tl.dot(ga, tl.trans(v), input_precision="tf32") + gb[:, None]
        ds = tl.where(cols[None, :] <= rows[:, None], P * pm1 * dw, 0.0)
        dq += _dot_rows_scaled(ds, k)
    tl.store(DQ + q_head * D + rows[:, None] * D + dd[None, :], dq,
             mask=rm[:, None] & dm[None, :])


@triton.jit(do_not_specialize=["N", "G", "P", "BLOCK"])
def bwd_kv_kernel(Q, K, V, A, B, DK, DVAL, N, G, P, BLOCK, D, DV,
                  BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BM: tl.constexpr,
                  BLOCK_N: tl.constexpr):
    # One program per tile of BM keys; the query rows of its block come in BLOCK_N tiles.
    n0 = tl.program_id(0) * BM
    kvh = tl.program_id(1)
    c = n0 // BLOCK
    kv_head = kvh.to(tl.int64) * N
    cols = n0 + tl.arange(0, BM)
    cm = cols < N
    dd = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    dm, dvm = dd < D, dv < DV
    k = tl.load(K + kv_head * D + cols[:, None] * D + dd[None, :],
                mask=cm[:, None] & dm[None, :], other=0.0)
    v = tl.load(V + kv_head * DV + cols[:, None] * DV + dv[None, :],
                mask=cm[:, None] & dvm[None, :], other=0.0)
    dk = tl.zeros([BM, BLOCK_D], dtype=tl.float32)
    dval = tl.zeros([BM, BLOCK_DV], dtype=tl.float32)
    for g in range(G):
        q_head = (kvh * G + g).to(tl.int64) * N
        for m0 in range(n0, c * BLOCK + BLOCK, BLOCK_N):
            rows = m0 + tl.arange(0, BLOCK_N)
            rm = rows < N
            q = tl.load(Q + q_head * D + rows[:, None] * D + dd[None, :],
                        mask=rm[:, None] & dm[None, :], other=0.0)
            ga = tl.load(A + q_head * DV + rows[:, None] * DV + dv[None, :],
                         mask=rm[:, None] & dvm[None, :], other=0.0)
            gb = tl.load(B + q_head + rows, mask=rm, other=0.0)
            st = tl.dot(k, tl.trans(q), input_precision="tf32")
            pm1, wt = _powers(st, P)
            keep = (cols[:, None] <= rows[None, :]) & rm[None, :]
            dval += _dot_rows_scaled(tl.where(keep, wt, 0.0), ga)
            dwt = tl.dot(v, tl.trans(ga), input_precision="tf32") + gb[None, :]
            dk += _dot_rows_scaled(tl.where(keep, P * pm1 * dwt, 0.0), q)
    tl.store(DK + kv_head * D + cols[:, None] * D + dd[None, :], dk,
             mask=cm[:, None] & dm[None, :])
    tl.store(DVAL + kv_head * DV + cols[:, None] * DV + dv[None, :], dval,
             mask=cm[:, None] & dvm[None, :])


@triton.jit(do_not_specialize=["N", "G", "NB", "R", "BLOCK", "has_w"])
def state_grad_kernel(F, S, SZ, X, W, DF, VAL, N, G, NB, R, BLOCK, DV, has_w,
                      BLOCK_DV: tl.constexpr, BM: tl.constexpr, FEAT: tl.constexpr,
                      MAX_ROWS: tl.constexpr, WITH_VALUE: tl.constexpr):
    # Gradients through the state (S, SZ) of each row's block, for the rows of one tile of
    # head program_id(1) (features F, state of head // G):
    #   DF[row, a] = 2 Σ_b φ_b (x·S[a, b] + w SZ[a, b])   (∂Φ/∂φ of the symmetric r×r grid;
    #   w = W[row] if has_w else 1), and, WITH_VALUE, VAL[row] += Σ_j Φ_j S_j (in a second
    #   loop: one loop with both products spills registers).
    # Features come in steps of min(r, FEAT) columns b of FEAT // min(r, FEAT) rows a, so each
    # DF entry is written once (r a power of two >= 16).
    m0 = tl.program_id(0) * BM
    hd = tl.program_id(1)
    c = m0 // BLOCK
    head = hd.to(tl.int64) * N
    state = ((hd // G).to(tl.int64) * NB + c) * R * R
    rows = m0 + tl.arange(0, BM)
    rm = rows < N
    dv = tl.arange(0, BLOCK_DV)
    dvm = dv < DV
    x = tl.load(X + head * DV + rows[:, None] * DV + dv[None, :], mask=rm[:, None] & dvm[None, :],
                other=0.0).to(tl.float32)
    w = tl.load(W + head + rows, mask=rm & ((rows * 0 + has_w) != 0), other=1.0)
    frows = F + head * R + rows[:, None] * R
    e = tl.arange(0, FEAT)
    rows_per_step = tl.maximum(FEAT // R, 1)
    cols_per_step = tl.minimum(R, FEAT)
    s_of = e // cols_per_step
    sidx = tl.arange(0, MAX_ROWS)
    for a0 in range(0, R, rows_per_step):
        acc = tl.zeros([BM, MAX_ROWS], dtype=tl.float32)
        for b0 in range(0, R, cols_per_step):
            b = b0 + e % cols_per_step
            j = (a0 + s_of) * R + b
            sj = tl.load(S + state * DV + j[:, None] * DV + dv[None, :], mask=dvm[None, :],
                         other=0.0)
            t = tl.dot(x, tl.trans(sj), input_precision="tf32")
            t += w[:, None] * tl.load(SZ + state + j)[None, :]
            fb = tl.load(frows + b[None, :], mask=rm[:, None], other=0.0)
            u = t * fb
            for s in tl.static_range(MAX_ROWS):
                part = tl.sum(tl.where((s_of == s)[None, :], u, 0.0), 1)
                acc += tl.where((sidx == s)[None, :], part[:, None], 0.0)
        tl.store(DF + head * R + rows[:, None] * R + a0 + sidx[None, :], 2.0 * acc,
                 mask=rm[:, None] & (sidx < rows_per_step)[None, :])
    if WITH_VALUE:
        val = tl.zeros([BM, BLOCK_DV], dtype=tl.float32)
        for j0 in range(0, R * R, FEAT):
            j = j0 + e
            sj = tl.load(S + state * DV + j[:, None] * DV + dv[None, :], mask=dvm[None, :],
                         other=0.0)
            val += tl.dot(_phi(F + head * R, rows, rm, j, R), sj, input_precision="tf32")
        out = VAL + head * DV + rows[:, None] * DV + dv[None, :]
        mask = rm[:, None] & dvm[None, :]
        tl.store(out, tl.load(out, mask=mask, other=0.0) + val, mask=mask)


def _states(feat, x, y, *, heads_out, src_g, n, block_size, reverse):
    """Exclusive block prefix (suffix when ``reverse``) states H [heads_out, NB, r², Dv] and
    z [heads_out, NB, r²] (float32) of features ``feat`` [heads_out·src_g, n, r], x [.., n, Dv]
    and optional weights y [.., n]."""
    r, dv = feat.shape[-1], x.shape[-1]
    nb = -(-n // block_size)
    h = torch.empty(heads_out, nb, r * r, dv, device=feat.device, dtype=torch.float32)
    z = torch.empty(heads_out, nb, r * r, device=feat.device, dtype=torch.float32)
    block_dv = min(head_tile(dv), STATE_DV)
    state_kernel[(heads_out, r * r // FEAT, triton.cdiv(dv, block_dv))](
        feat, x, feat if y is None else y, h, z, n, nb, src_g, r, block_size, dv, int(reverse),
        int(y is not None), BLOCK_DV=block_dv, FEAT=FEAT, BM=STATE_ROWS, **STATE_CONFIG)
    return h, z


def _state_grads(feat, h, z, x, w, dfeat, val, *, g, block_size):
    """dfeat (and val += Φ h when ``val`` is given) through the states h, z of each row's
    block: one launch of ``state_grad_kernel`` over the heads of ``feat`` [., heads, n, r]."""
    n, r, dv = feat.shape[-2], feat.shape[-1], x.shape[-1]
    heads = feat.numel() // (n * r)
    state_grad_kernel[(triton.cdiv(n, TILE), heads)](
        feat, h, z, x, feat if w is None else w, dfeat, x if val is None else val, n, g,
        h.shape[1], r, block_size, dv, int(w is not None), BLOCK_DV=head_tile(dv), BM=TILE,
        FEAT=GRAD_FEAT, MAX_ROWS=MAX_ROWS, WITH_VALUE=val is not None, **STATE_CONFIG)


def _tiles(q, v) -> dict:
    return {"BLOCK_D": head_tile(q.shape[-1]), "BLOCK_DV": head_tile(v.shape[-1]), "BM": TILE}


def polysketch_forward(q, k, v, fq, fk, *, degree: int, block_size: int):
    """Forward launch: contiguous q [B, Hq, N, D], k [B, Hkv, N, D], v [B, Hkv, N, Dv] (one
    dtype; D, Dv multiples of 16), fq [B, Hq, N, r], fk [B, Hkv, N, r] float32. Returns out [B, Hq, N, Dv], den
    [B, Hq, N] (float32) and the prefix states (h, z) that the backward reuses."""
    B, Hq, N, D = q.shape
    Hkv, Dv, r = k.shape[1], v.shape[-1], fq.shape[-1]
    check_aligned(D=D, Dv=Dv)
    h, z = _states(fk, v, None, heads_out=B * Hkv, src_g=1, n=N, block_size=block_size,
                   reverse=False)
    out = torch.empty(B, Hq, N, Dv, device=q.device, dtype=torch.float32)
    den = torch.empty(B, Hq, N, device=q.device, dtype=torch.float32)
    fwd_kernel[(triton.cdiv(N, TILE), B * Hq)](
        q, k, v, fq, h, z, out, den, N, Hq // Hkv, h.shape[1], r, degree, block_size, D, Dv,
        FEAT=FEAT, **_tiles(q, v))
    return out, den, h, z


def polysketch_backward(q, k, v, fq, fk, ga, gb, h, z, *, degree: int, block_size: int):
    """Backward launch: the forward's inputs and states, A = ga [B, Hq, N, Dv] (in v's
    dtype) and B = gb [B, Hq, N] float32 (see the module docstring). Returns float32
    dq, dk, dv, dfq, dfk."""
    B, Hq, N, D = q.shape
    Hkv, Dv, r = k.shape[1], v.shape[-1], fq.shape[-1]
    G = Hq // Hkv
    consts = {**_tiles(q, v), **BACKWARD_CONFIG}
    dq = torch.empty(B, Hq, N, D, device=q.device, dtype=torch.float32)
    bwd_q_kernel[(triton.cdiv(N, TILE), B * Hq)](
        q, k, v, ga, gb, dq, N, G, degree, block_size, D, Dv, **consts)
    dk = torch.empty(B, Hkv, N, D, device=q.device, dtype=torch.float32)
    dv = torch.empty(B, Hkv, N, Dv, device=q.device, dtype=torch.float32)
    bwd_kv_kernel[(triton.cdiv(N, TILE), B * Hkv)](
        q, k, v, ga, gb, dk, dv, N, G, degree, block_size, D, Dv, **consts)
    # Inter-block terms: dφ(q') through the prefix states (h, z); dv and dφ(k') through the
    # adjoint states R_c, ρ_c (suffix sums of Φ(q') A and Φ(q') B over later blocks).
    dfq = torch.empty(B, Hq, N, r, device=q.device, dtype=torch.float32)
    _state_grads(fq, h, z, ga, gb, dfq, None, g=G, block_size=block_size)
    rs, rz = _states(fq, ga, gb, heads_out=B * Hkv, src_g=G, n=N, block_size=block_size,
                     reverse=True)
    dfk = torch.empty(B, Hkv, N, r, device=q.device, dtype=torch.float32)
    _state_grads(fk, rs, rz, v, None, dfk, dv, g=1, block_size=block_size)
    return dq, dk, dv, dfq, dfk
