"""Linear oblivious sketches (Johnson–Lindenstrauss maps) and the fast Walsh–Hadamard transform.

Every sketch ``S`` here is a random linear map ``[..., d_in] -> [..., d_out]``
drawn once at construction and kept as buffers, with unbiased inner products
``E[<S(x), S(y)>] = <x, y>`` and distortion ``|‖Sx‖² − ‖x‖²| / ‖x‖² =
O(1/sqrt(d_out))`` (Gaussian, Rademacher, SRHT; CountSketch has the same rate
in expectation, with heavier tails on dense inputs but time ``O(nnz(x))``).
Theory: docs/sketches.md.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from kernelsketch._checks import FLOAT_DTYPES, _shape, check_allocation, check_int, check_tensor
from kernelsketch.sketch.sampling import generator_device, resolve_generator

__all__ = [
    "SRHT",
    "CountSketch",
    "GaussianSketch",
    "RademacherSketch",
    "SketchModule",
    "compute_dtype",
    "fwht",
]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype a sketch computes in: the input's, or float32 for half types."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


_MAX_FACTOR_BITS = 6


@functools.lru_cache(maxsize=64)
def _hadamard(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Dense Sylvester–Hadamard matrix [size, size] (small sizes only)."""
    # Cached across calls: never an inference tensor, which autograd could not save.
    with torch.inference_mode(False):
        h = torch.ones(1, 1, dtype=dtype, device=device)
        while h.shape[0] < size:
            h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalized fast Walsh–Hadamard transform over the last dimension.

    Computes ``x @ H`` with ``H`` the Sylvester–Hadamard matrix of size
    ``d = x.shape[-1]`` in natural order, ``H[i, j] = (-1)**popcount(i & j)``
    (``H @ H = d I``), batched over leading dimensions and differentiable.

    ``H_d = H_{b_1} ⊗ ... ⊗ H_{b_k}`` with factors ``b_i <= 64``; each factor
    is applied to the lowest index bits as one small matrix product, after
    which those bits are rotated to the top, so ``k = ceil(log2(d) / 6)``
    passes cost ``O(d log d)`` operations in BLAS rather than ``log2 d``
    elementwise butterfly passes.

    Parameters
    ----------
    x : Tensor [..., d], float, ``d`` a power of two

    Returns
    -------
    Tensor [..., d], same dtype and device as ``x``.
    """
    check_tensor("x", x, dtypes=FLOAT_DTYPES, finite=False)
    d = x.shape[-1] if x.dim() > 0 else 0
    if x.dim() == 0 or d & (d - 1) != 0:
        raise ValueError(
            f"x must have shape [..., d] with d a power of two, got shape {_shape(x)}"
        )
    bits = d.bit_length() - 1
    n_factors = max(1, -(-bits // _MAX_FACTOR_BITS))
    y = x.reshape(-1, d)
    rows = y.shape[0]
    for i in range(n_factors):
        b = 1 << (bits // n_factors + (i < bits % n_factors))
        y = y.reshape(-1, b) @ _hadamard(b, x.dtype, x.device)
        # Rotate the b transformed low bits of the index to the top.
        y = y.reshape(rows, d // b, b).transpose(1, 2)
    return y.reshape(x.shape)


class SketchModule(nn.Module):
    """Base class of the random sketches ``[..., d_in] -> [..., d_out]``.

    Subclasses draw their randomness in ``__init__`` into buffers and
    implement ``_sketch(x)`` for ``x`` already validated and cast to a
    float32/float64 compute dtype. ``forward`` validates ``x``, computes in
    the input dtype (float32 for float16/bfloat16) and returns the input dtype.
    """

    d_in: int
    d_out: int

    def _check_input(self, x: torch.Tensor, name: str = "x") -> None:
        check_tensor(name, x, dtypes=FLOAT_DTYPES)
        if x.dim() == 0 or x.shape[-1] != self.d_in:
            raise ValueError(
                f"{name} must have shape [..., {self.d_in}] (d_in={self.d_in}), "
                f"got shape {_shape(x)}"
            )
        buffer = next(self.buffers(), None)
        if buffer is not None and buffer.device != x.device:
            raise ValueError(
                f"{name} must be on the sketch's device {buffer.device} "
                f"(move the sketch with .to(device)), got {x.device}"
            )

    def _sketch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sketch ``x`` [..., d_in] -> [..., d_out] (dtype of ``x``)."""
        self._check_input(x)
        self._check_output(x)
        return self._sketch(x.to(compute_dtype(x.dtype))).to(x.dtype)

    def _work_width(self) -> int:
        """Float64 words per input row the forward pass allocates at most (output and
        intermediates); subclasses with wider intermediates override it."""
        return 2 * self.d_out

    def _check_output(self, x: torch.Tensor, lead: tuple[int, ...] | None = None) -> None:
        """Refuse (ValueError) a forward pass over ``x`` (leading shape ``lead``, default
        ``x``'s) whose output and intermediates cannot fit in memory."""
        lead = tuple(x.shape[:-1]) if lead is None else lead
        check_allocation(
            8.0 * math.prod(lead) * self._work_width(),
            f"{type(self).__name__}'s output and intermediates for x of shape {_shape(x)}",
            "sketch fewer rows at a time",
        )

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}"


def _check_dims(d_in: int, d_out: int, cls: type | None = None) -> None:
    """Check the dimensions and, for ``cls``, that its buffers fit in memory."""
    check_int("d_in", d_in, min=1)
    check_int("d_out", d_out, min=1)
    if cls is not None:
        check_allocation(
            cls.buffer_bytes(d_in, d_out),
            f"the buffers of {cls.__name__}(d_in={d_in}, d_out={d_out})",
            "reduce d_in or d_out",
        )


def random_signs(
    shape: tuple[int, ...], generator: torch.Generator | None
) -> torch.Tensor:
    """Independent ±1 entries (float32) drawn from ``generator``."""
    bits = torch.randint(2, shape, generator=generator, device=generator_device(generator))
    return (2 * bits - 1).to(torch.float32)


class _DenseSketch(SketchModule):
    """``S(x) = x @ matrix`` with a buffer ``matrix = draw(d_in, d_out) / sqrt(d_out)``.

    Subclasses define ``_draw(d_in, d_out, g)``: i.i.d. zero-mean, unit-variance
    entries [d_in, d_out] from the generator ``g``.
    """

    matrix: torch.Tensor

    def __init__(
        self,
        d_in: int,
        d_out: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _check_dims(d_in, d_out, type(self))
        g = resolve_generator(seed, generator)
        self.d_in, self.d_out = d_in, d_out
        self.register_buffer("matrix", self._draw(d_in, d_out, g) / math.sqrt(d_out))

    @staticmethod
    def buffer_bytes(d_in: int, d_out: int) -> float:
        """Peak bytes of construction: the float32 matrix and its scaled copy."""
        return 8.0 * d_in * d_out

    def _sketch(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.matrix.to(x.dtype)


class GaussianSketch(_DenseSketch):
    """Dense Gaussian Johnson–Lindenstrauss map, entries ``N(0, 1) / sqrt(d_out)``.

    Parameters
    ----------
    d_in, d_out : int
        Input and sketch dimensions.
    seed : int, optional
    generator : torch.Generator, optional
        Source of the random matrix (one of the two; neither: torch's global
        generator).

    Attributes
    ----------
    matrix : Tensor [d_in, d_out], float32 buffer; ``S(x) = x @ matrix``.

    Notes
    -----
    ``E[<Sx, Sy>] = <x, y>``; ``‖Sx‖² / ‖x‖²`` is chi-square with ``d_out``
    degrees of freedom over ``d_out``, so the distortion is
    ``O(sqrt(log(1/δ) / d_out))`` with probability ``1 − δ``.

    References
    ----------
    Johnson, Lindenstrauss. Extensions of Lipschitz mappings into a Hilbert
    space, 1984; Dasgupta, Gupta. An elementary proof of a theorem of Johnson
    and Lindenstrauss, 2003.
    """

    @staticmethod
    def _draw(d_in: int, d_out: int, g: torch.Generator) -> torch.Tensor:
        return torch.randn(d_in, d_out, generator=g, device=generator_device(g))


class RademacherSketch(_DenseSketch):
    """Dense Rademacher Johnson–Lindenstrauss map, entries ``±1 / sqrt(d_out)``.

    Same parameters, attribute ``matrix`` [d_in, d_out] and guarantee as
    :class:`GaussianSketch` (Achlioptas, Database-friendly random projections,
    JCSS 2003).
    """

    @staticmethod
    def _draw(d_in: int, d_out: int, g: torch.Generator) -> torch.Tensor:
        return random_signs((d_in, d_out), g)


class SRHT(SketchModule):
    """Subsampled randomized Hadamard transform.

    ``S(x) = (H D x_pad)[idx] / sqrt(d_out)``: ``x`` is zero-padded to
    ``D = 2**ceil(log2 d_in)``, multiplied by random signs ``D``, transformed
    by the unnormalized Walsh–Hadamard matrix ``H`` (:func:`fwht`,
    ``O(D log D)``), and ``d_out`` coordinates are kept.

    Coordinates are sampled WITHOUT replacement. When ``d_out > D`` the
    transform is stacked ``ceil(d_out / D)`` times with independent signs and
    the ``d_out`` coordinates are drawn without replacement from all stacked
    outputs. Every kept coordinate satisfies ``E[(HDx)_i (HDy)_i] = <x, y>``,
    so ``E[<Sx, Sy>] = <x, y>``.

    Parameters
    ----------
    d_in, d_out : int
    seed : int, optional
    generator : torch.Generator, optional

    Attributes
    ----------
    signs : Tensor [n_blocks, d_in], float32 buffer of ±1.
    index : Tensor [d_out], int64 buffer, kept positions in the flattened
        ``[n_blocks, D]`` transform.
    matrix : Tensor [d_in, d_out] (property, dense, for tests and small inputs).

    References
    ----------
    Ailon, Chazelle. The fast Johnson–Lindenstrauss transform, STOC 2006;
    Tropp. Improved analysis of the subsampled randomized Hadamard transform,
    2011.
    """

    signs: torch.Tensor
    index: torch.Tensor

    def __init__(
        self,
        d_in: int,
        d_out: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _check_dims(d_in, d_out, type(self))
        g = resolve_generator(seed, generator)
        self.d_in, self.d_out = d_in, d_out
        self.padded_dim = 1 << (d_in - 1).bit_length()
        n_blocks = -(-d_out // self.padded_dim)
        self.register_buffer("signs", random_signs((n_blocks, d_in), g))
        perm = torch.randperm(n_blocks * self.padded_dim, generator=g, device=generator_device(g))
        self.register_buffer("index", perm[:d_out].clone())

    @staticmethod
    def buffer_bytes(d_in: int, d_out: int) -> float:
        """Peak bytes of construction: int64 draws of the signs and the permutation."""
        padded = 1 << (d_in - 1).bit_length()
        return 8.0 * -(-d_out // padded) * (padded + d_in)

    def _work_width(self) -> int:
        # Live at the peak: the signed, padded rows, the FWHT pass's product and its
        # re-layout copy (measured up to 4 padded widths per row at d_in = 1000).
        return 4 * self.signs.shape[0] * self.padded_dim + self.d_out

    def _sketch(self, x: torch.Tensor) -> torch.Tensor:
        z = x.unsqueeze(-2) * self.signs.to(x.dtype)
        z = nn.functional.pad(z, (0, self.padded_dim - self.d_in))
        z = fwht(z).flatten(-2)
        return z.index_select(-1, self.index) / math.sqrt(self.d_out)

    @property
    def matrix(self) -> torch.Tensor:
        eye = torch.eye(self.d_in, dtype=self.signs.dtype, device=self.signs.device)
        return self._sketch(eye)


class CountSketch(SketchModule):
    """CountSketch (sparse JL): ``S(x)_j = sum_{i: h(i) = j} s(i) x_i``.

    ``h`` is a uniformly random bucket in ``[0, d_out)`` and ``s`` a random
    sign per input coordinate (fully independent), so ``E[<Sx, Sy>] = <x, y>``
    and ``Var = (‖x‖²‖y‖² + <x,y>² − 2 sum_i x_i² y_i²) / d_out``. Time
    ``O(nnz(x))`` (``index_add`` over the last dimension, batched).

    Parameters
    ----------
    d_in, d_out : int
    seed : int, optional
    generator : torch.Generator, optional

    Attributes
    ----------
    buckets : Tensor [d_in], int64 buffer (``h``).
    signs : Tensor [d_in], float32 buffer (``s``).
    matrix : Tensor [d_in, d_out] (property): ``matrix[i, h(i)] = s(i)``.

    References
    ----------
    Charikar, Chen, Farach-Colton. Finding frequent items in data streams,
    ICALP 2002; Clarkson, Woodruff. Low rank approximation and regression in
    input sparsity time, STOC 2013.
    """

    buckets: torch.Tensor
    signs: torch.Tensor

    def __init__(
        self,
        d_in: int,
        d_out: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _check_dims(d_in, d_out, type(self))
        g = resolve_generator(seed, generator)
        self.d_in, self.d_out = d_in, d_out
        buckets = torch.randint(d_out, (d_in,), generator=g, device=generator_device(g))
        self.register_buffer("buckets", buckets)
        self.register_buffer("signs", random_signs((d_in,), g))

    @staticmethod
    def buffer_bytes(d_in: int, d_out: int) -> float:
        """Peak bytes of construction: int64 buckets and sign draws."""
        return 24.0 * d_in

    def _sketch(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(*x.shape[:-1], self.d_out)
        return out.index_add(-1, self.buckets, x * self.signs.to(x.dtype))

    @property
    def matrix(self) -> torch.Tensor:
        m = self.signs.new_zeros(self.d_in, self.d_out)
        m[torch.arange(self.d_in, device=m.device), self.buckets] = self.signs
        return m
