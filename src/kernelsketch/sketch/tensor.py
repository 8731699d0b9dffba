"""Oblivious sketches of tensor powers ``x^{⊗q}`` (polynomial kernels).

Each sketch ``S`` maps ``[..., d_in] -> [..., d_out]`` without forming the
``d_in**q`` tensor, with ``E[<S(x), S(y)>] = <x, y>**q`` for the
:class:`TensorSketch`, :class:`TensorSRHT` and :class:`PolySketch` (degree q)
and ``E[<S(x, y), S(x', y')>] = <x, x'> <y, y'>`` for :class:`Degree2Sketch`.
Theory: docs/sketches.md.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kernelsketch._checks import check_allocation, check_choice, check_int, check_same
from kernelsketch.sketch.projections import (
    SRHT,
    CountSketch,
    GaussianSketch,
    SketchModule,
    compute_dtype,
)
from kernelsketch.sketch.sampling import resolve_generator

__all__ = ["Degree2Sketch", "PolySketch", "TensorSRHT", "TensorSketch"]

KINDS = ("srht", "gaussian", "countsketch", "tensorsketch")


MAX_DEGREE = 1024  # tensor powers beyond x^{⊗1024} would take thousands of factor sketches


def _check_dims(d_in: int, d_out: int, degree: int) -> None:
    check_int("d_in", d_in, min=1)
    check_int("d_out", d_out, min=1)
    check_int("degree", degree, min=1, max=MAX_DEGREE)


def _check_factors(name: str, nbytes: float) -> None:
    check_allocation(nbytes, f"the factor sketches of {name}", "reduce d_in, d_out or degree")


class TensorSketch(SketchModule):
    """TensorSketch of Pham and Pagh: ``q`` CountSketches combined by FFT.

    ``S(x) = IFFT(prod_k FFT(C_k x))`` (circular convolution of the ``q``
    CountSketches, real output). It equals a CountSketch of ``x^{⊗q}`` with
    bucket ``sum_k h_k(i_k) mod d_out`` and sign ``prod_k s_k(i_k)``, so
    ``E[<S(x), S(y)>] = <x, y>**q``; time ``O(q (nnz(x) + d_out log d_out))``.

    Parameters
    ----------
    d_in, d_out : int
    degree : int >= 1
        The power ``q``.
    seed : int, optional
    generator : torch.Generator, optional

    Attributes
    ----------
    factors : ModuleList of ``degree`` independent :class:`CountSketch`.

    References
    ----------
    Pham, Pagh. Fast and scalable polynomial kernels via explicit feature
    maps, KDD 2013; Avron, Nguyen, Woodruff. Subspace embeddings for the
    polynomial kernel, NeurIPS 2014.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        degree: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _check_dims(d_in, d_out, degree)
        _check_factors(f"TensorSketch(d_in={d_in}, d_out={d_out}, degree={degree})",
                       degree * CountSketch.buffer_bytes(d_in, d_out))
        g = resolve_generator(seed, generator)
        self.d_in, self.d_out, self.degree = d_in, d_out, degree
        self.factors = nn.ModuleList(CountSketch(d_in, d_out, generator=g) for _ in range(degree))

    def _work_width(self) -> int:
        return 4 * self.d_out  # complex FFTs of the factors

    def combine(self, *xs: torch.Tensor) -> torch.Tensor:
        """Sketch of ``xs[0] ⊗ ... ⊗ xs[q-1]`` (compute dtype, broadcastable [..., d_in])."""
        spectrum = None
        for factor, x in zip(self.factors, xs, strict=True):
            f = torch.fft.rfft(factor._sketch(x), n=self.d_out)
            spectrum = f if spectrum is None else spectrum * f
        return torch.fft.irfft(spectrum, n=self.d_out)

    def _sketch(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine(*([x] * self.degree))

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, degree={self.degree}"


class _ElementwiseProductSketch(SketchModule):
    """``d_out**((q-1)/2) * prod_k L_k(x_k)`` for independent linear sketches ``L_k``.

    Unbiased for ``prod_k <x_k, y_k>`` whenever every coordinate of each
    ``L_k`` satisfies ``E[L(x)_j L(y)_j] = <x, y> / d_out`` (Gaussian, SRHT).
    """

    def __init__(self, factors: list[SketchModule]) -> None:
        super().__init__()
        self.factors = nn.ModuleList(factors)
        self.d_in, self.d_out = factors[0].d_in, factors[0].d_out
        self.degree = len(factors)

    def combine(self, *xs: torch.Tensor) -> torch.Tensor:
        """Sketch of ``xs[0] ⊗ ... ⊗ xs[q-1]`` (compute dtype, broadcastable [..., d_in])."""
        out = None
        for factor, x in zip(self.factors, xs, strict=True):
            f = factor._sketch(x)
            out = f if out is None else out * f
        return out * math.sqrt(self.d_out) ** (self.degree - 1)

    def _sketch(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine(*([x] * self.degree))

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, degree={self.degree}"


class TensorSRHT(_ElementwiseProductSketch):
    """TensorSRHT: elementwise product of ``q`` independent SRHTs, rescaled.

    ``S(x) = d_out**((q-1)/2) * SRHT_1(x) ⊙ ... ⊙ SRHT_q(x)``. Each output
    coordinate is ``prod_k (H D_k x)_{i_k} / sqrt(d_out)`` with independent
    signs ``D_k`` and independently sampled rows ``i_k``, so
    ``E[<S(x), S(y)>] = <x, y>**q``; time ``O(q d_in log d_in + q d_out)``.

    Parameters
    ----------
    d_in, d_out : int
    degree : int >= 1
    seed : int, optional
    generator : torch.Generator, optional

    Attributes
    ----------
    factors : ModuleList of ``degree`` independent :class:`SRHT`.

    References
    ----------
    Ahle et al. Oblivious sketching of high-degree polynomial kernels,
    SODA 2020 (TensorSRHT); Han, Avron, Shin. Random features for the neural
    tangent kernel, arXiv 2104.01351.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        degree: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        _check_dims(d_in, d_out, degree)
        _check_factors(f"TensorSRHT(d_in={d_in}, d_out={d_out}, degree={degree})",
                       degree * SRHT.buffer_bytes(d_in, d_out))
        g = resolve_generator(seed, generator)
        super().__init__([SRHT(d_in, d_out, generator=g) for _ in range(degree)])

    def _work_width(self) -> int:
        return self.factors[0]._work_width() + 2 * self.d_out


class Degree2Sketch(SketchModule):
    """Sketch of the tensor product ``x ⊗ y`` of two vectors of dimension ``d_in``.

    ``E[<S(x, y), S(x', y')>] = <x, x'> <y, y'>``; with ``y = x`` this sketches
    the degree-2 polynomial kernel ``<x, x'>**2``. Kinds:

    - ``"gaussian"``: ``(x S1) ⊙ (y S2) / sqrt(d_out)`` with ``S1, S2``
      [d_in, d_out] i.i.d. N(0, 1) — the PolySketchFormer feature map
      (arXiv 2310.01655). ``O(d_in d_out)``.
    - ``"srht"``: :class:`TensorSRHT` of degree 2 on the pair. ``O(d_in log d_in + d_out)``.
    - ``"tensorsketch"``: :class:`TensorSketch` of degree 2 on the pair.
      ``O(d_in + d_out log d_out)``.
    - ``"countsketch"``: a :class:`CountSketch` of the explicit outer product
      (fully independent hash of the ``d_in**2`` pairs). ``O(d_in**2)`` time and
      memory per vector: a low-variance reference for small ``d_in``.

    Parameters
    ----------
    d_in, d_out : int
    kind : {"gaussian", "srht", "countsketch", "tensorsketch"}, default "gaussian"
    seed : int, optional
    generator : torch.Generator, optional

    Attributes
    ----------
    sketch : the underlying module (for ``"gaussian"`` its ``factors[k].matrix``
        is ``S_k / sqrt(d_out)``).
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        *,
        kind: str = "gaussian",
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _check_dims(d_in, d_out, 2)
        check_choice("kind", kind, KINDS)
        _check_factors(f"Degree2Sketch(d_in={d_in}, d_out={d_out}, kind={kind!r})",
                       self.buffer_bytes(d_in, d_out, kind))
        g = resolve_generator(seed, generator)
        self.d_in, self.d_out, self.kind = d_in, d_out, kind
        if kind == "gaussian":
            self.sketch = _ElementwiseProductSketch(
                [GaussianSketch(d_in, d_out, generator=g) for _ in range(2)]
            )
        elif kind == "srht":
            self.sketch = TensorSRHT(d_in, d_out, 2, generator=g)
        elif kind == "tensorsketch":
            self.sketch = TensorSketch(d_in, d_out, 2, generator=g)
        else:
            self.sketch = CountSketch(d_in * d_in, d_out, generator=g)

    @staticmethod
    def buffer_bytes(d_in: int, d_out: int, kind: str) -> float:
        """Peak bytes of the construction's buffers."""
        if kind == "gaussian":
            return 2 * GaussianSketch.buffer_bytes(d_in, d_out)
        if kind == "srht":
            return 2 * SRHT.buffer_bytes(d_in, d_out)
        if kind == "tensorsketch":
            return 2 * CountSketch.buffer_bytes(d_in, d_out)
        return CountSketch.buffer_bytes(d_in * d_in, d_out)

    def _work_width(self) -> int:
        if self.kind == "countsketch":
            return self.d_in * self.d_in + 2 * self.d_out  # the flattened outer product
        return self.sketch._work_width() + 2 * self.d_out

    def _pair(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "countsketch":
            return self.sketch._sketch((x.unsqueeze(-1) * y.unsqueeze(-2)).flatten(-2))
        return self.sketch.combine(x, y)

    def _sketch(self, x: torch.Tensor) -> torch.Tensor:
        return self._pair(x, x)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Sketch of ``x ⊗ y`` (``y = x`` by default).

        Parameters
        ----------
        x, y : Tensor [..., d_in], same float dtype and device; leading shapes
            broadcast.

        Returns
        -------
        Tensor [..., d_out], dtype of ``x``.
        """
        self._check_input(x, "x")
        if y is None:
            y = x
        else:
            self._check_input(y, "y")
            check_same(("x", "y"), (x, y))
            try:
                lead = torch.broadcast_shapes(x.shape[:-1], y.shape[:-1])
            except RuntimeError:
                raise ValueError(
                    f"x and y must have broadcastable leading shapes, got {tuple(x.shape)} and "
                    f"{tuple(y.shape)}"
                ) from None
            self._check_output(x, tuple(lead))
        if y is x:
            self._check_output(x)
        cdt = compute_dtype(x.dtype)
        return self._pair(x.to(cdt), y.to(cdt)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, kind={self.kind!r}"


_LEAF_SKETCH = {
    "gaussian": GaussianSketch,
    "srht": SRHT,
    "countsketch": CountSketch,
    "tensorsketch": CountSketch,
}


class PolySketch(SketchModule):
    """Degree-2 tree sketch of ``x^{⊗degree}`` (Ahle et al., SODA 2020).

    The degree is padded to ``2**L`` leaves, ``L = ceil(log2 degree)``. Each
    leaf applies an independent linear sketch ``d_in -> d_out`` (Gaussian,
    SRHT or CountSketch by ``kind``) to ``x`` for the first ``degree`` leaves
    and to the fixed unit vector ``e1 = (1, 0, ..., 0)`` for the others; each
    internal node is an independent :class:`Degree2Sketch` ``(d_out, d_out)``
    of its two children. The root sketches ``x^{⊗degree} ⊗ e1^{⊗(2**L - degree)}``,
    whose inner products are ``<x, y>**degree`` since ``<e1, e1> = 1``; so
    ``E[<S(x), S(y)>] = <x, y>**degree`` with ``O(degree)`` node sketches.

    Parameters
    ----------
    d_in, d_out : int
    degree : int >= 1
    kind : {"srht", "gaussian", "countsketch", "tensorsketch"}, default "srht"
        Node sketch (:class:`Degree2Sketch` kind). Leaves use SRHT for
        ``"srht"``, Gaussian for ``"gaussian"`` and CountSketch otherwise.
        ``"countsketch"`` nodes hash the explicit ``d_out**2`` outer product
        (``O(d_out**2)`` time and buffer memory per node): a reference for
        small ``d_out``; prefer ``"tensorsketch"`` for the same leaves at
        scale.
    seed : int, optional
    generator : torch.Generator, optional

    Attributes
    ----------
    leaves : ModuleList of ``2**L`` leaf sketches.
    levels : ModuleList; ``levels[l]`` holds the ``2**(L-l-1)`` Degree2Sketch
        nodes of height ``l + 1``.

    References
    ----------
    Ahle, Kapralov, Knudsen, Pagh, Velingker, Woodruff, Zandieh. Oblivious
    sketching of high-degree polynomial kernels, SODA 2020 (Theorem 1.2);
    Zandieh, Han, Avron, Shoham, Kim, Shin. Scaling neural tangent kernels
    via sketching and random features, arXiv 2106.07880 (all powers, §4).
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        degree: int,
        *,
        kind: str = "srht",
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _check_dims(d_in, d_out, degree)
        check_choice("kind", kind, KINDS)
        n_leaves = 1 << (degree - 1).bit_length()
        leaf = _LEAF_SKETCH[kind]
        _check_factors(
            f"PolySketch(d_in={d_in}, d_out={d_out}, degree={degree}, kind={kind!r})",
            n_leaves * leaf.buffer_bytes(d_in, d_out)
            + (n_leaves - 1) * Degree2Sketch.buffer_bytes(d_out, d_out, kind),
        )
        g = resolve_generator(seed, generator)
        self.d_in, self.d_out, self.degree, self.kind = d_in, d_out, degree, kind
        self.depth = (degree - 1).bit_length()
        self.leaves = nn.ModuleList(leaf(d_in, d_out, generator=g) for _ in range(n_leaves))
        self.levels = nn.ModuleList(
            nn.ModuleList(
                Degree2Sketch(d_out, d_out, kind=kind, generator=g)
                for _ in range(n_leaves >> height)
            )
            for height in range(1, self.depth + 1)
        )

    def _power(self, x: torch.Tensor, j: int, cache: dict) -> torch.Tensor:
        """Root sketch of ``x^{⊗j} ⊗ e1^{⊗(2**L - j)}`` (x on the first j leaves)."""
        return self.power_from_leaves(lambda i: self.leaves[i]._sketch(x), j, cache, like=x)

    def power_from_leaves(
        self,
        leaf_of_x,
        j: int,
        cache: dict | None = None,
        *,
        like: torch.Tensor,
    ) -> torch.Tensor:
        """Root sketch of ``x^{⊗j} ⊗ e1^{⊗(2**L - j)}`` from the leaves' outputs on ``x``.

        For inputs the leaves cannot take directly (e.g. scipy sparse rows: each
        leaf is linear, so its output is ``x @ leaf matrix``). ``leaf_of_x(i)``
        returns leaf ``i`` applied to ``x``, [..., d_out]; it is called for the
        first ``j`` leaves only. Sub-trees with the same leaf assignment are
        shared through ``cache`` across calls (pass one dict for several ``j``);
        all-``e1`` sub-trees are computed unbatched ([d_out]) in the dtype and
        device of ``like``.
        """
        cache = {} if cache is None else cache
        e1 = like.new_zeros(self.d_in)
        e1[0] = 1

        def node(height: int, index: int, k: int) -> torch.Tensor:
            key = (height, index, k)
            if key not in cache:
                if height == 0:
                    cache[key] = leaf_of_x(index) if k else self.leaves[index]._sketch(e1)
                else:
                    half = 1 << (height - 1)
                    left = node(height - 1, 2 * index, min(k, half))
                    right = node(height - 1, 2 * index + 1, k - min(k, half))
                    cache[key] = self.levels[height - 1][index]._pair(left, right)
            return cache[key]

        try:
            return node(self.depth, 0, j)
        finally:
            # node refers to itself through its closure: break the cycle, or the cache's
            # tensors live until the cyclic garbage collector runs (memory grows per call).
            node = None

    def _sketch(self, x: torch.Tensor) -> torch.Tensor:
        return self._power(x, self.degree, {})

    def _work_width(self) -> int:
        # the tree's cached node outputs ([..., d_out] each) and the widest node's work
        node = max(self.leaves[0]._work_width(), self.levels[0][0]._work_width() if
                   self.depth else 0)
        return (2 * len(self.leaves) + self.degree + 1) * self.d_out + node

    def all_powers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Sketches of ``x^{⊗j}`` for ``j = 0, ..., degree`` from the one tree.

        Power ``j`` feeds ``x`` to the first ``j`` leaves and ``e1`` to the
        rest, so every power reuses the same random sketches and shared
        sub-trees are computed once. Entry ``j = 0`` is the exact constant
        feature ``e1`` in ``d_out`` dimensions (inner products exactly 1);
        entry ``degree`` equals ``forward(x)``.

        Parameters
        ----------
        x : Tensor [..., d_in], float

        Returns
        -------
        list of ``degree + 1`` Tensors [..., d_out], dtype of ``x``, with
        ``E[<out[j](x), out[j](y)>] = <x, y>**j``.
        """
        self._check_input(x)
        self._check_output(x)
        xc = x.to(compute_dtype(x.dtype))
        const = xc.new_zeros(*x.shape[:-1], self.d_out)
        const[..., 0] = 1
        cache: dict = {}
        powers = [const] + [self._power(xc, j, cache) for j in range(1, self.degree + 1)]
        return [p.to(x.dtype) for p in powers]

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, degree={self.degree}, kind={self.kind!r}"
