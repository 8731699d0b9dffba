"""Triton kernels in the attention tests: interpreted or compiled, chosen per test.

Triton decides at decoration time (module import) whether a ``@triton.jit``
function is compiled or interpreted. :func:`kernel_mode` therefore reloads the
kernel modules under the requested mode (``triton.knobs.runtime.interpret``
in a scope, never the process environment) and reloads them back in the
process's own mode afterwards, so a test that asks for the interpreter never
leaks interpreted kernels into another test. Every other module reaches the
kernels through these modules' globals (launchers, ``kernels.<name>``), so
the reload is all it takes for our kernels. Triton's own ``@jit`` helpers
(``tl.zeros``, ``tl.sum``, ...) were decorated when triton was imported; for
the interpreter they are swapped for interpreted twins within the block (what
``TRITON_INTERPRET=1`` before ``import triton`` would have made them).
"""

from __future__ import annotations

import contextlib
import importlib

import pytest
import torch

KERNEL_MODULES = (
    "kernelsketch.attn.common.sortlsh.kernels_fwd",
    "kernelsketch.attn.common.sortlsh.kernels_bwd",
    "kernelsketch.attn.polysketch.kernels",
)


def _load(interpret: bool) -> None:
    """Import (or reload) the kernel modules decorated in the given mode; each module
    records the mode it was decorated in as ``_INTERPRET``."""
    import triton

    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = interpret
        for name in KERNEL_MODULES:
            module = importlib.import_module(name)
            if module._INTERPRET != interpret:
                importlib.reload(module)


@contextlib.contextmanager
def _interpreted_language():
    """triton.language's @jit helpers as interpreted functions within the block.

    The interpreter patches triton.language for every interpreted call and
    restores the patches of a kernel launch, but not those of a nested @jit
    helper call (triton 3.9, ``InterpretedFunction.__call__``); left in place
    they break every later compilation in the process (the AOT tests). So the
    block records the value each patched attribute had before its first patch
    and puts every one back at the end.
    """
    import triton.experimental.gluon  # noqa: F401  (imported lazily by the interpreter; it
    import triton.language as tl  # wraps tl's helpers and needs them compiled when it loads)
    from triton.runtime.interpreter import InterpretedFunction, _LangPatchScope
    from triton.runtime.jit import JITFunction

    missing = object()
    originals = {}  # (id(owner), name) -> (owner, name, own value before the first patch)
    set_attr = _LangPatchScope.set_attr

    def recorded_set_attr(scope, owner, name, value):
        originals.setdefault((id(owner), name), (owner, name, vars(owner).get(name, missing)))
        set_attr(scope, owner, name, value)

    swapped = [(owner, name, value) for owner in (tl, tl.standard, tl.math, tl.core.tensor)
               for name, value in list(vars(owner).items()) if isinstance(value, JITFunction)]
    _LangPatchScope.set_attr = recorded_set_attr
    for owner, name, value in swapped:
        setattr(owner, name, InterpretedFunction(value.fn))
    try:
        yield
    finally:
        _LangPatchScope.set_attr = set_attr
        for owner, name, value in originals.values():
            if value is not missing:
                setattr(owner, name, value)
            elif name in vars(owner):
                delattr(owner, name)
        for owner, name, value in swapped:
            setattr(owner, name, value)


@contextlib.contextmanager
def kernel_mode(*, interpret: bool):
    """The Triton kernel modules decorated for the interpreter (or compiled) in the block."""
    import triton

    default = bool(triton.knobs.runtime.interpret)
    _load(interpret)
    try:
        if interpret and not default:
            with _interpreted_language():
                yield
        else:
            yield
    finally:
        _load(default)


@pytest.fixture
def triton_device():
    """The device the Triton kernels run on in this test: "cuda" with the kernels compiled
    on a CUDA machine, else "cpu" with the kernels interpreted (for this test only)."""
    pytest.importorskip("triton")
    cuda = torch.cuda.is_available()
    with kernel_mode(interpret=not cuda):
        yield "cuda" if cuda else "cpu"


@pytest.fixture
def compiled_kernels():
    """The Triton kernel modules in compiled mode (ahead-of-time compilation tests)."""
    pytest.importorskip("triton")
    with kernel_mode(interpret=False):
        yield
