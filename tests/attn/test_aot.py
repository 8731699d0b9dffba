"""Every Triton kernel compiled ahead of time for H100 (sm_90) and A100 (sm_80), no GPU needed.

For each kernel, chip and dtype, the launchers are run on meta tensors over
the grid of triton_aot.py (every head tile, autotuning candidate and split
they can choose) and each recorded launch is compiled as Triton's JIT would
compile it on that chip. Asserted: it compiles; its shared memory fits one
block of the chip (227 KiB / 163 KiB); it uses the chip's tensor-core MMA
(``wgmma.mma_async`` / ``mma.sync``: half precision, and TF32 for float32);
in half precision, no register spills. ``pytest -k aot`` selects these tests.

Cost: 238 binaries, about 260 s of CPU cold (1.1 s each; two xdist workers:
~2 min), measured on the shared 2-core machine; results are cached under
build/aot-cache, so a warm run only reads JSON. ``python tests/attn/triton_aot.py``
prints the table of every binary (benchmarks/results/attention/triton_aot.md).
"""

import pytest
import torch

pytest.importorskip("triton")

from .triton_aot import (
    CHIPS,
    DTYPES,
    KERNELS,
    binary_key,
    compile_launch,
    family_launches,
    polysketch_launches,
    sortlsh_launches,
)

CASES = [(family, kernel, chip, dtype) for family, kernels in KERNELS.items()
         for kernel in kernels for chip in CHIPS for dtype in DTYPES]


@pytest.mark.parametrize("family,kernel,chip,dtype", CASES,
                         ids=[f"{k}-{c}-{str(d)[6:]}" for _, k, c, d in CASES])
def test_aot_compiles_and_fits(compiled_kernels, family, kernel, chip, dtype):
    launches = [launch for launch in family_launches(family, dtype) if launch.name == kernel]
    assert launches, f"no launch of {kernel} recorded"
    unique = {binary_key(launch, chip): launch for launch in launches}
    problems = []
    for launch in unique.values():
        c = compile_launch(launch, chip)
        if c.shared > c.shared_limit:
            problems.append(f"shared memory over the limit: {c.row()}")
        if not c.tensor_core:
            problems.append(f"no tensor-core instruction: {c.row()}")
        if dtype != torch.float32 and c.spill_stores:
            problems.append(f"register spills in half precision: {c.row()}")
    assert not problems, "\n".join(problems)


def test_aot_shapes_other_than_the_head_do_not_change_the_binaries(compiled_kernels):
    # Lengths, block sizes, sketch size, degree and GQA group are not specialised on: the
    # grid's shapes stand for every shape with the same head dimensions and dtype.
    def keys(launches):
        return sorted(binary_key(launch, "sm_90") for launch in launches)

    base = keys(sortlsh_launches(torch.bfloat16, 64))
    assert keys(sortlsh_launches(torch.bfloat16, 64, R=1001, M=3333, S=17, blocks=5)) == base
    base = keys(polysketch_launches(torch.bfloat16, 64))
    for other in ({"r": 16}, {"r": 256}, {"N": 1001}, {"degree": 2}, {"degree": 8},
                  {"block_size": 64}, {"Hq": 2, "Hkv": 2}, {"Hq": 8, "Hkv": 1}):
        assert keys(polysketch_launches(torch.bfloat16, 64, **other)) == base, other


def test_aot_launchers_take_only_padded_heads(compiled_kernels):
    # The autograd Functions pad heads to a multiple of 16; the launchers refuse others, so
    # no launch can compile a binary outside the grid (rows not 16-aligned).
    for launches in (sortlsh_launches, polysketch_launches):
        with pytest.raises(ValueError, match="multiple of 16"):
            launches(torch.bfloat16, 72)
