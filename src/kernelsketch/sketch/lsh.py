"""Angular (SimHash) locality-sensitive hashing with Gray-code bucket order.

Sorting vectors by :class:`AngularLSH` bucket id puts vectors with equal sign
patterns together, and consecutive bucket ids ``r`` and ``r + 1`` have sign
patterns that differ in exactly one hyperplane (binary-reflected Gray code),
so nearby buckets in the sorted order hold nearby directions. This is the
sortLSH step of HyperAttention (arXiv 2310.05869) and the bucketing of
KDEformer (arXiv 2302.02451). Theory: docs/sketches.md.
"""

from __future__ import annotations

import torch

from kernelsketch._checks import check_allocation, check_int, check_tensor
from kernelsketch.sketch.projections import SketchModule, compute_dtype
from kernelsketch.sketch.sampling import generator_device, resolve_generator

__all__ = ["AngularLSH", "gray_code", "inverse_gray_code"]

_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def _check_codes(name: str, r: torch.Tensor) -> None:
    check_tensor(name, r, dtypes=_INT_DTYPES, nonempty=False)
    if r.numel() and (r < 0).any():
        raise ValueError(f"{name} must be non-negative integers, found negative entries")


def gray_code(r: torch.Tensor) -> torch.Tensor:
    """Binary-reflected Gray code ``r ^ (r >> 1)``, elementwise.

    ``gray_code(r)`` and ``gray_code(r + 1)`` differ in exactly one bit.

    Parameters
    ----------
    r : Tensor, integer dtype, non-negative

    Returns
    -------
    Tensor, same shape and dtype as ``r``.
    """
    _check_codes("r", r)
    return r ^ (r >> 1)


def inverse_gray_code(c: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`gray_code`: the ``r`` with ``gray_code(r) == c``.

    Bit ``i`` of ``r`` is the XOR of bits ``>= i`` of ``c``, computed as a
    prefix XOR with ``log2(bit width)`` shifts.

    Parameters
    ----------
    c : Tensor, integer dtype, non-negative

    Returns
    -------
    Tensor, same shape and dtype as ``c``.
    """
    _check_codes("c", c)
    r = c
    shift = 1
    width = torch.iinfo(c.dtype).bits
    while shift < width:
        r = r ^ (r >> shift)
        shift *= 2
    return r


class AngularLSH(SketchModule):
    """SimHash with ``n_bits`` random Gaussian hyperplanes and Gray-code bucket ids.

    For ``x`` [..., dim], bit ``i`` is ``b_i = [x · w_i > 0]``, the sign code is
    ``c = sum_i b_i 2**i`` and the bucket id is ``inverse_gray_code(c)``
    (so ``gray_code(id) == c``). Two vectors at angle ``θ`` disagree on each
    bit with probability ``θ / π`` (Charikar 2002); bucket ids ``r`` and
    ``r + 1`` correspond to codes differing in exactly one bit.

    Parameters
    ----------
    dim : int
        Input dimension.
    n_bits : int in [1, 30]
        Number of hyperplanes; ids lie in ``[0, 2**n_bits)``.
    seed : int, optional
    generator : torch.Generator, optional

    Attributes
    ----------
    planes : Tensor [dim, n_bits], float32 buffer of N(0, 1) normals.
    n_buckets : int, ``2**n_bits``.

    References
    ----------
    Charikar. Similarity estimation techniques from rounding algorithms,
    STOC 2002; Han et al. HyperAttention, arXiv 2310.05869.
    """

    planes: torch.Tensor
    bit_values: torch.Tensor

    def __init__(
        self,
        dim: int,
        n_bits: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_int("dim", dim, min=1)
        check_int("n_bits", n_bits, min=1, max=30)
        check_allocation(8.0 * dim * n_bits, f"the [dim, n_bits] = [{dim}, {n_bits}] planes",
                         "reduce dim")
        g = resolve_generator(seed, generator)
        self.d_in = dim
        self.n_bits = n_bits
        self.n_buckets = 1 << n_bits
        planes = torch.randn(dim, n_bits, generator=g, device=generator_device(g))
        self.register_buffer("planes", planes)
        self.register_buffer(
            "bit_values", 2 ** torch.arange(n_bits, device=planes.device), persistent=False
        )

    def _work_width(self) -> int:
        return 3 * self.n_bits  # projections, bits, weighted bits

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Sign codes ``c = sum_i [x · w_i > 0] 2**i``, int64 [...], before Gray ordering."""
        self._check_input(x)
        self._check_output(x)
        xc = x.to(compute_dtype(x.dtype))
        bits = (xc @ self.planes.to(xc.dtype)) > 0
        return (bits.long() * self.bit_values).sum(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Bucket ids, int64 [...] in ``[0, 2**n_bits)``, for ``x`` [..., dim]."""
        return inverse_gray_code(self.codes(x))

    def extra_repr(self) -> str:
        return f"dim={self.d_in}, n_bits={self.n_bits}"
