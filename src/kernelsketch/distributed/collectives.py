"""The ``torch.distributed`` collectives of context parallelism: counted and differentiable.

Every byte that :mod:`kernelsketch.distributed` moves between ranks goes
through the five functions here, which call ``torch.distributed`` (NCCL on
GPUs, gloo on CPU) and nothing else:

* :func:`all_reduce_sum`, :func:`all_gather`, :func:`all_to_all`,
  :func:`ring_shift` are ``torch.autograd`` aware: their backward is the
  adjoint collective (all-reduce, reduce-scatter, the reverse all-to-all, the
  reverse shift), so gradients flow back to the rank that owns each input.
  Every rank must run backward through the same collectives in the same
  order (as with ``DistributedDataParallel``): call ``backward`` on every rank.
* :func:`all_reduce_max` reduces integers (sizes), without gradient.

Byte counting. Inside ``with count_bytes() as c:`` every collective adds the
bytes THIS rank puts on the wire under the bandwidth-optimal algorithm of
that collective, with P the group size and ``b`` the local tensor's bytes:

===============  ==========================================
all-reduce       ``2 (P - 1) / P · b``   (ring reduce-scatter + all-gather)
all-gather       ``(P - 1) · b``         (its piece reaches P - 1 ranks)
reduce-scatter   ``(P - 1) / P · b``
all-to-all       bytes of the pieces addressed to other ranks
ring shift       ``b``
===============  ==========================================

``c.total`` is the sum and ``c.by_op`` splits it by collective. The counts
are what the algorithm needs, independent of the backend's choice of
algorithm (NCCL may use trees; gloo's all-to-all is pairwise).
Theory: docs/distributed.md.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist

__all__ = [
    "ByteCounter",
    "all_gather",
    "all_reduce_max",
    "all_reduce_sum",
    "all_to_all",
    "count_bytes",
    "gather_ints",
    "group_rank",
    "group_size",
    "preceding_rows",
    "ring_shift",
]


class ByteCounter:
    """Bytes this rank sent, per collective (see the module docstring for the convention)."""

    def __init__(self) -> None:
        self.by_op: Counter[str] = Counter()

    @property
    def total(self) -> int:
        """All bytes counted so far."""
        return int(sum(self.by_op.values()))

    def add(self, op: str, nbytes: float) -> None:
        self.by_op[op] += round(nbytes)

    def __repr__(self) -> str:
        return f"ByteCounter(total={self.total}, by_op={dict(self.by_op)})"


_ACTIVE: list[ByteCounter] = []


@contextlib.contextmanager
def count_bytes() -> Iterator[ByteCounter]:
    """Count the bytes this rank sends inside the block (forward and backward alike).

    Counters nest: an inner counter's bytes also count in the outer ones.
    """
    counter = ByteCounter()
    _ACTIVE.append(counter)
    try:
        yield counter
    finally:
        _ACTIVE.remove(counter)


def _count(op: str, nbytes: float) -> None:
    for counter in _ACTIVE:
        counter.add(op, nbytes)


def _nbytes(x: torch.Tensor) -> int:
    return x.numel() * x.element_size()


def group_size(group=None) -> int:
    """Number of ranks in ``group`` (the default group when None)."""
    return dist.get_world_size(group)


def group_rank(group=None) -> int:
    """This process's rank within ``group``."""
    return dist.get_rank(group)


def _global_rank(group, rank: int) -> int:
    return rank if group is None else dist.get_global_rank(group, rank)


# -- raw collectives (counted, no autograd) -------------------------------------------------


def _all_reduce(x: torch.Tensor, group, op=dist.ReduceOp.SUM) -> torch.Tensor:
    x = x.contiguous().clone()
    P = group_size(group)
    _count("all_reduce", 2 * (P - 1) / P * _nbytes(x))
    dist.all_reduce(x, op=op, group=group)
    return x


def _all_gather(x: torch.Tensor, group, op: str = "all_gather") -> torch.Tensor:
    x = x.contiguous()
    P = group_size(group)
    _count(op, (P - 1) * _nbytes(x))
    out = [torch.empty_like(x) for _ in range(P)]
    dist.all_gather(out, x, group=group)
    return torch.stack(out)


def _reduce_scatter(x: torch.Tensor, group) -> torch.Tensor:
    """x [P, ...] -> Σ over ranks of x[rank] (this rank's slot)."""
    P = group_size(group)
    _count("reduce_scatter", (P - 1) / P * _nbytes(x))
    out = torch.empty_like(x[0])
    dist.reduce_scatter(out, [t.contiguous() for t in x.unbind(0)], group=group)
    return out


def _all_to_all(pieces: Sequence[torch.Tensor], sizes: Sequence[int], group) -> list[torch.Tensor]:
    """Send the 1-D ``pieces[j]`` to rank j; receive ``sizes[j]`` elements from rank j."""
    me = group_rank(group)
    _count("all_to_all", sum(_nbytes(p) for j, p in enumerate(pieces) if j != me))
    send = torch.cat([p.reshape(-1) for p in pieces])
    recv = send.new_empty(sum(sizes))
    dist.all_to_all_single(recv, send, list(sizes), [p.numel() for p in pieces], group=group)
    return list(recv.split(list(sizes)))


def _shift(x: torch.Tensor, offset: int, group) -> torch.Tensor:
    """Send x to rank (me + offset) mod P, receive from (me - offset) mod P."""
    return ShiftHandle(x, offset, group).wait()


class ShiftHandle:
    """A ring shift in flight (:func:`start_shift`): overlap it with compute, then ``wait()``."""

    def __init__(self, x: torch.Tensor, offset: int, group) -> None:
        P, me = group_size(group), group_rank(group)
        self._x = x.contiguous()
        self.result = torch.empty_like(self._x)
        self._works = []
        if P == 1:
            self.result.copy_(self._x)
            return
        _count("ring_shift", _nbytes(self._x))
        ops = [
            dist.P2POp(dist.isend, self._x, _global_rank(group, (me + offset) % P), group),
            dist.P2POp(dist.irecv, self.result, _global_rank(group, (me - offset) % P), group),
        ]
        self._works = dist.batch_isend_irecv(ops)

    def wait(self) -> torch.Tensor:
        for work in self._works:
            work.wait()
        self._works = []
        return self.result


def start_shift(x: torch.Tensor, group=None, offset: int = 1) -> ShiftHandle:
    """Start sending ``x`` to rank ``me + offset`` (no autograd); ``.wait()`` gives the received one."""
    return ShiftHandle(x, offset, group)


# -- differentiable collectives -------------------------------------------------------------
#
# Every rank must run the backward of every collective, in the same order: autograd orders
# ready nodes by creation, but which nodes are ready differs between ranks whose graphs
# differ (a rank holding only keys of a block, another only its queries), and two ranks
# waiting in different collectives deadlock. Inside ``backward_in_order`` every differentiable
# collective takes and returns a scalar token, so the tokens chain them: the backward of a
# collective waits for the token gradient of the next one, and runs in the reverse order of
# the forward on every rank.

_CHAINS: list[list[torch.Tensor]] = []


@contextlib.contextmanager
def backward_in_order(device, enabled: bool = True) -> Iterator[list[torch.Tensor]]:
    """Chain the differentiable collectives of the block (see above).

    Yields a one-element list holding the current token; pass the results through
    :func:`tie` with it so that their gradient reaches the last collective.
    Disabled (no chain) when ``enabled`` is False or gradients are off.
    """
    if not (enabled and torch.is_grad_enabled()):
        yield []
        return
    holder = [torch.zeros((), device=device, requires_grad=True)]
    _CHAINS.append(holder)
    try:
        yield holder
    finally:
        _CHAINS.remove(holder)


def tie(x: torch.Tensor, chain: list[torch.Tensor]) -> torch.Tensor:
    """``x`` plus an exact 0 that depends on the chain's last token (``x`` when no chain)."""
    return x + chain[0].to(x.dtype) * 0 if chain else x


def _chained(fn, *args):
    """Apply an autograd Function ``fn(token, *args) -> (*outputs, token)`` inside the chain."""
    if _CHAINS and torch.is_grad_enabled():
        holder = _CHAINS[-1]
        *outs, holder[0] = fn.apply(holder[0], *args)
        return outs
    return list(fn.apply(torch.zeros(()), *args)[:-1])


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, token, group, x):
        ctx.group = group
        return _all_reduce(x, group), token.clone()

    @staticmethod
    def backward(ctx, grad, token_grad):
        # out_r = Σ_r' x_r' on every rank r, so dL/dx_r' = Σ_r dL/dout_r.
        return token_grad, None, _all_reduce(grad, ctx.group)


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, token, group, x):
        ctx.group = group
        return _all_gather(x, group), token.clone()

    @staticmethod
    def backward(ctx, grad, token_grad):
        return token_grad, None, _reduce_scatter(grad.contiguous(), ctx.group)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, token, group, sizes, *pieces):
        ctx.group = group
        ctx.in_sizes = [p.numel() for p in pieces]
        ctx.differentiable = pieces[0].is_floating_point()
        return (*_all_to_all(pieces, sizes, group), token.clone())

    @staticmethod
    def backward(ctx, *grads):
        *grads, token_grad = grads
        if not ctx.differentiable:  # integer pieces (the same dtype on every rank)
            return (token_grad, None, None, *[None] * len(grads))
        return (token_grad, None, None, *_all_to_all(grads, ctx.in_sizes, ctx.group))


class _Shift(torch.autograd.Function):
    @staticmethod
    def forward(ctx, token, offset, group, x):
        ctx.offset, ctx.group = offset, group
        return _shift(x, offset, group), token.clone()

    @staticmethod
    def backward(ctx, grad, token_grad):
        return token_grad, None, None, _shift(grad, -ctx.offset, ctx.group)


def all_reduce_sum(x: torch.Tensor, group=None) -> torch.Tensor:
    """Σ over the ranks of ``x`` (same shape on every rank); differentiable."""
    return _chained(_AllReduceSum, group, x)[0]


def all_reduce_max(x: torch.Tensor, group=None) -> torch.Tensor:
    """Elementwise max over the ranks of ``x`` (sizes, flags); not differentiable."""
    return _all_reduce(x.detach(), group, op=dist.ReduceOp.MAX)


def gather_ints(values: Sequence[int], group=None, device=None) -> list[list[int]]:
    """Every rank's list of ints (same length everywhere), in rank order; counted as "validate"."""
    x = torch.tensor(list(values), dtype=torch.int64, device=device)
    return _all_gather(x, group, op="validate").tolist()


def all_gather(x: torch.Tensor, group=None) -> torch.Tensor:
    """``[P, *x.shape]``: every rank's ``x`` (same shape on every rank) in rank order; differentiable."""
    return _chained(_AllGather, group, x)[0]


def all_to_all(pieces: Sequence[torch.Tensor], sizes: Sequence[int],
               group=None) -> list[torch.Tensor]:
    """Send the 1-D ``pieces[j]`` to rank j; return the 1-D pieces received, ``sizes[j]`` long
    from rank j.

    All pieces share one dtype (pack several tensors with :func:`pack`);
    differentiable (the backward sends the gradients back the same way).
    """
    return _chained(_AllToAll, group, list(sizes), *pieces)


def ring_shift(x: torch.Tensor, group=None, offset: int = 1) -> torch.Tensor:
    """Send ``x`` to rank ``me + offset`` and return the one from ``me - offset`` (mod P); differentiable."""
    return _chained(_Shift, offset, group, x)[0]


def pack(tensors: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """Flatten and concatenate tensors into one 1-D buffer of ``dtype`` (see :func:`unpack`)."""
    return torch.cat([t.reshape(-1).to(dtype) for t in tensors])


def unpack(buf: torch.Tensor, shapes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Split a 1-D buffer made by :func:`pack` back into tensors of the given shapes."""
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    return [p.reshape(s) for p, s in zip(buf.split(sizes), shapes)]


def preceding_rows(x: torch.Tensor, length: int, group=None) -> torch.Tensor:
    """The ``length`` rows (axis 2) that precede this rank's shard in the whole sequence.

    ``x`` [B, H, n, ...] is this rank's contiguous shard; the rows come from
    ranks me - 1, me - 2, ... by ring shifts (``ceil(length / n)`` of them,
    each of ``min(n, length)`` rows). Rows before the start of the sequence
    (on the first ranks) are zeros. Differentiable.
    """
    n, me = x.shape[2], group_rank(group)
    if length == 0:
        return x[:, :, :0]
    hops = -(-length // n)
    cur = x if hops > 1 else x[:, :, n - length:]
    parts = []
    for _ in range(hops):
        cur = ring_shift(cur, group)
        parts.insert(0, cur)
    rows = torch.cat(parts, dim=2)[:, :, -length:]
    before_start = min(length, max(0, length - me * n))
    if before_start:
        rows = torch.cat((torch.zeros_like(rows[:, :, :before_start]), rows[:, :, before_start:]), 2)
    return rows
