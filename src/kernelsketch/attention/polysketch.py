"""PolySketch attention (``method="polysketch"``): polynomial attention in linear time.

PolySketchFormer (Kacham, Mirrokni, Zhong, arXiv 2310.01655) approximates the
degree-p polynomial attention of :mod:`kernelsketch.attention.polynomial`,

    out_i = Σ_j w_ij v_j / (1 + Σ_j w_ij),   w_ij = (scale · q_i·k_j)^p,

by replacing the weights with sketched, non-negative scores. With
q' = sqrt(scale)·q and k' = sqrt(scale)·k (so that q'·k' = scale·q·k):

* **Features** (§3): a sketch φ: R^D -> R^r of the degree-p/2 polynomial kernel,
  ``E[φ(x)·φ(y)] = (x·y)^{p/2}``. For p = 4 it is the degree-2 sketch
  ``φ(x) = (x S1) ⊙ (x S2) / sqrt(r)`` with S1, S2 i.i.d. N(0, 1) entries
  (``sketch="gaussian"``) or a TensorSRHT (``"hadamard"``); for p/2 > 2 the
  PolySketch degree-2 tree of :class:`kernelsketch.sketch.tensor.PolySketch`;
  for p = 2 the identity (exact). ``sketch="learned"`` (p = 4 only) is a
  trainable sketch started at the Gaussian one (:class:`LearnedDegree2Sketch`);
  ``"learned-mlp"`` the paper's learned MLP branches (:class:`MLPDegree2Sketch`).
* **Self-tensoring** (§3.2): the score is ``(φ(q')·φ(k'))^2 = Φ(q')·Φ(k')`` with
  ``Φ(x) = φ(x) ⊗ φ(x)`` (r² features). It is non-negative by construction,
  so denominators stay >= 1. It is NOT an unbiased estimate of (q'·k')^p
  (its mean exceeds it by the variance of φ(q')·φ(k')); it converges to it as
  r grows. The state is r²×(Dv+1) per block boundary. The Triton kernels
  form Φ tile by tile in registers and never store it; the PyTorch path
  materialises Φ for the whole sequence (N·r² values per head), which is
  fine for CPU-sized inputs.
* **Causal, block algorithm** (§4, "block-based lower triangular
  multiplication"): positions are cut into blocks of b tokens aligned at key
  position 0. Query i sees, in its own block, the keys j <= i with exact
  polynomial weights (``exact_local=True``) or sketched scores, and every
  earlier block through the prefix sum of Φ(k_j) ⊗ [v_j, 1] over whole
  blocks: O(N (b D + r² Dv)) time. With ``N <= block_size`` and
  ``exact_local`` the result is exact polynomial attention.
* **Non-causal**: the linear form ``Φ(Q') (Φ(K')ᵀ [V, 1])``, all scores
  sketched (``exact_local`` is not used).
* **Short sequences** (PyTorch path): when it costs fewer flops
  (:func:`use_quadratic`), the same scores are materialised as an [N, M]
  matrix instead; the result is the same up to rounding.

Random sketches are drawn from ``generator`` on every functional call; the
:class:`PolySketchAttention` module draws them once (buffers, or parameters
for the learned sketches), owns the q/k layer norms, and decodes token by token with
a recurrent state (:meth:`PolySketchAttention.step`).

``lse`` is ``log(1 + Σ_j w̃_ij)`` with the sketched weights, as for
:mod:`~kernelsketch.attention.polynomial` (the ``1`` is a sink key with zero
value; rows that see no key give out = 0, lse = 0).

On CUDA with Triton the causal path runs the fused kernels of
:mod:`kernelsketch.attention.triton.polysketch` (forward and backward, fp32
state) for float32/bfloat16/float16 inputs; everywhere else (and for float64),
the PyTorch implementation below (autograd).

Differences from the paper's public (JAX) code
----------------------------------------------
The same method, with these deliberate differences:

* **Score scale.** The default ``scale`` is 1/sqrt(D) (SDPA's convention); the
  paper raises the unscaled q·k of the layer-normalised vectors. Scaling
  multiplies every weight by scale^p, which only changes the weight of the
  ``1`` (sink) in the denominator relative to the keys; ``scale=1.0`` gives
  the paper's convention.
* **Layer norms.** :class:`PolySketchAttention` has separate q and k layer
  norms (affine by default), used by both the local and the sketched weights;
  the paper's code applies one affine layer norm to both q and k (and, with
  exact local blocks, a second one for the local weights). The functional
  form normalises without affine parameters.
* **Sketch scaling.** φ is unbiased, ``E[φ(x)·φ(y)] = (x·y)²``, so the sketched
  weights between blocks and the exact weights inside a block estimate the
  same (q'·k')^p. The paper's code divides each of S1, S2 by sqrt(r), i.e. uses
  φ/sqrt(r), so its sketched weights are 1/r² of ours relative to the local
  ones and to the sink.
* **Hadamard sketch.** ``"hadamard"`` is the TensorSRHT of
  :mod:`kernelsketch.sketch.tensor` (rows without replacement, any D by
  zero-padding); the paper samples r columns of the ±1 Hadamard matrix with
  replacement and needs a power-of-two D. Same unbiased convention.
* **Learned sketch.** ``"learned"`` (:class:`LearnedDegree2Sketch`) is one
  residual level per branch started at the Gaussian sketch, not the paper's
  architecture; ``"learned-mlp"`` (:class:`MLPDegree2Sketch`) is the paper's
  two-level MLP branches with a tanh bound, applied here after the module's
  q/k layer norms (the paper applies them to q, k in place of a layer norm).
* **Lengths.** Any N and M (bottom-right causal alignment); the paper's code
  needs N = M, a multiple of the block size.

References
----------
Kacham, Mirrokni, Zhong. PolySketchFormer: Fast Transformers via Sketching
Polynomial Kernels, ICML 2024, arXiv 2310.01655.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_attention_inputs, check_choice, check_float, check_int
from ..sketch.sampling import resolve_generator
from ..sketch.tensor import Degree2Sketch, PolySketch
from .api import MethodConfig, MethodSpec
from .merge import accumulation_dtype
from .polynomial import check_degree, layer_norm_qk, normalize_output, polynomial_weights

SKETCHES = ("gaussian", "hadamard", "learned", "learned-mlp")
LEARNED = ("learned", "learned-mlp")
_SKETCH_KIND = {"gaussian": "gaussian", "hadamard": "srht"}


@dataclass(frozen=True)
class PolySketchConfig(MethodConfig):
    """PolySketch attention.

    degree : even int >= 2, default 4 (the polynomial degree p).
    sketch_size : r, the sketch dimension of the degree-p/2 feature map; the
        state has r² features. Default 32 (the paper uses 32 or 64).
    block_size : b, tokens per block of the causal algorithm. Default 256.
    sketch : "gaussian" (default), "hadamard" (TensorSRHT), "learned"
        (:class:`LearnedDegree2Sketch`) or "learned-mlp" (the paper's MLP
        branches, :class:`MLPDegree2Sketch`). The learned sketches need
        degree 4 and :class:`PolySketchAttention`, whose parameters are trained.
    exact_local : causal only: exact polynomial weights inside each block
        (default True, the paper's choice); False sketches them too.
    normalize : layer-normalise q and k (no affine) in the functional form,
        default True as in the paper. :class:`PolySketchAttention` uses its
        own (optionally affine) layer norms instead.
    """

    degree: int = 4
    sketch_size: int = 32
    block_size: int = 256
    sketch: str = "gaussian"
    exact_local: bool = True
    normalize: bool = True

    def __post_init__(self) -> None:
        check_degree(self.degree)
        check_int("sketch_size", self.sketch_size, min=1)
        check_int("block_size", self.block_size, min=1)
        check_choice("sketch", self.sketch, SKETCHES)
        for name in ("exact_local", "normalize"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {type(getattr(self, name)).__name__}")
        if self.sketch in LEARNED and self.degree != 4:
            raise ValueError(f"sketch={self.sketch!r} needs degree=4, got degree={self.degree}")


class LearnedDegree2Sketch(nn.Module):
    """Learned degree-2 feature map ``φ(x) = f1(x) ⊙ f2(x) / sqrt(r)`` (p = 4).

    The paper (§5, "learned sketches") replaces the random matrices of the
    degree-2 sketch by small trainable networks. Here each branch is
    ``f(x) = x G + gelu(x W) U`` with G [D, r] initialised N(0, 1), W [D, D]
    and U [D, r] = 0 at initialisation, so training starts exactly from the
    Gaussian sketch (unbiased for (x·y)²) and learns a correction. Scores are
    self-tensored, hence non-negative, whatever the parameters.

    This differs from the paper's public code, whose branches are two stacked
    levels of ``LayerNorm -> Linear(·, 8r) -> GELU -> Linear(8r, r)`` (no
    biases, no linear skip, random initialisation), combined as
    ``sqrt(r) tanh(f1(x) ⊙ f2(x) / sqrt(r))`` and applied to q and k in place
    of their layer norm. Here the input is the layer-normalised, scaled q' or
    k' of :class:`PolySketchAttention`, the hidden width is D, and the output
    is not bounded by a tanh. :class:`MLPDegree2Sketch` (``"learned-mlp"``)
    follows the paper's architecture.

    Parameters
    ----------
    d_in : head dimension D; d_out : r; generator : source of the initial draws.
    """

    def __init__(self, d_in: int, d_out: int, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        dev = generator.device if generator is not None else None
        self.proj = nn.Parameter(torch.randn(2, d_in, d_out, generator=generator, device=dev))
        hidden = torch.randn(2, d_in, d_in, generator=generator, device=dev) / math.sqrt(d_in)
        self.hidden = nn.Parameter(hidden)
        self.out = nn.Parameter(torch.zeros(2, d_in, d_out, device=dev))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., D] -> [..., r] (dtype of x)."""
        dt = x.dtype
        branches = [
            x @ self.proj[i].to(dt) + F.gelu(x @ self.hidden[i].to(dt)) @ self.out[i].to(dt)
            for i in range(2)
        ]
        return branches[0] * branches[1] / math.sqrt(self.d_out)


class MLPDegree2Sketch(nn.Module):
    """The paper's learned sketch: ``φ(x) = sqrt(r) tanh(f1(x) ⊙ f2(x) / sqrt(r))`` (p = 4).

    Each branch f1, f2 stacks ``levels`` blocks
    ``h -> gelu(LayerNorm(h) W1) W2`` with W1 [·, expansion·r], W2 [expansion·r, r]
    (no biases; affine layer norms), the architecture of the PolySketchFormer
    code (two levels, expansion 8). The tanh bounds every feature by sqrt(r),
    so scores ``(φ(q)·φ(k))²`` are non-negative and at most r⁴. Unlike
    :class:`LearnedDegree2Sketch` it does not start as a sketch of (x·y)²: it
    is a learned non-negative kernel. Weights are drawn from ``generator``
    (LeCun normal, std 1/sqrt(fan-in)) as plain parameters, so a host model's
    ``nn.Linear`` initialisation loop does not touch them.

    Parameters
    ----------
    d_in : head dimension D; d_out : r; levels : blocks per branch (default 2);
    expansion : hidden width / r (default 8); generator : source of the draws.
    """

    def __init__(self, d_in: int, d_out: int, *, levels: int = 2, expansion: int = 8,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        dev = generator.device if generator is not None else None
        hidden = expansion * d_out

        def lecun(fan_in, fan_out):
            w = torch.randn(2, fan_in, fan_out, generator=generator, device=dev)
            return nn.Parameter(w / math.sqrt(fan_in))

        widths = [d_in] + [d_out] * (levels - 1)
        self.w_in = nn.ParameterList(lecun(w, hidden) for w in widths)
        self.w_out = nn.ParameterList(lecun(hidden, d_out) for _ in widths)
        self.norm_weight = nn.ParameterList(
            nn.Parameter(torch.ones(2, w, device=dev)) for w in widths)
        self.norm_bias = nn.ParameterList(
            nn.Parameter(torch.zeros(2, w, device=dev)) for w in widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., D] -> [..., r] (dtype of x), every entry in (-sqrt(r), sqrt(r))."""
        dt = x.dtype
        branches = []
        for i in range(2):
            h = x
            for w_in, w_out, nw, nb in zip(self.w_in, self.w_out, self.norm_weight,
                                           self.norm_bias):
                h = F.layer_norm(h, h.shape[-1:], nw[i].to(dt), nb[i].to(dt))
                h = F.gelu(h @ w_in[i].to(dt)) @ w_out[i].to(dt)
            branches.append(h)
        root = math.sqrt(self.d_out)
        return torch.tanh(branches[0] * branches[1] / root) * root


class PolySketchFeatures(nn.Module):
    """Feature map φ: [..., D] -> [..., r] with ``E[φ(x)·φ(y)] = (x·y)^{degree/2}``.

    degree 2: identity (r = D, exact); degree 4: :class:`Degree2Sketch`
    (Gaussian or TensorSRHT), :class:`LearnedDegree2Sketch` or
    :class:`MLPDegree2Sketch` (learned, not unbiased); degree >= 6:
    :class:`PolySketch` tree of degree/2. Randomness is drawn once, here.

    Parameters
    ----------
    head_dim : D; config : :class:`PolySketchConfig`;
    seed / generator : source of the sketch (one of them, or neither: torch's
        global generator).
    """

    def __init__(
        self, head_dim: int, config: PolySketchConfig, *, seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_int("head_dim", head_dim, min=1)
        g = resolve_generator(seed, generator)
        half = config.degree // 2
        self.head_dim = head_dim
        if half == 1:
            self.sketch = None
            self.dim = head_dim
        elif config.sketch in LEARNED:
            cls = LearnedDegree2Sketch if config.sketch == "learned" else MLPDegree2Sketch
            self.sketch = cls(head_dim, config.sketch_size, generator=g)
            self.dim = config.sketch_size
        elif half == 2:
            kind = _SKETCH_KIND[config.sketch]
            self.sketch = Degree2Sketch(head_dim, config.sketch_size, kind=kind, generator=g)
            self.dim = config.sketch_size
        else:
            kind = _SKETCH_KIND[config.sketch]
            self.sketch = PolySketch(head_dim, config.sketch_size, half, kind=kind, generator=g)
            self.dim = config.sketch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., D] float32/float64 -> φ(x) [..., r], same dtype (not re-validated)."""
        if self.sketch is None:
            return x
        if isinstance(self.sketch, (LearnedDegree2Sketch, MLPDegree2Sketch)):
            return self.sketch(x)
        # Inputs were validated at the attention entry point: skip the sketch's
        # own shape/finiteness pass (one reduction per call) on this hot path.
        return self.sketch._sketch(x)


def self_tensor(f: torch.Tensor) -> torch.Tensor:
    """Φ = φ ⊗ φ flattened: [..., r] -> [..., r²], so Φ(x)·Φ(y) = (φ(x)·φ(y))²."""
    return (f.unsqueeze(-1) * f.unsqueeze(-2)).flatten(-2)


def _to_blocks(x: torch.Tensor, front: int, blocks: int, block: int) -> torch.Tensor:
    """Zero-pad axis -2 with ``front`` rows before and rows after, to ``blocks*block``; split it."""
    back = blocks * block - front - x.shape[-2]
    x = F.pad(x, (0, 0, front, back))
    return x.reshape(*x.shape[:-2], blocks, block, x.shape[-1])


def _local_weights(qb, kb, fqb, fkb, *, degree, exact_local):
    """In-block weights [..., nb, b, b] with the causal (lower-triangular) mask."""
    b = qb.shape[-2]
    mask = torch.ones(b, b, dtype=torch.bool, device=qb.device).tril()
    if exact_local:
        return polynomial_weights(qb, kb, degree=degree, mask=mask)
    return polynomial_weights(fqb, fkb, degree=2, mask=mask)


def _causal_torch(q, k, v, fq, fk, *, degree, block_size, exact_local):
    """Block causal algorithm (torch). q, fq [B, Hkv, G, N, ·]; k, fk, v [B, Hkv, M, ·]."""
    N, M, b = q.shape[-2], k.shape[-2], block_size
    if N > M:  # the first N - M queries see no key: num = den = 0
        num, den = _causal_torch(q[..., N - M :, :], k, v, fq[..., N - M :, :], fk, degree=degree,
                                 block_size=b, exact_local=exact_local)
        return F.pad(num, (0, 0, N - M, 0)), F.pad(den, (N - M, 0))
    vp = torch.cat((v, torch.ones_like(v[..., :1])), dim=-1)  # [v, 1]: numerator and denominator
    nbk = -(-M // b)
    kb, fkb, vb = (_to_blocks(x, 0, nbk, b) for x in (k, fk, vp))
    block_kv = torch.matmul(self_tensor(fkb).transpose(-1, -2), vb)  # [B, Hkv, nbk, r², Dv+1]
    # Exclusive prefix sum over strictly earlier blocks (shifted, not cumsum - block_kv,
    # which would let a block's own keys leak in through rounding).
    prefix = F.pad(torch.cumsum(block_kv[:, :, :-1], dim=2), (0, 0, 0, 0, 1, 0))
    # Query i sits at key position i + M - N; queries are blocked on the same grid.
    c0, front = divmod(M - N, b)
    nbq = nbk - c0
    qb, fqb = (_to_blocks(x, front, nbq, b) for x in (q, fq))
    out = torch.matmul(self_tensor(fqb), prefix[:, :, None, c0:])
    local = _local_weights(qb, kb[:, :, None, c0:], fqb, fkb[:, :, None, c0:], degree=degree,
                           exact_local=exact_local)
    out = out + torch.matmul(local, vb[:, :, None, c0:])
    out = out.flatten(-3, -2)[..., front : front + N, :]
    return out[..., :-1], out[..., -1]


def _quadratic_torch(q, k, v, fq, fk, *, degree, block_size, exact_local, is_causal):
    """The same scores as the block / linear forms, materialised as [N, M] matrices.

    Cheaper than the r²-feature forms for short sequences (see :func:`use_quadratic`).
    """
    N, M = q.shape[-2], k.shape[-2]
    w = polynomial_weights(fq, fk.unsqueeze(2), degree=2)
    if is_causal:
        pos_q = torch.arange(N, device=q.device) + (M - N)
        pos_k = torch.arange(M, device=q.device)
        if exact_local:
            same = (pos_q // block_size).unsqueeze(1) == (pos_k // block_size).unsqueeze(0)
            w = torch.where(same, polynomial_weights(q, k.unsqueeze(2), degree=degree), w)
        w = w.masked_fill(pos_k.unsqueeze(0) > pos_q.unsqueeze(1), 0.0)
    return torch.matmul(w, v.unsqueeze(2)), w.sum(-1)


def use_quadratic(n: int, m: int, r: int, d: int, dv: int) -> bool:
    """Whether materialising the [n, m] sketched scores costs fewer flops than the
    r²-feature (linear-time) form: n·m·(r + d + dv) < (n + m)·r²·(dv + 1)."""
    return n * m * (r + d + dv) < (n + m) * r * r * (dv + 1)


def _noncausal_torch(fq, fk, v):
    """Linear form Φ(Q)(Φ(K)ᵀ[V, 1]). fq [B, Hkv, G, N, r]; fk, v [B, Hkv, M, ·]."""
    vp = torch.cat((v, torch.ones_like(v[..., :1])), dim=-1)
    kv = torch.matmul(self_tensor(fk).transpose(-1, -2), vp)  # [B, Hkv, r², Dv+1]
    out = torch.matmul(self_tensor(fq), kv.unsqueeze(2))
    return out[..., :-1], out[..., -1]


def sketched_polynomial_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    features: PolySketchFeatures,
    *,
    degree: int,
    block_size: int,
    exact_local: bool,
    scale: float,
    is_causal: bool,
    need_lse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """PolySketch attention of already-normalised q, k (see the module docstring).

    Parameters
    ----------
    q : [B, Hq, N, D]; k : [B, Hkv, M, D]; v : [B, Hkv, M, Dv] (GQA; causal
        aligned bottom-right).
    features : the degree-p/2 feature map φ (on q's device).

    Returns
    -------
    out [B, Hq, N, Dv] and lse [B, Hq, N] (or None) in float32 (float64 for
    float64 inputs); differentiable (Triton custom backward on CUDA).
    """
    acc = accumulation_dtype(q.dtype)
    B, Hq, N, D = q.shape
    Hkv = k.shape[1]
    root = math.sqrt(scale)
    qs, ks = q.to(acc) * root, k.to(acc) * root
    fq, fk = features(qs), features(ks)
    if is_causal:
        from .triton import polysketch as kernels

        if kernels.supported(qs, ks, v, fq, block_size=block_size, exact_local=exact_local):
            # Half-precision inputs: tensor-core products for the local scores (fp32 state).
            low = v.dtype if v.dtype in (torch.float16, torch.bfloat16) else acc
            out, den = kernels.polysketch_causal(qs.to(low), ks.to(low), v.to(low), fq, fk,
                                                 degree=degree, block_size=block_size)
            return out, (torch.log(1.0 + den) if need_lse else None)
    G = Hq // Hkv
    qg, fqg = qs.reshape(B, Hkv, G, N, D), fq.reshape(B, Hkv, G, N, -1)
    v = v.to(acc)
    M, r = k.shape[2], fq.shape[-1]
    if use_quadratic(N, M, r, D, v.shape[-1]):
        num, den = _quadratic_torch(qg, ks, v, fqg, fk, degree=degree, block_size=block_size,
                                    exact_local=exact_local, is_causal=is_causal)
    elif is_causal:
        num, den = _causal_torch(qg, ks, v, fqg, fk, degree=degree, block_size=block_size,
                                 exact_local=exact_local)
    else:
        num, den = _noncausal_torch(fqg, fk, v)
    num, den = num.reshape(B, Hq, N, -1), den.reshape(B, Hq, N)
    return normalize_output(num, den, need_lse)


def polysketch_forward(q, k, v, *, is_causal, scale, config, generator, need_lse):
    """Registry entry of ``method="polysketch"`` (see :class:`PolySketchConfig`)."""
    if config.sketch in LEARNED:
        raise ValueError(
            f"sketch={config.sketch!r} has trainable parameters: use "
            "kernelsketch.attention.polysketch.PolySketchAttention, not the functional form"
        )
    features = PolySketchFeatures(q.shape[-1], config, generator=generator).to(q.device)
    if config.normalize:
        q, k = layer_norm_qk(q, k)
    return sketched_polynomial_attention(
        q, k, v, features, degree=config.degree, block_size=config.block_size,
        exact_local=config.exact_local, scale=scale, is_causal=is_causal, need_lse=need_lse,
    )


@dataclass
class PolySketchState:
    """Decoding state of :class:`PolySketchAttention` after ``length`` tokens.

    kv : [B, Hkv, r², Dv+1] Σ over completed blocks of Φ(k'_j) ⊗ [v_j, 1].
    keys, feats, values : [B, Hkv, n, D] / [B, Hkv, n, r] / [B, Hkv, n, Dv],
        the n = length mod block_size tokens of the current block (scaled,
        normalised keys and their features).
    """

    kv: torch.Tensor
    keys: torch.Tensor
    feats: torch.Tensor
    values: torch.Tensor
    length: int = 0


class PolySketchAttention(nn.Module):
    """PolySketch attention layer (no projections): q/k layer norms, sketch, decoding.

    Parameters
    ----------
    head_dim : D of q and k.
    config : :class:`PolySketchConfig` (default when None). ``config.normalize``
        selects the q/k layer norms of this module.
    is_causal : default True (language modelling).
    scale : score scale, default 1/sqrt(D).
    seed : seed of the sketch, drawn once at construction (buffers; trainable
        parameters for ``sketch="learned"``), so forward is deterministic and
        the state_dict reproduces it.
    norm_affine : the layer norms have a learnable weight and bias (default True).

    ``forward(q, k, v, return_lse=False)`` takes SDPA-layout q [B, Hq, N, D],
    k [B, Hkv, M, D], v [B, Hkv, M, Dv]. For decoding, ``state = init_state(...)``
    then ``out, state = step(q_t, k_t, v_t, state)`` per token: O(r² Dv + b D)
    per token, equal to the causal parallel form.
    """

    def __init__(
        self,
        head_dim: int,
        config: PolySketchConfig | None = None,
        *,
        is_causal: bool = True,
        scale: float | None = None,
        seed: int = 0,
        norm_affine: bool = True,
    ) -> None:
        super().__init__()
        config = PolySketchConfig() if config is None else config
        if not isinstance(config, PolySketchConfig):
            raise TypeError(f"config must be a PolySketchConfig, got {type(config).__name__}")
        check_int("head_dim", head_dim, min=1)
        check_int("seed", seed, min=0)
        self.config, self.is_causal, self.head_dim = config, bool(is_causal), head_dim
        self.scale = 1.0 / math.sqrt(head_dim) if scale is None else check_float(
            "scale", scale, min=0.0, min_exclusive=True)
        self.features = PolySketchFeatures(head_dim, config, seed=seed)
        if config.normalize:
            self.q_norm = nn.LayerNorm(head_dim, elementwise_affine=norm_affine)
            self.k_norm = nn.LayerNorm(head_dim, elementwise_affine=norm_affine)
        else:
            self.q_norm = self.k_norm = nn.Identity()

    def _normalize(self, q, k):
        """Layer norms in the accumulation dtype (float32 for half inputs, whatever the
        parameters' dtype), so bfloat16 inputs work with a float32 layer."""
        acc = accumulation_dtype(q.dtype)
        return tuple(
            x.to(acc) if isinstance(norm, nn.Identity) else F.layer_norm(
                x.to(acc), norm.normalized_shape,
                None if norm.weight is None else norm.weight.to(acc),
                None if norm.bias is None else norm.bias.to(acc), norm.eps)
            for norm, x in ((self.q_norm, q), (self.k_norm, k))
        )

    def _check(self, q, k, v):
        dims = check_attention_inputs(q, k, v)
        if q.shape[-1] != self.head_dim:
            raise ValueError(f"q must have head dim {self.head_dim} (head_dim), got {q.shape[-1]}")
        return dims

    def forward(self, q, k, v, *, return_lse: bool = False):
        """Attention of q over k, v; out [B, Hq, N, Dv] in q's dtype (and lse)."""
        self._check(q, k, v)
        qn, kn = self._normalize(q, k)
        c = self.config
        out, lse = sketched_polynomial_attention(
            qn, kn, v, self.features, degree=c.degree, block_size=c.block_size,
            exact_local=c.exact_local, scale=self.scale, is_causal=self.is_causal,
            need_lse=return_lse,
        )
        out = out.to(q.dtype)
        return (out, lse) if return_lse else out

    def init_state(self, batch_size: int, kv_heads: int, value_dim: int | None = None, *,
                   device=None, dtype: torch.dtype = torch.float32) -> PolySketchState:
        """Empty decoding state (float32, or float64 when ``dtype`` is float64)."""
        check_int("batch_size", batch_size, min=1)
        check_int("kv_heads", kv_heads, min=1)
        dv = self.head_dim if value_dim is None else check_int("value_dim", value_dim, min=1)
        acc = accumulation_dtype(dtype)
        r, D = self.features.dim, self.head_dim
        z = {"device": device, "dtype": acc}
        return PolySketchState(
            kv=torch.zeros(batch_size, kv_heads, r * r, dv + 1, **z),
            keys=torch.zeros(batch_size, kv_heads, 0, D, **z),
            feats=torch.zeros(batch_size, kv_heads, 0, r, **z),
            values=torch.zeros(batch_size, kv_heads, 0, dv, **z),
        )

    def step(self, q, k, v, state: PolySketchState) -> tuple[torch.Tensor, PolySketchState]:
        """Attend the next token: q [B, Hq, 1, D], k [B, Hkv, 1, D], v [B, Hkv, 1, Dv].

        Returns out [B, Hq, 1, Dv] (q's dtype) and the new state. Only causal
        layers decode.
        """
        if not self.is_causal:
            raise ValueError("step needs a causal layer (is_causal=True), got is_causal=False")
        B, Hq, Hkv, N, M = self._check(q, k, v)
        if N != 1 or M != 1:
            raise ValueError(f"step takes one token: q and k must have length 1, got {N} and {M}")
        if not isinstance(state, PolySketchState):
            raise TypeError(f"state must be a PolySketchState, got {type(state).__name__}")
        if state.kv.shape[:2] != (B, Hkv) or state.values.shape[-1] != v.shape[-1]:
            raise ValueError(
                f"state must match batch {B}, kv heads {Hkv} and value dim {v.shape[-1]}, got kv "
                f"state {tuple(state.kv.shape)} (init_state(batch_size, kv_heads, value_dim))"
            )
        acc, c = state.kv.dtype, self.config
        qn, kn = self._normalize(q, k)
        root = math.sqrt(self.scale)
        qs, ks = qn.to(acc) * root, kn.to(acc) * root
        fq, fk = self.features(qs), self.features(ks)
        keys = torch.cat((state.keys, ks[:, :, 0:1]), dim=2)
        feats = torch.cat((state.feats, fk[:, :, 0:1]), dim=2)
        values = torch.cat((state.values, v.to(acc)), dim=2)
        G = Hq // Hkv
        qg, fqg = qs.reshape(B, Hkv, G, 1, -1), fq.reshape(B, Hkv, G, 1, -1)
        if c.exact_local:
            w = polynomial_weights(qg, keys.unsqueeze(2), degree=c.degree)
        else:
            w = polynomial_weights(fqg, feats.unsqueeze(2), degree=2)
        vp = torch.cat((values, torch.ones_like(values[..., :1])), dim=-1)
        res = torch.matmul(self_tensor(fqg), state.kv.unsqueeze(2)) + torch.matmul(
            w, vp.unsqueeze(2))
        out, _ = normalize_output(res[..., :-1], res[..., -1], False)
        kv = state.kv
        if keys.shape[2] == c.block_size:  # the block is complete: fold it into the prefix sum
            kv = kv + torch.matmul(self_tensor(feats).transpose(-1, -2), vp)
            keys, feats, values = keys[:, :, :0], feats[:, :, :0], values[:, :, :0]
        new = PolySketchState(kv=kv, keys=keys, feats=feats, values=values,
                              length=state.length + 1)
        return out.reshape(B, Hq, 1, -1).to(q.dtype), new

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, is_causal={self.is_causal}, config={self.config}"


METHOD = MethodSpec(
    name="polysketch",
    forward=polysketch_forward,
    config_cls=PolySketchConfig,
    summary="PolySketch: sketched degree-p polynomial attention, block causal, linear time",
    paper="arXiv 2310.01655",
    reference="polynomial",
)
