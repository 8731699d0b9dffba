"""HyperAttention and KDEformer of sequence shards (``method="hyper"``, ``"kde"``).

The single-process estimator (attn/hyper, attn/kde): hash queries and keys
with one angular LSH, sort both by bucket, cut the sorted orders into
``num_blocks`` blocks, attend exactly inside block pairs (sortLSH), add a
sample of the other keys with importance weights, merge by log-sum-exp. Over
P ranks:

1. Every rank draws the same hash (a generator derived from ``generator``,
   identical everywhere) and buckets its rows, centred (as the single process
   does) by the mean query / key row of their problem over all its ranks (one
   all-reduce of row sums per depth).
2. One all-gather of per-rank bucket histograms ([B, Hkv, G, 2^bits] each)
   gives every rank the global sorted position of each of its rows (ties in
   the order of the folded row index, as ``torch.argsort(stable=True)`` does
   on the whole sequence), hence its block.
3. Blocks are dealt to ranks in contiguous ranges (so each rank gets a
   contiguous range of sorted buckets); one all-to-all sends every row to the
   owner of its block, which attends inside its blocks; a second all-to-all
   returns ``(out, lse)`` to the row's home rank. O(N/P (D + Dv)) bytes.
4. The sample is drawn once with the shared generator (uniform) or in two
   stages (which rank, from the all-gathered per-rank masses, then which key
   on that rank: the same distribution as one draw over all keys, for
   ``sampling="value_norm"`` and KDEformer's AMM distribution, whose two
   density estimates use all-reduced sampled rows and normalisers); the
   sampled keys are assembled by one all-reduce and every rank attends to
   them from home.

Causal: the recursion of attn/common/causal.py over rank ranges. A range of
ranks is split in two halves; its off-diagonal problem (queries of the second
half over keys of the first) is one non-causal problem of the steps above on
the ranks of the range; all problems of one depth run together; a range of
one rank runs the single-process causal method on its shard. Depth
ceil(log2 P), so O(log P · N/P · d) bytes per rank.

The result is the same estimator as ``ks.attention`` (same block structure
for the non-causal problem, same sample distributions), with other draws.
Differentiable (the sampling distributions carry no gradient, as in the
single-process methods). Theory: docs/distributed.md.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from ..attn.api import get_method
from ..attn.common.exact import (
    ExactFallbackWarning,
    NoSpeedupWarning,
    partial_attention,
    warn_exact_fallback,
    warn_no_speedup,
)
from ..attn.common.gqa import fold_groups, unfold_groups
from ..attn.common.merge import accumulation_dtype, merge_many
from ..attn.common.sortlsh.blocks import lsh_buckets
from ..sketch.lsh import AngularLSH
from ..sketch.projections import compute_dtype
from ..sketch.sampling import uniform_sample
from .collectives import (
    all_gather,
    all_reduce_max,
    all_reduce_sum,
    all_to_all,
    group_rank,
    group_size,
)
from .exact import ring_attention

__all__ = ["MAX_LSH_BITS", "sortlsh_context_parallel"]

# Bucket histograms are dense: 2**lsh_bits counts per head and rank.
MAX_LSH_BITS = 16

# Causal hyper / kde context parallel on CPU with fewer queries than this were measured slower
# than the zig-zag ring of the same run for P >= 2 (BENCHMARKS.md, scale-out: N <= 8192):
# they warn (NoSpeedupWarning).
CONTEXT_PARALLEL_CPU_BREAK_EVEN = 16384


@dataclass(frozen=True)
class Problem:
    """One non-causal problem: the queries of ``q_ranks`` over the keys of ``k_ranks``
    (each in sequence order), its blocks computed by ``owners``."""

    q_ranks: tuple[int, ...]
    k_ranks: tuple[int, ...]
    owners: tuple[int, ...]


def causal_levels(P: int) -> list[list[Problem]]:
    """The off-diagonal problems of the causal recursion over P ranks, by depth."""
    levels, ranges = [], [(0, P)] if P > 1 else []
    while ranges:
        problems, split = [], []
        for a, b in ranges:
            mid = a + (b - a) // 2
            problems.append(Problem(tuple(range(mid, b)), tuple(range(a, mid)),
                                    tuple(range(a, b))))
            split += [(lo, hi) for lo, hi in ((a, mid), (mid, b)) if hi - lo > 1]
        levels.append(problems)
        ranges = split
    return levels


def _derived(seed: int, *tags: int, device) -> torch.Generator:
    """A generator seeded from ``seed`` and integer tags (equal on every rank for equal tags)."""
    value = seed
    for t in tags:
        value = (value * 1_000_003 + t + 1) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(value)


def _excl_cumsum(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x.cumsum(dim) - x


class _Side:
    """This rank's rows of one side (queries or keys) in its problem at one depth.

    ``offset``: index of its first row among the problem's rows of this side (in
    rank order); the estimator's keys exclude the always-exact ones, so key
    holders may hold different counts.
    """

    def __init__(self, rows: torch.Tensor, problem: int | None, holders: tuple[int, ...],
                 offset: int = 0):
        self.rows = rows  # [B, H, G, n, F]
        self.problem = problem
        self.holders = holders  # ranks holding this side of the problem, in order
        self.offset = offset

    @property
    def n(self) -> int:
        return self.rows.shape[3]


def _sorted_positions(bucket, every, holders, me):
    """Global sorted position of each local row within its problem.

    bucket [B, H, G, n] (row order: group, then sequence); every [P, B, H, G, nb]
    the ranks' bucket histograms. Ties in bucket keep the order of the folded
    row index g·N + position, i.e. group, then rank, then local row.
    """
    sel = every[list(holders)]
    per_group = sel.sum(0)  # [B, H, G, nb]
    base = (_excl_cumsum(per_group.sum(2), -1).unsqueeze(2)  # earlier buckets
            + _excl_cumsum(per_group, 2)  # same bucket, earlier groups
            + sel[:holders.index(me)].sum(0))  # same bucket and group, earlier ranks
    perm = torch.argsort(bucket, dim=-1, stable=True)
    sorted_b = bucket.gather(-1, perm)
    n = bucket.shape[-1]
    within = torch.arange(n, device=bucket.device) - _excl_cumsum(every[me], -1).gather(-1, sorted_b)
    within = torch.empty_like(within).scatter_(-1, perm, within)
    return base.gather(-1, bucket) + within


class _Route:
    """Rows sent to other ranks by one all-to-all, and the way back for their results."""

    def __init__(self, dest: torch.Tensor, P: int, group) -> None:
        self.order = torch.argsort(dest, stable=True)
        self.send = torch.bincount(dest, minlength=P).tolist()
        counts = all_to_all([torch.tensor([c], device=dest.device) for c in self.send], [1] * P,
                            group)
        self.recv = [int(c) for c in torch.cat(counts).tolist()]
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [R, F] in local row order -> [R_received, F] in received order."""
        F = x.shape[1]
        pieces = x[self.order].split(self.send)
        out = all_to_all([p.reshape(-1) for p in pieces], [c * F for c in self.recv], self.group)
        return torch.cat(out).reshape(-1, F)

    def backward(self, y: torch.Tensor) -> torch.Tensor:
        """y [R_received, F] in received order -> [R, F] in local row order."""
        F = y.shape[1]
        pieces = y.split(self.recv)
        back = all_to_all([p.reshape(-1) for p in pieces], [c * F for c in self.send], self.group)
        back = torch.cat(back).reshape(-1, F)
        return torch.empty_like(back).index_copy(0, self.order, back)


@dataclass
class _Plan:
    """Block structure of one problem."""

    num_blocks: int
    q_len: int
    k_len: int
    first: list[int]  # first block of each owner (len(owners) + 1 entries)


def _plan(problem: Problem, R: int, M: int, exact: bool, block_size: int) -> _Plan:
    """Blocks of R query rows (groups folded) and M estimator keys."""
    nb = 1 if exact else math.ceil(M / block_size)
    o = len(problem.owners)
    return _Plan(nb, math.ceil(R / nb), math.ceil(M / nb), [-(-i * nb // o) for i in range(o + 1)])


def _owner_of(blocks: torch.Tensor, plan: _Plan, problem: Problem):
    """(owner rank, owner's first block) of each block id."""
    owner_idx = blocks * len(problem.owners) // plan.num_blocks
    owners = torch.tensor(problem.owners, device=blocks.device)
    first = torch.tensor(plan.first, device=blocks.device)
    return owners[owner_idx], first[owner_idx], (first[1:] - first[:-1])[owner_idx]


def _slots(pos, blocks, length, plan, problem, B, H):
    """Destination rank and flat slot [B·H·nbl·length] on it of each row (pos: sorted position)."""
    dest, first, nbl = _owner_of(blocks, plan, problem)
    bh = (torch.arange(B, device=pos.device)[:, None] * H
          + torch.arange(H, device=pos.device)[None, :])
    bh = bh.reshape(B, H, *([1] * (pos.dim() - 2))).expand_as(pos)
    slot = ((bh * nbl + blocks - first) * length + pos - blocks * length)
    return dest.reshape(-1), slot.reshape(-1)


def _row_means(q: _Side, k: _Side, counts, group) -> torch.Tensor:
    """Each problem's mean query row and mean estimator key row over all its ranks'
    rows, [2, Q, B, H, D] in the compute dtype, from one all-reduce of the ranks' row
    sums (``counts`` [2][Q]: the problems' query rows, groups folded, and estimator keys).
    The single process centres each hash call's rows by their own mean
    (attn/common/sortlsh/blocks.lsh_buckets); these are the same means."""
    B, H, D = q.rows.shape[0], q.rows.shape[1], q.rows.shape[-1]
    dtype = compute_dtype(q.rows.dtype)
    sums = torch.zeros(2, len(counts[0]), B, H, D, dtype=dtype, device=q.rows.device)
    with torch.no_grad():
        for i, side in enumerate((q, k)):
            if side.problem is not None and side.n:
                sums[i, side.problem] = side.rows.to(dtype).sum(dim=(2, 3))
        sums = all_reduce_sum(sums, group)
    count = torch.tensor(counts, dtype=dtype, device=sums.device).clamp_min(1)
    return sums / count[:, :, None, None, None]


def _block_round(q: _Side, k: _Side, v_rows, problems, plans, lsh, covered_q, covered_k, *,
                 means, scale, me, P, group, nb_buckets):
    """One hash round: the sortLSH blocks of every problem, computed by their owners.

    ``means`` [2, Q, B, H, D]: :func:`_row_means`, by which each side's rows are centred
    before hashing. Returns (out [B,H,G,n,Dv], lse [B,H,G,n]) for the local queries (empty if none)
    and the block ids of the local query rows [B,H,G,n] and key rows [B,H,1,m].
    """
    B, H, G = q.rows.shape[:3]
    dev = q.rows.device
    buckets, blocks, routes, metas, payloads = [], [], [], [], []
    for i, side in enumerate((q, k)):
        bucket = (lsh_buckets(lsh, side.rows, means[i, side.problem][:, :, None, None])
                  if side.n else  # [B, H, g, n]
                  torch.zeros(side.rows.shape[:4], dtype=torch.long, device=dev))
        hist = torch.zeros(*bucket.shape[:3], nb_buckets, dtype=torch.long, device=dev)
        hist.scatter_add_(-1, bucket, torch.ones_like(bucket))
        every = all_gather(hist, group)  # [P, B, H, g, nb]
        buckets.append((bucket, every))
    plan_of = {id(p): plans[i] for i, p in enumerate(problems)}
    for (bucket, every), side, covered in zip(buckets, (q, k), (covered_q, covered_k)):
        if side.problem is None:
            pos = bucket
            blk = bucket
            dest = torch.zeros(0, dtype=torch.long, device=dev)
            slot = dest
        else:
            problem = problems[side.problem]
            plan = plan_of[id(problem)]
            pos = _sorted_positions(bucket, every, side.holders, me)
            length = plan.q_len if side is q else plan.k_len
            blk = pos // length
            dest, slot = _slots(pos, blk, length, plan, problem, B, H)
        blocks.append(blk)
        route = _Route(dest, P, group)
        meta = torch.stack([slot, *[c.reshape(-1) for c in covered]], dim=1) if dest.numel() \
            else torch.zeros(0, 1 + len(covered), dtype=torch.long, device=dev)
        routes.append(route)
        metas.append(route.forward(meta))
    payloads.append(routes[0].forward(q.rows.reshape(-1, q.rows.shape[-1])))
    kv = torch.cat((k.rows, v_rows.to(k.rows.dtype)), dim=-1)
    payloads.append(routes[1].forward(kv.reshape(-1, kv.shape[-1])))
    # The owner's blocks: at each depth a rank owns blocks of at most one problem.
    mine = [i for i, p in enumerate(problems) if me in p.owners]
    D, Dv = q.rows.shape[-1], v_rows.shape[-1]
    acc = accumulation_dtype(q.rows.dtype)
    if mine and metas[0].shape[0]:
        plan, problem = plans[mine[0]], problems[mine[0]]
        o = problem.owners.index(me)
        nbl = plan.first[o + 1] - plan.first[o]
        qs = _scatter(payloads[0], metas[0][:, 0], B * H * nbl * plan.q_len)
        ks = _scatter(payloads[1], metas[1][:, 0], B * H * nbl * plan.k_len)
        valid = torch.zeros(B * H * nbl * plan.k_len, dtype=torch.bool, device=dev)
        valid[metas[1][:, 0]] = True
        mask = valid.reshape(B, H, nbl, 1, plan.k_len)
        if covered_q:  # pairs in a common block of an earlier round are counted there
            cq = _scatter(metas[0][:, 1:], metas[0][:, 0], B * H * nbl * plan.q_len, fill=-1)
            ck = _scatter(metas[1][:, 1:], metas[1][:, 0], B * H * nbl * plan.k_len, fill=-2)
            cq = cq.reshape(B, H, nbl, plan.q_len, 1, -1)
            ck = ck.reshape(B, H, nbl, 1, plan.k_len, -1)
            mask = mask & ~(cq == ck).any(-1)
        out, lse = partial_attention(
            qs.reshape(B, H, nbl, plan.q_len, D), ks[:, :D].reshape(B, H, nbl, plan.k_len, D),
            ks[:, D:].reshape(B, H, nbl, plan.k_len, Dv), scale=scale, mask=mask)
        res = torch.cat((out.reshape(-1, Dv), lse.reshape(-1, 1)), dim=1)[metas[0][:, 0]]
    else:
        res = torch.zeros(metas[0].shape[0], Dv + 1, dtype=acc, device=dev)
    back = routes[0].backward(res)
    n = q.n
    return (back[:, :Dv].reshape(B, H, G, n, Dv), back[:, Dv].reshape(B, H, G, n),
            blocks[0], blocks[1])


def _scatter(rows: torch.Tensor, slots: torch.Tensor, size: int, fill=0) -> torch.Tensor:
    out = rows.new_full((size, *rows.shape[1:]), fill)
    return out.index_put((slots,), rows)


def _assemble(problems, side_k: _Side, picks, fill_rows, width, *, B, H, group, dtype):
    """The sampled key rows of every problem on every rank: owners fill, all-reduce sums.

    picks[p] : global key index within problem p [B, H, s_p] (-1: none) or None.
    fill_rows(local_index) -> [B, H, s, width] rows of this rank's keys.
    """
    s_max = max((p.shape[-1] for p in picks if p is not None), default=0)
    dev = side_k.rows.device
    buf = torch.zeros(len(problems), B, H, s_max, width, dtype=dtype, device=dev)
    if side_k.problem is not None and picks[side_k.problem] is not None and side_k.n:
        idx = picks[side_k.problem]
        m, start = side_k.n, side_k.offset
        mine = (idx >= start) & (idx < start + m)
        rows = fill_rows((idx - start).clamp(0, m - 1)).to(dtype)
        rows = torch.where(mine.unsqueeze(-1), rows, torch.zeros_like(rows))
        buf = buf.index_put((torch.tensor([side_k.problem], device=dev),),
                            torch.nn.functional.pad(rows, (0, 0, 0, s_max - idx.shape[-1]))[None])
    return all_reduce_sum(buf, group)


def _two_stage_sample(probs_local, side_k: _Side, problems, num, gen, local_gen, *, B, H, me,
                      group):
    """``num`` i.i.d. keys per head of each problem with p_j ∝ probs (no gradient).

    probs_local [B, H, m] for this rank's keys. Stage 1 (shared generator): the
    holder rank of each sample from the all-gathered per-rank masses; stage 2
    (this rank's generator): the key on that rank. Returns per problem the
    global key index [B, H, num_p] and, on this rank, the log weights of its
    picks (zeros elsewhere, summed by the caller's all-reduce).
    """
    dev = probs_local.device
    mass = torch.zeros(B, H, dtype=probs_local.dtype, device=dev)
    if side_k.problem is not None:
        mass = probs_local.sum(-1)
    masses = all_gather(mass, group)  # [P, B, H]
    picks, logw = [], []
    for i, problem in enumerate(problems):
        if num[i] == 0:
            picks.append(None)
            logw.append(None)
            continue
        hm = masses[list(problem.k_ranks)].permute(1, 2, 0)  # [B, H, h]
        total = hm.sum(-1, keepdim=True)
        which = torch.multinomial(hm.reshape(B * H, -1), num[i], replacement=True,
                                  generator=gen).reshape(B, H, num[i])
        idx = torch.full((B, H, num[i]), -1, dtype=torch.long, device=dev)
        lw = torch.zeros(B, H, num[i], dtype=probs_local.dtype, device=dev)
        if side_k.problem == i and side_k.n:
            m = side_k.n
            h = problem.k_ranks.index(me)
            local = torch.multinomial(probs_local.reshape(B * H, m), num[i], replacement=True,
                                      generator=local_gen).reshape(B, H, num[i])
            here = which == h
            idx = torch.where(here, side_k.offset + local, idx)
            p = probs_local.gather(-1, local) / total
            lw = torch.where(here, -torch.log(num[i] * p), lw)
        # Every rank needs every pick: the holders' indices and weights, summed.
        idx = all_reduce_sum(torch.where(idx >= 0, idx + 1, 0), group) - 1
        lw = all_reduce_sum(lw, group)
        picks.append(idx)
        logw.append(lw)
    return picks, logw


def _sample_rows(problems, kside, v_rows, picks, blk_k_rounds, *, B, H, group, acc):
    """Assemble the sampled keys, values, log weights and block ids on every rank."""
    D, Dv = kside.rows.shape[-1], v_rows.shape[-1]
    rounds = len(blk_k_rounds)

    def rows(local):
        k = kside.rows[:, :, 0].gather(2, local.unsqueeze(-1).expand(*local.shape, D))
        v = v_rows[:, :, 0].gather(2, local.unsqueeze(-1).expand(*local.shape, Dv))
        ids = [b[:, :, 0].gather(2, local).to(k.dtype) for b in blk_k_rounds]
        return torch.cat((k, v.to(k.dtype), *[i.unsqueeze(-1) for i in ids]), dim=-1)

    # Block ids travel as floats: exact below 2**24 blocks.
    buf = _assemble(problems, kside, picks, rows, D + Dv + rounds, B=B, H=H, group=group,
                    dtype=acc)
    return buf[..., :D], buf[..., D:D + Dv], buf[..., D + Dv:].round().long()


def _local_side(x, problem_idx, problems, attr):
    if problem_idx is None:
        return _Side(x[..., :0, :], None, ())
    return _Side(x, problem_idx, getattr(problems[problem_idx], attr))


def _problem_of(problems, me, attr):
    found = [i for i, p in enumerate(problems) if me in getattr(p, attr)]
    return found[0] if found else None


def _noncausal_level(qg, k, v, problems, *, method, config, scale, seed, tag, window, group):
    """The problems of one depth (disjoint rank sets), on every rank.

    qg [B, H, G, n, D] this rank's queries, k/v [B, H, m, ·] its keys. In each
    problem the first ``config.sink`` and last ``window`` keys of its key range
    are attended exactly by all its queries and the estimator runs on the
    others (attn/common/causal.py's ``approximate_or_exact``). Returns
    (out [B, H, G, n, Dv], lse [B, H, G, n]) of this rank's queries in its
    q-problem, or None when it holds none at this depth.
    """
    P, me = group_size(group), group_rank(group)
    B, H, G, n, D = qg.shape
    m = k.shape[2]
    dev = qg.device
    acc = accumulation_dtype(qg.dtype)
    gen = _derived(seed, tag, device=dev)
    local_gen = _derived(seed, tag, 1 + me, device=dev)
    qi, ki = _problem_of(problems, me, "q_ranks"), _problem_of(problems, me, "k_ranks")
    # Per problem: its always-exact keys (first, last), its estimator's key count, and whether
    # the whole problem is exact instead (short, one block, or a sample of every key).
    nums, exact, ends, sizes = [], [], [], []
    for p in problems:
        M = m * len(p.k_ranks)
        first = min(config.sink, M)
        last = min(window, M - first)
        est = M - first - last
        s = config.num_samples(est) if method == "hyper" else config.sample_size
        whole = (M <= config.min_seq_len or est <= 0 or s >= est
                 or math.ceil(est / config.block_size) == 1)
        if whole:
            first, last, est = 0, 0, M
        exact.append(whole)
        nums.append(0 if whole else s)
        ends.append((first, last))
        sizes.append(est)
    plans = [_plan(p, G * n * len(p.q_ranks), est, e, config.block_size)
             for p, est, e in zip(problems, sizes, exact)]
    qside = _local_side(qg, qi, problems, "q_ranks")
    if ki is None:
        kside, lo, hi = _Side(k.unsqueeze(2)[..., :0, :], None, ()), 0, 0
    else:  # this rank's keys among the problem's estimator keys
        problem, (first, last) = problems[ki], ends[ki]
        M, start = m * len(problem.k_ranks), problem.k_ranks.index(me) * m
        lo = min(max(first - start, 0), m)
        hi = max(min(M - last - start, m), lo)
        kside = _Side(k.unsqueeze(2)[..., lo:hi, :], ki, problem.k_ranks,
                      min(max(start, first), M - last) - first)
    vrows = v.unsqueeze(2)[..., lo:hi, :]
    means = _row_means(qside, kside, [[G * n * len(p.q_ranks) for p in problems], sizes], group)
    rounds = config.hash_rounds if method == "hyper" else 1
    parts, blk_q, blk_k = [], [], []
    for _ in range(rounds):
        lsh = AngularLSH(D, config.lsh_bits, generator=gen).to(dev)
        out, lse, bq, bk = _block_round(qside, kside, vrows, problems, plans, lsh, blk_q, blk_k,
                                        means=means, scale=scale, me=me, P=P, group=group,
                                        nb_buckets=lsh.n_buckets)
        parts.append((out, lse))
        blk_q.append(bq)
        blk_k.append(bk)
    if method == "kde":
        picks, logw = _kde_samples(qside, kside, vrows, problems, nums, parts[0][1], blk_q[0],
                                   blk_k[0], scale=scale, config=config, gen=gen,
                                   local_gen=local_gen, n=n, sizes=sizes, B=B, H=H, me=me,
                                   group=group)
    else:
        picks, logw = _hyper_samples(kside, vrows, problems, nums, config, gen, local_gen,
                                     sizes=sizes, B=B, H=H, me=me, group=group)
    widths = [first + last for first, last in ends]
    if any(widths):  # the always-exact keys, assembled on every rank by one all-reduce
        kv = torch.cat((k, v.to(k.dtype)), dim=-1).to(acc)
        buf = [kv.new_zeros(B, H, max(widths), kv.shape[-1]) for _ in problems]
        if ki is not None and widths[ki]:
            first, last = ends[ki]
            M, start = m * len(problems[ki].k_ranks), problems[ki].k_ranks.index(me) * m
            g = start + torch.arange(m, device=dev)
            keep = (g < first) | (g >= M - last)
            slot = torch.where(g < first, g, first + g - (M - last))[keep]
            buf[ki] = buf[ki].index_copy(2, slot, kv[:, :, keep])
        buf = all_reduce_sum(torch.stack(buf), group)
        if qi is not None and widths[qi]:
            ke = buf[qi, :, :, :widths[qi]]
            out, lse = partial_attention(qside.rows.reshape(B, H, G * n, D), ke[..., :D],
                                         ke[..., D:], scale=scale)
            parts.append((out.reshape(B, H, G, n, -1), lse.reshape(B, H, G, n)))
    if any(p is not None for p in picks):
        ks, vs, ids = _sample_rows(problems, kside, vrows, picks, blk_k, B=B, H=H, group=group,
                                   acc=acc)
        if qi is not None and picks[qi] is not None:
            s = picks[qi].shape[-1]
            ks, vs, ids, lw = ks[qi, :, :, :s], vs[qi, :, :, :s], ids[qi, :, :, :s], logw[qi]
            rows = qside.rows.reshape(B, H, G * n, D)
            seen = torch.zeros(B, H, G * n, s, dtype=torch.bool, device=dev)
            for t, bq in enumerate(blk_q):
                seen |= bq.reshape(B, H, G * n, 1) == ids[..., t].unsqueeze(-2)
            out, lse = partial_attention(rows, ks, vs, scale=scale, mask=~seen,
                                         key_log_weights=lw)
            parts.append((out.reshape(B, H, G, n, -1), lse.reshape(B, H, G, n)))
    return merge_many(parts) if qi is not None else None


def _hyper_samples(kside, vrows, problems, nums, config, gen, local_gen, *, sizes, B, H, me,
                   group):
    dev = vrows.device
    if config.sampling == "uniform":
        picks, logw = [], []
        for M, s in zip(sizes, nums):
            if s == 0:
                picks.append(None)
                logw.append(None)
                continue
            idx, w = uniform_sample(M, s, batch_shape=(B, H), device=dev, generator=gen)
            picks.append(idx)
            logw.append(w.log())
        return picks, logw
    with torch.no_grad():  # p_j ∝ ‖v_j‖ mixed half-and-half with uniform (attn/hyper/naive.py)
        acc = accumulation_dtype(vrows.dtype)
        vf = vrows[:, :, 0].to(acc)
        Q = len(problems)
        scale_buf = torch.zeros(Q, B, H, dtype=acc, device=dev)
        if kside.problem is not None:
            scale_buf[kside.problem] = vf.abs().amax(dim=(-2, -1))
        vmax = all_reduce_max(scale_buf, group)
        norms = torch.linalg.vector_norm(vf / vmax[kside.problem or 0][..., None, None].clamp_min(
            1e-30), dim=-1)
        tot = torch.zeros(Q, B, H, dtype=acc, device=dev)
        if kside.problem is not None:
            tot[kside.problem] = norms.sum(-1)
        tot = all_reduce_sum(tot, group)
        probs = norms.new_zeros(norms.shape)
        if kside.problem is not None:
            probs = 0.5 / sizes[kside.problem] + 0.5 * norms / tot[kside.problem][..., None].clamp_min(1e-30)
        return _two_stage_sample(probs, kside, problems, nums, gen, local_gen, B=B, H=H,
                                 me=me, group=group)


def _kde_samples(qside, kside, vrows, problems, nums, lse_blocks, blk_q, blk_k, *, scale, config,
                 gen, local_gen, n, sizes, B, H, me, group):
    """KDEformer's AMM distribution (attn/kde/naive.py) over the sharded keys, then the draw."""
    dev = vrows.device
    acc = lse_blocks.dtype
    Q = len(problems)
    G, D = qside.rows.shape[2], qside.rows.shape[-1]
    nq, mk = qside.n, kside.n  # this rank's rows at this depth (0 or n, 0 or m)
    with torch.no_grad():
        # Row KDE: blocks (exact, at home) + uniformly sampled keys of the problem.
        picks, logw = [], []
        for M, s in zip(sizes, nums):
            if s == 0:
                picks.append(None)
                logw.append(None)
                continue
            idx, w = uniform_sample(M, min(config.kde_samples, M), batch_shape=(B, H),
                                    device=dev, generator=gen)
            picks.append(idx)
            logw.append(w.log().to(acc))
        if all(p is None for p in picks):
            return picks, logw
        ku, _, idu = _sample_rows(problems, kside, vrows, picks, [blk_k], B=B, H=H,
                                  group=group, acc=acc)
        qa = qside.rows.reshape(B, H, G * nq, D).to(acc)
        log_d = torch.zeros(B, H, G * nq, dtype=acc, device=dev)
        qi = qside.problem
        if qi is not None and picks[qi] is not None:
            s = picks[qi].shape[-1]
            keep = blk_q.reshape(B, H, G * n, 1) != idu[qi, :, :, :s, 0].unsqueeze(-2)
            sc = torch.matmul(qa, ku[qi, :, :, :s].transpose(-1, -2)) * scale + \
                logw[qi].unsqueeze(-2)
            lse_rest = torch.logsumexp(sc.masked_fill(~keep, float("-inf")), dim=-1)
            log_d = torch.logaddexp(lse_blocks.reshape(B, H, G * n).to(acc), lse_rest)
        # Column KDE: uniformly sampled query rows of the problem, gathered by all-reduce.
        rows_pick = []
        for p, s in zip(problems, nums):
            if s == 0:
                rows_pick.append(None)
                continue
            R = G * n * len(p.q_ranks)
            r, _ = uniform_sample(R, min(config.kde_samples, R), batch_shape=(B, H), device=dev,
                                  generator=gen)
            rows_pick.append(r)
        Sq = max(r.shape[-1] for r in rows_pick if r is not None)
        buf = torch.zeros(Q, B, H, Sq, D + 2, dtype=acc, device=dev)
        if qi is not None and rows_pick[qi] is not None:
            r = rows_pick[qi]
            N = n * len(problems[qi].q_ranks)
            g, pos = r // N, r % N
            h = problems[qi].q_ranks.index(me)
            here = (pos >= h * n) & (pos < (h + 1) * n)
            folded = g * n + (pos - h * n).clamp(0, n - 1)
            vals = torch.cat((qa.gather(2, folded.unsqueeze(-1).expand(*folded.shape, D)),
                              log_d.gather(2, folded).unsqueeze(-1),
                              blk_q.reshape(B, H, G * n).gather(2, folded).to(acc).unsqueeze(-1)),
                             dim=-1)
            vals = torch.where(here.unsqueeze(-1), vals, torch.zeros_like(vals))
            buf[qi, :, :, :r.shape[-1]] = vals
        buf = all_reduce_sum(buf, group)
        kidx = kside.problem
        log_c = torch.full((B, H, mk), float("-inf"), dtype=acc, device=dev)
        if kidx is not None and rows_pick[kidx] is not None:
            sq = rows_pick[kidx].shape[-1]
            q_rows, ld, bid = (buf[kidx, :, :, :sq, :D], buf[kidx, :, :, :sq, D],
                               buf[kidx, :, :, :sq, D + 1].round().long())
            ka = kside.rows[:, :, 0].to(acc)
            s2 = 2 * torch.matmul(q_rows, ka.transpose(-1, -2)) * scale - 2 * ld.unsqueeze(-1)
            same = bid.unsqueeze(-1) == blk_k.reshape(B, H, 1, mk)
            log_c = torch.logsumexp(s2.masked_fill(same, float("-inf")), dim=-2)
        # softmax of log_c over all keys of the problem, and the value-norm part.
        va = vrows[:, :, 0].to(acc)
        loc = torch.zeros(3, Q, B, H, dtype=acc, device=dev)
        if kidx is not None:
            finite_max = log_c.amax(-1)
            loc[0, kidx] = torch.where(torch.isfinite(finite_max), finite_max,
                                       torch.finfo(acc).min)
            loc[1, kidx] = va.abs().amax(dim=(-2, -1))
        mx = all_reduce_max(loc[:2], group)
        col = torch.zeros(B, H, mk, dtype=acc, device=dev)
        vnorm = torch.zeros(B, H, mk, dtype=acc, device=dev)
        if kidx is not None:
            e = torch.exp(log_c - mx[0, kidx][..., None])
            c = mx[1, kidx].clamp_min(1.0)[..., None, None]
            vnorm = torch.linalg.vector_norm(va / c, dim=-1) ** 2 + c.squeeze(-1) ** -2
            loc[2, kidx] = e.sum(-1)
            col = e
        sums = torch.zeros(2, Q, B, H, dtype=acc, device=dev)
        if kidx is not None:
            sums[0, kidx] = loc[2, kidx]
            sums[1, kidx] = vnorm.sum(-1)
        sums = all_reduce_sum(sums, group)
        probs = col
        if kidx is not None:
            z = sums[0, kidx][..., None]
            col = torch.where(z > 0, col / z.clamp_min(torch.finfo(acc).tiny), 0.0)
            probs = 0.5 * col + 0.5 * vnorm / sums[1, kidx][..., None]
        return _two_stage_sample(probs, kside, problems, nums, gen, local_gen, B=B, H=H,
                                 me=me, group=group)


def sortlsh_context_parallel(q, k, v, *, method, is_causal, scale, config, generator,
                             group=None):
    """This rank's rows of HyperAttention / KDEformer over the sharded sequence.

    q [B, Hq, n, D], k [B, Hkv, m, D], v [B, Hkv, m, Dv] (contiguous shards,
    validated by the caller; causal needs n == m). Returns ``(out, lse)`` in the
    accumulation dtype.
    """
    if config.lsh_bits > MAX_LSH_BITS:
        raise ValueError(f"lsh_bits must be <= {MAX_LSH_BITS} for context parallelism (dense "
                         f"bucket histograms), got {config.lsh_bits}")
    P = group_size(group)
    B, Hq, n, D = q.shape
    Hkv, m = k.shape[1], k.shape[2]
    N, M = P * n, P * m
    from ..attn.common.causal import recursion_is_exact

    if (is_causal and recursion_is_exact(N, M, config.min_seq_len)) or (
            not is_causal and M <= config.min_seq_len):
        warn_exact_fallback(method, f"min_seq_len={config.min_seq_len} covers "
                            f"{'every block of the causal recursion' if is_causal else 'the keys'}"
                            " (context parallel: ring attention)")
        return ring_attention(q, k, v, is_causal=is_causal, scale=scale, group=group)
    if is_causal and q.device.type == "cpu" and N < CONTEXT_PARALLEL_CPU_BREAK_EVEN:
        warn_no_speedup(method, f"causal on CPU below {CONTEXT_PARALLEL_CPU_BREAK_EVEN} queries "
                        "(context parallel: ring attention is faster)")
    dev = q.device
    seed = int(torch.randint(2**62, (), generator=generator,
                             device=generator.device if generator is not None else dev.type))
    qg = fold_groups(q, Hkv).reshape(B, Hkv, Hq // Hkv, n, D)
    everyone = tuple(range(P))
    levels = causal_levels(P) if is_causal else [[Problem(everyone, everyone, everyone)]]
    parts = []
    for depth, problems in enumerate(levels):
        res = _noncausal_level(qg, k, v, problems, method=method, config=config, scale=scale,
                               seed=seed, tag=1 + depth,
                               window=config.window if is_causal else 0, group=group)
        if res is not None:
            out, lse = res
            parts.append((unfold_groups(out.reshape(B, Hkv, -1, out.shape[-1]), Hq),
                          unfold_groups(lse.reshape(B, Hkv, -1), Hq)))
    if is_causal:  # the diagonal: the single-process causal method on this rank's shard
        with warnings.catch_warnings():  # the leaf's own warnings are about its shard only
            warnings.simplefilter("ignore", ExactFallbackWarning)
            warnings.simplefilter("ignore", NoSpeedupWarning)
            leaf = get_method(method).forward(q, k, v, is_causal=True, scale=scale,
                                              config=config, need_lse=True,
                                              generator=_derived(seed, 0, device=dev))
        acc = accumulation_dtype(q.dtype)
        parts.append((leaf[0].to(acc), leaf[1].to(acc)))
    return merge_many(parts)
