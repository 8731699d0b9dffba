"""The degree-p/2 feature maps φ of PolySketch attention and the self-tensoring Φ = φ ⊗ φ.

``E[φ(x)·φ(y)] = (x·y)^{p/2}`` for the random sketches (Gaussian, TensorSRHT,
PolySketch tree); the learned sketches are trainable (§5 of the paper).
Theory: docs/polysketch.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..._checks import check_int
from ...sketch.sampling import resolve_generator
from ...sketch.tensor import Degree2Sketch, PolySketch
from .config import LEARNED, PolySketchConfig

_SKETCH_KIND = {"gaussian": "gaussian", "hadamard": "srht"}
# Widest head: the sketches hold O(head_dim · sketch_size) numbers per degree-2 node (and
# the layer's norms O(head_dim)); attention heads are at most a few hundred wide.
MAX_HEAD_DIM = 2**16


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
        check_int("head_dim", head_dim, min=1, max=MAX_HEAD_DIM)
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

    @property
    def homogeneous(self) -> bool:
        """Whether ``φ(c x) = c^{degree/2} φ(x)`` (identity and random sketches; not learned)."""
        return not isinstance(self.sketch, (LearnedDegree2Sketch, MLPDegree2Sketch))

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


def pair_features(f: torch.Tensor) -> torch.Tensor:
    """Φ = φ ⊗ φ without its symmetric duplicates: [..., r] -> [..., (r//2 + 1)·r].

    Entry (s, a) is φ_a φ_{(a+s) mod r}, s = 0..r//2: every unordered pair {a, b} once
    (twice for the cyclic distance r/2 when r is even), so that
    ``Σ pair_weights(r) · pair_features(x) · pair_features(y) = Φ(x)·Φ(y)``
    with about half of Φ's r² features (one broadcast product over a strided view).
    """
    r = f.shape[-1]
    windows = torch.cat((f, f[..., : r // 2]), -1).unfold(-1, r, 1)  # [..., r//2 + 1, r]
    if torch.is_grad_enabled() and f.requires_grad:
        return (f.unsqueeze(-2) * windows).reshape(*f.shape[:-1], -1)
    # The product would take the windows' layout (s innermost): written row-major instead.
    return torch.mul(f.unsqueeze(-2), windows, out=f.new_empty(windows.shape)).flatten(-2)


def pair_weights(r: int, *, dtype: torch.dtype, device=None) -> torch.Tensor:
    """Multiplicity of each :func:`pair_features` entry in Φ(x)·Φ(y), [(r//2 + 1)·r]: 1 for
    the squares (s = 0) and for s = r/2 (r even: those pairs appear twice), else 2."""
    w = torch.full((r // 2 + 1, r), 2.0, dtype=dtype, device=device)
    w[0] = 1.0
    if r % 2 == 0:
        w[r // 2] = 1.0
    return w.flatten()
