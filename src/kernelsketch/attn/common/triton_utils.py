"""Settings shared by the Triton kernels (common/sortlsh, polysketch).

Every kernel has a pure-PyTorch twin used on CPU. The kernels run only for
CUDA tensors when Triton imports; the tests run them on CPU through Triton's
interpreter and compile them ahead of time for sm_90 and sm_80
(tests/attn/test_aot.py).

Precision policy (every kernel, forward and backward alike):

* float16 / bfloat16 inputs: every product of inputs runs on tensor cores in
  the input dtype with float32 accumulation; intermediate weights (softmax
  probabilities, polynomial weights, score gradients) are rounded to the
  input dtype before their product with an input, as in FlashAttention;
  states and statistics stay float32, and products with float32 states run
  in TF32 (the 10-bit mantissa of float16, with float32 range).
* float32 inputs: TF32 products (tensor cores) with float32 accumulation,
  relative error ~1e-3. The dispatch gates (``sortlsh.fused_kernels_apply``,
  ``polysketch.method.fused_eligible``) send float32 inputs to the kernels
  only where torch itself multiplies float32 in TF32
  (``torch.set_float32_matmul_precision("high")`` or
  ``torch.backends.cuda.matmul.fp32_precision = "tf32"``, see
  :func:`tf32_allowed`); under torch's default ("highest") float32 takes the
  torch path, exact float32 products, as torch's own matmuls.
"""

from __future__ import annotations

import functools

import torch

#: Largest head dimension (D or Dv) of each kernel family and element size, from the
#: compile metadata (tests/attn/test_aot.py): the sortLSH kernels fit half-precision heads of
#: 256 on both chips, float32 heads of 128 (at 256 their tiles overflow shared memory); the
#: PolySketch backward holds two [64, Dv] float32 accumulators and spills registers at 256 in
#: every configuration tried, so it stops at 128. Wider heads take the torch path.
MAX_HEAD_DIM = {("sortlsh", 2): 256, ("sortlsh", 4): 128,
                ("polysketch", 2): 128, ("polysketch", 4): 128}
#: Shared memory one block may use (bytes, opt-in maximum): H100 (sm_90) 227 KiB,
#: A100 (sm_80) 163 KiB. Every launch configuration is checked against both.
SHARED_MEMORY_LIMIT = {"sm_90": 227 * 1024, "sm_80": 163 * 1024}
#: The kernels see head dimensions padded to a multiple of this (:func:`pad_head`): rows
#: 16-element aligned, one compiled binary per head tile.
HEAD_ALIGN = 16
HALF = (torch.float16, torch.bfloat16)


@functools.cache
def triton_available() -> bool:
    """True when the ``triton`` package imports."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def tf32_allowed() -> bool:
    """Whether torch computes float32 CUDA matmuls in TF32 (the user's setting)."""
    new = getattr(torch.backends.cuda.matmul, "fp32_precision", "none")
    if new in ("ieee", "tf32"):
        return new == "tf32"
    return torch.get_float32_matmul_precision() != "highest"


def max_head_dim(family: str, dtype: torch.dtype) -> int:
    """The widest head (D or Dv) the kernels of ``family`` take in ``dtype``."""
    return MAX_HEAD_DIM[family, 4 if dtype == torch.float32 else 2]


def head_tile(d: int) -> int:
    """Tile width of a head dimension ``d``: the next power of two, at least 32 (the
    columns past ``d`` are masked). Fewer, wider tiles: each is compiled ahead of time for
    every chip (tests/attn/test_aot.py), and heads under 32 are rare and cheap."""
    return max(32, 1 << (d - 1).bit_length())


def pad_head(x: torch.Tensor) -> torch.Tensor:
    """x with its last axis zero-padded to a multiple of :data:`HEAD_ALIGN` (x itself when it
    is one). Zero columns change no dot product; the padded output columns are dropped."""
    pad = -x.shape[-1] % HEAD_ALIGN
    return torch.nn.functional.pad(x, (0, pad)) if pad else x


def check_head_dims(family: str, dtype: torch.dtype, **dims: int) -> None:
    """ValueError unless every named head dimension is in [1, max_head_dim(family, dtype)]."""
    limit = max_head_dim(family, dtype)
    for name, d in dims.items():
        if not 1 <= d <= limit:
            raise ValueError(f"{name} must be in [1, {limit}] for the {family} Triton kernels "
                             f"in {str(dtype).replace('torch.', '')} (wider heads do not fit "
                             f"one program's registers and shared memory on A100 / H100), "
                             f"got {d}")


def check_aligned(**dims: int) -> None:
    """ValueError unless every named head dimension is a multiple of :data:`HEAD_ALIGN` (the
    launchers take padded heads: :func:`pad_head`)."""
    for name, d in dims.items():
        if d % HEAD_ALIGN:
            raise ValueError(f"{name}={d}: the kernel launchers take head dimensions padded to "
                             f"a multiple of {HEAD_ALIGN} (triton_utils.pad_head)")
