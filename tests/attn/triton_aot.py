"""Ahead-of-time compilation of the Triton kernels for GPU targets, without a GPU.

:func:`recorded_launches` runs the real launchers on ``meta`` tensors (shapes
and dtypes, no data) and records each kernel launch instead of running it;
for an autotuned kernel it records one launch per candidate configuration
that the tuner's pruning keeps for those arguments, i.e. every configuration
that launch could run. :func:`compile_launch` then builds exactly what
Triton's JIT would build for that launch on a GPU (its own argument
specialization, constexprs and options) for sm_90 or sm_80 with the ptxas
bundled in the Triton wheel, and reads off registers and spills (ptxas -v),
shared memory (the compiled metadata) and the tensor-core instruction in the
PTX (``wgmma.mma_async`` on sm_90, ``mma.sync`` on sm_80).

Results are cached as JSON under ``build/aot-cache`` (git-ignored), keyed by
the Triton version, the kernel source hash (with its jit dependencies), the
specialization, the options and the target.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction, create_function_from_signature

from kernelsketch.attn.common.triton_utils import SHARED_MEMORY_LIMIT

CHIPS = {"sm_90": GPUTarget("cuda", 90, 32), "sm_80": GPUTarget("cuda", 80, 32)}
TENSOR_CORE_OP = {"sm_90": "wgmma.mma_async", "sm_80": "mma.sync"}
CACHE = Path(__file__).resolve().parents[2] / "build" / "aot-cache"
_PTXAS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


@dataclass(frozen=True)
class Launch:
    """One kernel launch as the JIT sees it: the kernel and its arguments."""

    kernel: JITFunction
    args: tuple
    kwargs: dict

    @property
    def name(self) -> str:
        return self.kernel.__name__


@contextlib.contextmanager
def recorded_launches():
    """Within the block, kernel launches are recorded (into the yielded list), not run."""
    launches: list[Launch] = []
    jit_run, tuner_run = JITFunction.run, Autotuner.run

    def record(self, *args, grid, warmup, **kwargs):
        launches.append(Launch(self, args, kwargs))

    def record_candidates(self, *args, **kwargs):
        kwargs.pop("grid")
        kwargs.pop("warmup")
        self.nargs = dict(zip(self.arg_names, args))
        for config in self.prune_configs(kwargs):
            launches.append(Launch(self.fn, args, {**kwargs, **config.all_kwargs()}))

    JITFunction.run, Autotuner.run = record, record_candidates
    try:
        yield launches
    finally:
        JITFunction.run, Autotuner.run = jit_run, tuner_run


@dataclass(frozen=True)
class Compiled:
    """What the compiled kernel costs on one chip."""

    kernel: str
    chip: str
    config: str  # constexprs, warps, stages
    registers: int
    spill_stores: int
    spill_loads: int
    shared: int  # bytes per block
    tensor_core: bool  # the chip's tensor-core MMA instruction is in the PTX

    @property
    def shared_limit(self) -> int:
        return SHARED_MEMORY_LIMIT[self.chip]

    def row(self) -> str:
        return (f"{self.kernel} {self.chip} {self.config}: {self.registers} registers, "
                f"{self.spill_stores} B spilled, {self.shared / 1024:.1f} KiB shared "
                f"(limit {self.shared_limit // 1024}), tensor cores {self.tensor_core}")


def source(launch: Launch, chip: str):
    """The (ASTSource, options) that Triton's JIT compiles for this launch on ``chip``."""
    fn, target = launch.kernel, CHIPS[chip]
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = {**launch.kwargs, "debug": False}
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound,
                                                          specialization, options)
    return ASTSource(fn, signature, constexprs, attrs), options


def binary_key(launch: Launch, chip: str) -> str:
    """Identifies the binary the launch compiles to (equal keys: the same binary)."""
    src, options = source(launch, chip)
    text = f"{triton.__version__}-{src.hash()}-{CHIPS[chip]}-{options.hash()}"
    return hashlib.sha256(text.encode()).hexdigest()


def compile_launch(launch: Launch, chip: str, cache: Path = CACHE) -> Compiled:
    """Compile ``launch`` for ``chip`` (or read the cached result) and measure it."""
    src, options = source(launch, chip)
    path = cache / f"{launch.name}-{chip}-{binary_key(launch, chip)[:32]}.json"
    if path.exists():
        return Compiled(**json.loads(path.read_text()))
    log = io.StringIO()
    with knobs.compilation.scope(), knobs.nvidia.scope(), knobs.cache.scope():
        knobs.compilation.always_compile = True  # ptxas runs, so its log is complete
        knobs.nvidia.dump_ptxas_log = True
        knobs.cache.dir = str(cache / "triton")
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(src, target=CHIPS[chip], options=options.__dict__)
    text = log.getvalue()
    spills, regs = _PTXAS.search(text), _REGS.search(text)
    if spills is None or regs is None:
        raise RuntimeError(f"no ptxas resource report for {launch.name}:\n{text}")
    consts = {launch.kernel.arg_names[k[0]]: v for k, v in src.constants.items()
              if isinstance(k, tuple) and len(k) == 1}
    dtypes = sorted({t[1:] for t in src.signature.values() if t.startswith("*")})
    config = (", ".join(f"{k}={v}" for k, v in consts.items())
              + f", warps={options.num_warps}, stages={options.num_stages}, ptrs={'/'.join(dtypes)}")
    result = Compiled(kernel=launch.name, chip=chip, config=config,
                      registers=int(regs.group(1)), spill_stores=int(spills.group(2)),
                      spill_loads=int(spills.group(3)), shared=kernel.metadata.shared,
                      tensor_core=TENSOR_CORE_OP[chip] in kernel.asm["ptx"])
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(result)))
    return result


# ---------------------------------------------------------------------------
# The launch configurations: every kernel as its launcher configures it.
#
# A launch compiles to one binary per (dtype, head tile, candidate
# configuration): the launchers take head dimensions padded to a multiple of
# 16 (triton_utils.pad_head), which are the only specialised integers
# (lengths, block sizes, sketch size, degree, GQA group are
# ``do_not_specialize``: test_aot.py checks that they leave the binaries
# alone). The grid takes every head tile a family accepts in each dtype with
# D = Dv; D != Dv compiles tiles no wider than max(D, Dv) in both.
# ---------------------------------------------------------------------------

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TILES = (32, 64, 128, 256)
KERNELS = {
    "sortlsh": ("_hyper_fwd_kernel", "_bwd_dq_kernel", "_bwd_dkdv_kernel"),
    "polysketch": ("state_kernel", "fwd_kernel", "bwd_q_kernel", "bwd_kv_kernel",
                   "state_grad_kernel"),
}


def _meta(*shape, dtype):
    return torch.empty(*shape, device="meta", dtype=dtype)


def sortlsh_launches(dtype, d, dv=None, *, R=4096, M=4096, S=256, blocks=16, BH=2):
    """The launches of one forward and backward of ``fused_sorted_attention``'s kernels."""
    from kernelsketch.attn.common.sortlsh.kernels_bwd import hyper_fused_backward
    from kernelsketch.attn.common.sortlsh.kernels_fwd import hyper_fused_forward

    dv = d if dv is None else dv
    f32, i32, i64 = torch.float32, torch.int32, torch.int64
    args = (_meta(BH, R, d, dtype=dtype), _meta(BH, M, d, dtype=dtype),
            _meta(BH, M, dv, dtype=dtype), _meta(BH, S, d, dtype=dtype),
            _meta(BH, S, dv, dtype=dtype), _meta(BH, S, dtype=f32), _meta(BH, S, dtype=i32),
            _meta(BH, R, dtype=i64))
    kw = {"q_block": -(-R // blocks), "k_block": -(-M // blocks), "scale": d ** -0.5}
    with recorded_launches() as launches:
        hyper_fused_forward(*args, **kw)
        hyper_fused_backward(_meta(BH, R, dv, dtype=dtype), _meta(BH, R, dtype=f32),
                             _meta(BH, R, dv, dtype=dtype), _meta(BH, R, dtype=f32), *args,
                             _meta(BH, M, dtype=i64), _meta(BH, S, dtype=i64), **kw)
    return launches


def polysketch_launches(dtype, d, dv=None, *, r=32, N=4096, block_size=256, degree=4, Hq=4,
                        Hkv=2):
    """The launches of one forward and backward of ``polysketch_causal``'s kernels."""
    from kernelsketch.attn.polysketch import kernels

    dv = d if dv is None else dv
    f32 = torch.float32
    q, k = _meta(1, Hq, N, d, dtype=dtype), _meta(1, Hkv, N, d, dtype=dtype)
    v = _meta(1, Hkv, N, dv, dtype=dtype)
    fq, fk = _meta(1, Hq, N, r, dtype=f32), _meta(1, Hkv, N, r, dtype=f32)
    kw = {"degree": degree, "block_size": block_size}
    with recorded_launches() as launches:
        _, _, h, z = kernels.polysketch_forward(q, k, v, fq, fk, **kw)
        kernels.polysketch_backward(q, k, v, fq, fk, _meta(1, Hq, N, dv, dtype=dtype),
                                    _meta(1, Hq, N, dtype=f32), h, z, **kw)
    return launches


LAUNCHES = {"sortlsh": sortlsh_launches, "polysketch": polysketch_launches}


def grid(family: str, dtype) -> list[int]:
    """The head dimensions (D = Dv) compiled for a family in a dtype: every tile it takes."""
    from kernelsketch.attn.common.triton_utils import max_head_dim

    return [t for t in TILES if t <= max_head_dim(family, dtype)]


def family_launches(family: str, dtype) -> list[Launch]:
    return [launch for d in grid(family, dtype) for launch in LAUNCHES[family](dtype, d)]


def main() -> None:
    """Print the table of every kernel x chip x configuration (markdown)."""
    print(f"Triton {triton.__version__}, ptxas of the Triton wheel; shared-memory limits "
          f"227 KiB (sm_90), 163 KiB (sm_80); spills: ptxas spill stores. Configuration: "
          f"constexprs, warps, stages, pointer dtypes; head dims padded to 16.\n")
    print("| kernel | chip | dtype | configuration | registers | spilled B | shared KiB "
          "| tensor cores |")
    print("|---|---|---|---|---|---|---|---|")
    seen = set()
    for family in KERNELS:
        for dtype in DTYPES:
            for launch in family_launches(family, dtype):
                for chip in CHIPS:
                    key = binary_key(launch, chip)
                    if key in seen:
                        continue
                    seen.add(key)
                    c = compile_launch(launch, chip)
                    over = " (over)" if c.shared > c.shared_limit else ""
                    print(f"| {c.kernel} | {chip} | {str(dtype)[6:]} | {c.config} | "
                          f"{c.registers} | {c.spill_stores} | {c.shared / 1024:.1f}{over} | "
                          f"{'yes' if c.tensor_core else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
