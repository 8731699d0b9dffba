"""LevAttention's universal set: leverage scores of ``K^{⊗p/2}``, one-shot and streaming.

For ``|x|^p`` attention (p = 2t even), every key j with attention >= ε for ANY
query has leverage score τ_j >= ε, and Σ τ_j = rank <= d^t, so
``U = {j : τ_j >= ε}`` holds at most rank/ε keys (the paper's main theorem).
Theory, streaming argument and measured limits: docs/lev.md.
"""

from __future__ import annotations

import itertools
import math

import torch

from ..._checks import check_float, check_generator, check_int, check_same, check_tensor
from ...sketch.leverage import leverage_scores_from_gram, leverage_scores_from_kernel
from ...sketch.tensor import PolySketch
from ..common.gqa import gather_rows
from ..common.merge import accumulation_dtype
from .config import EXACT_SIZE_LIMIT, check_p


def symmetric_power_features(x: torch.Tensor, t: int) -> torch.Tensor:
    """Exact features of the degree-t polynomial kernel on the symmetric tensors.

    ``φ(x)_α = sqrt(t! / Π_i α_i!) Π_i x_i^{α_i}`` over the multisets α of size
    t from ``{0..d-1}``, so ``<φ(x), φ(y)> = <x, y>^t`` with
    ``C(d + t - 1, t)`` coordinates instead of ``d^t``.

    Parameters
    ----------
    x : [..., d] float; t : int >= 1.

    Returns
    -------
    [..., C(d + t - 1, t)] in x's dtype.
    """
    d = x.shape[-1]
    if t == 1:
        return x
    combos = torch.tensor(list(itertools.combinations_with_replacement(range(d), t)),
                          device=x.device)  # [F, t]
    counts = torch.nn.functional.one_hot(combos, d).sum(dim=1)  # [F, d]
    log_coef = math.lgamma(t + 1) - torch.lgamma(counts.double() + 1).sum(dim=-1)
    coef = torch.exp(0.5 * log_coef).to(x.dtype)
    return x[..., combos].prod(dim=-1) * coef


class _PowerFeatures:
    """φ(x) with <φ(x), φ(y)> = <x, y>^t: identity, exact symmetric power, or PolySketch."""

    def __init__(self, d: int, t: int, sketch_size: int | None, seed: int, device) -> None:
        self.t = t
        self.seed = seed
        self.sketch = None
        if t > 1 and sketch_size is not None:
            self.sketch = PolySketch(d, sketch_size, t, kind="gaussian", seed=seed).to(device)
        elif _exact_size(d, t) > EXACT_SIZE_LIMIT:
            raise ValueError(
                f"sketch_size must be given for p={2 * t} with key dimension d={d}: exact streaming "
                f"scores need a {_exact_size(d, t)} x {_exact_size(d, t)} Gram of K^(⊗{t}) "
                f"(> EXACT_SIZE_LIMIT = {EXACT_SIZE_LIMIT}), got sketch_size=None"
            )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.sketch is not None:
            return self.sketch(x)
        return symmetric_power_features(x, self.t)


def score_dtype(dtype: torch.dtype, p: int) -> torch.dtype:
    """Dtype of the selection scores: float32 (float64 for float64 keys) for p = 2, float64 for p >= 4.

    The Gram of ``K^{⊗t}`` squares the condition number of the tensor-power
    features, whose smallest singular values fall far below float32 rounding
    for t >= 2 (the scores of a float32 computation can be off by O(1)).
    """
    return accumulation_dtype(dtype) if p == 2 else torch.float64


def _exact_size(d: int, t: int) -> int:
    """Number of exact symmetric tensor-power features C(d + t - 1, t)."""
    return math.comb(d + t - 1, t)


def _choose(score, pos, *, eps, budget, beyond):
    """Which candidates to keep, given their scores [..., m] and positions [..., m] (-1: padding).

    Threshold mode keeps every score >= eps; budget mode the ``budget`` best.
    Returns ``(order, kept)`` [..., S]: indices into the last axis in position
    order, and whether each slot holds a key (False: padding). ``beyond``
    exceeds every position (it shifts the dropped keys behind the kept ones).
    """
    valid = pos >= 0
    if eps is not None:
        # Scores are computed in floating point: keep a relative slack of sqrt(machine eps)
        # so a key whose exact score is eps is never lost to rounding.
        slack = math.sqrt(torch.finfo(score.dtype).eps)
        keep = valid & (score >= eps * (1 - slack))
        size = int(keep.sum(-1).max()) if keep.numel() else 0
        order = torch.where(keep, pos, pos + beyond).topk(size, dim=-1, largest=False).indices
    else:  # top-budget scores, then in position order: O(m + budget log budget)
        keep = valid
        ranked = torch.where(valid, score, torch.full_like(score, -1.0))
        top = ranked.topk(min(budget, score.shape[-1]), dim=-1).indices
        top_pos = pos.gather(-1, top)
        top_pos = torch.where(valid.gather(-1, top), top_pos, top_pos + beyond)
        order = top.gather(-1, top_pos.argsort(dim=-1))
    return order, keep.gather(-1, order)


class LevSelector:
    """Streaming / parallel selection of LevAttention's universal set.

    Feed key blocks with :meth:`update` (memory independent of the stream
    length: the ``F x F`` Gram of the features plus the current candidates),
    combine shards with :meth:`merge` (Grams are summed; the other shard's
    keys follow this one's in position order) and read the set with
    :meth:`select`. In threshold mode (``eps``) the result equals the
    one-pass universal set exactly; in budget mode it keeps the ``budget``
    keys of largest score w.r.t. the current Gram (see the module docstring).

    Parameters
    ----------
    p : even int in [2, 64].
    eps : threshold in (0, 1]; give exactly one of ``eps`` and ``budget``.
    budget : int >= 1, keys kept per head.
    ridge : relative ridge (see :class:`LevConfig`).
    sketch_size : PolySketch feature size for p >= 4, at most EXACT_SIZE_LIMIT
        (None: exact features).
    seed : seed of the PolySketch; shards to be merged must share it.

    Attributes
    ----------
    gram : [B, H, F, F] accumulated Gram (see :func:`score_dtype`). It is kept
        as the Gram of the features of ``k / key_scale``, ``key_scale`` [B, H]
        the largest |entry| of the keys seen per head: leverage scores do not
        change when the keys are scaled, and keys of any finite magnitude then
        neither overflow nor underflow it (keys times 1e20 overflowed, times
        1e-30 underflowed).
    num_seen : keys seen so far (positions 0 .. num_seen - 1).
    keys, values, positions : the current candidates, [B, H, S, D],
        [B, H, S, Dv] (when values were given) and [B, H, S] int64 with -1 in
        padded slots (heads may keep different counts in threshold mode).
    """

    def __init__(
        self,
        *,
        p: int = 2,
        eps: float | None = None,
        budget: int | None = None,
        ridge: float = 0.0,
        sketch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        self.p = check_p(p)
        if (eps is None) == (budget is None):
            raise ValueError(f"give exactly one of eps and budget, got eps={eps!r}, budget={budget!r}")
        self.eps = None if eps is None else check_float("eps", eps, min=0.0, max=1.0,
                                                        min_exclusive=True)
        self.budget = None if budget is None else check_int("budget", budget, min=1)
        self.ridge = check_float("ridge", ridge, min=0.0)
        self.sketch_size = None if sketch_size is None else check_int(
            "sketch_size", sketch_size, min=1, max=EXACT_SIZE_LIMIT)
        self.seed = check_int("seed", seed, min=0, max=2**64 - 1)
        self.key_scale: torch.Tensor | None = None
        self._gram: torch.Tensor | None = None  # Gram of the features of k / key_scale
        self.num_seen = 0
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self._features: _PowerFeatures | None = None

    # -- public API -------------------------------------------------------------------------

    def update(self, k_block: torch.Tensor, v_block: torch.Tensor | None = None) -> LevSelector:
        """Add a block of keys [B, H, m, D] (and optionally their values [B, H, m, Dv])."""
        self._check_block(k_block, v_block)
        return self._update(k_block, v_block)

    def merge(self, other: LevSelector) -> LevSelector:
        """Fold another shard's selector into this one (its stream follows this one's)."""
        if not isinstance(other, LevSelector):
            raise TypeError(f"other must be a LevSelector, got {type(other).__name__}")
        mine = (self.p, self.eps, self.budget, self.ridge, self.sketch_size, self.seed)
        theirs = (other.p, other.eps, other.budget, other.ridge, other.sketch_size, other.seed)
        if mine != theirs:
            raise ValueError(
                "other must have the same (p, eps, budget, ridge, sketch_size, seed) as this "
                f"selector {mine}, got {theirs}"
            )
        if other._gram is None:
            return self
        if self._gram is None:
            self.__dict__.update({k: v for k, v in other.__dict__.items()})
            return self
        # Either shard may hold no candidate (threshold mode): shapes, dtype and device only.
        mine_k, other_k = self.keys, other.keys
        if other_k.shape[:2] != mine_k.shape[:2] or other_k.shape[-1] != mine_k.shape[-1]:
            raise ValueError(f"other must hold keys of shape [{mine_k.shape[0]}, "
                             f"{mine_k.shape[1]}, S, {mine_k.shape[-1]}] like this selector, "
                             f"got {list(other_k.shape)}")
        check_same(("this selector's keys", "other's keys"), (mine_k, other_k))
        if (other.values is None) != (self.values is None):
            raise ValueError("other must hold values if and only if this selector does")
        self._raise_scale(other.key_scale)
        ratio = other.key_scale / self._safe_scale()
        self._gram = self._gram + other._gram * (ratio ** self.p)[..., None, None]
        pos = torch.where(other.positions >= 0, other.positions + self.num_seen, other.positions)
        self.num_seen += other.num_seen
        self._absorb(other.keys, other.values, pos)
        return self

    def select(self) -> torch.Tensor:
        """Indices [B, H, S] of the selected keys, ascending, padded with -1 at the end."""
        if self.positions is None:
            raise ValueError("select() needs at least one update(k_block) first, got none")
        return self.positions

    def scores(self, k: torch.Tensor) -> torch.Tensor:
        """Scores [B, H, m] of keys [B, H, m, D] w.r.t. the accumulated Gram (ridge included)."""
        if self._gram is None:
            raise ValueError("scores() needs at least one update(k_block) first, got none")
        check_tensor("k", k, ndim=4)
        if k.shape[:2] != self.keys.shape[:2] or k.shape[-1] != self.keys.shape[-1]:
            raise ValueError(f"k must have shape [{self.keys.shape[0]}, {self.keys.shape[1]}, m, "
                             f"{self.keys.shape[-1]}] like the streamed keys, got {list(k.shape)}")
        check_same(("streamed keys", "k"), (self.keys, k))
        return self._scores(k)

    @property
    def gram(self) -> torch.Tensor | None:
        """[B, H, F, F] the accumulated Gram of the keys' features (None before any update)."""
        if self._gram is None:
            return None
        return self._gram * (self.key_scale ** self.p)[..., None, None]

    # -- internals --------------------------------------------------------------------------

    def _update(self, k_block: torch.Tensor, v_block: torch.Tensor | None) -> LevSelector:
        with torch.no_grad():
            acc = score_dtype(k_block.dtype, self.p)
            if self._features is None:
                self._features = _PowerFeatures(k_block.shape[-1], self.p // 2, self.sketch_size,
                                                self.seed, k_block.device)
            x = k_block.detach().to(acc)
            self._raise_scale(x.abs().amax(dim=(-2, -1)))
            phi = self._features(x / self._safe_scale()[..., None, None])
            block_gram = phi.transpose(-1, -2) @ phi
            self._gram = block_gram if self._gram is None else self._gram + block_gram
        m = k_block.shape[2]
        pos = torch.arange(self.num_seen, self.num_seen + m, device=k_block.device)
        pos = pos.expand(*k_block.shape[:2], m)
        self.num_seen += m
        self._absorb(k_block.detach(), None if v_block is None else v_block.detach(), pos)
        return self

    def _safe_scale(self) -> torch.Tensor:
        """key_scale with 1 for heads whose keys were all 0."""
        return torch.where(self.key_scale > 0, self.key_scale, torch.ones_like(self.key_scale))

    def _raise_scale(self, peak: torch.Tensor) -> None:
        """key_scale := max(key_scale, peak) per head, the Gram rescaled to match (degree p)."""
        if self.key_scale is None:
            self.key_scale = peak
            return
        new = torch.maximum(self.key_scale, peak)
        if self._gram is not None:
            ratio = self.key_scale / torch.where(new > 0, new, torch.ones_like(new))
            self._gram = self._gram * (ratio ** self.p)[..., None, None]
        self.key_scale = new

    def _scores(self, k: torch.Tensor) -> torch.Tensor:
        if k.shape[-2] == 0:  # no candidate (threshold mode)
            return torch.zeros(k.shape[:-1], dtype=self._gram.dtype, device=k.device)
        with torch.no_grad():
            x = k.detach().to(self._gram.dtype)
            phi = self._features(x / self._safe_scale().to(x.dtype)[..., None, None])
            gram = self._gram
            if self.ridge > 0:
                dim = gram.shape[-1]
                trace = gram.diagonal(dim1=-2, dim2=-1).sum(-1)
                lam = (self.ridge * trace / dim)[..., None, None]
                gram = gram + lam * torch.eye(dim, dtype=gram.dtype, device=gram.device)
            return leverage_scores_from_gram(phi, gram)

    def _check_block(self, k, v) -> None:
        check_tensor("k_block", k, ndim=4)
        if v is not None:
            check_tensor("v_block", v, ndim=4)
            check_same(("k_block", "v_block"), (k, v))
            if v.shape[:3] != k.shape[:3]:
                raise ValueError(f"v_block must have shape [B, H, m, Dv] with [B, H, m] = "
                                 f"{list(k.shape[:3])} like k_block, got {list(v.shape)}")
        if self.keys is not None:
            if k.shape[:2] != self.keys.shape[:2] or k.shape[-1] != self.keys.shape[-1]:
                raise ValueError(
                    f"k_block must have shape [{self.keys.shape[0]}, {self.keys.shape[1]}, m, "
                    f"{self.keys.shape[-1]}] like the earlier blocks, got {list(k.shape)}"
                )
            check_same(("earlier keys", "k_block"), (self.keys, k))
            if (v is None) != (self.values is None):
                raise ValueError("v_block must be given for every block or for none, got a mix")

    def _absorb(self, k, v, pos) -> None:
        """Candidates := best of (current candidates ∪ new keys) w.r.t. the current Gram."""
        if self.keys is not None:
            k = torch.cat((self.keys, k), dim=2)
            pos = torch.cat((self.positions, pos), dim=2)
            if v is not None:
                v = torch.cat((self.values, v), dim=2)
        order, kept = _choose(self._scores(k), pos, eps=self.eps, budget=self.budget,
                              beyond=self.num_seen + 1)
        self.positions = torch.where(kept, pos.gather(-1, order), -1)
        self.keys = gather_rows(k, order)
        self.values = None if v is None else gather_rows(v, order)


def universal_set(
    k: torch.Tensor,
    p: int = 2,
    eps: float | None = None,
    budget: int | None = None,
    *,
    ridge: float = 0.0,
    sketch_size: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """LevAttention's universal key set of each head.

    Parameters
    ----------
    k : [B, H, M, D] keys (any float dtype; scores in :func:`score_dtype`).
    p : even int >= 2, the exponent of ``|x|^p`` attention.
    eps : keep every key whose leverage score (of ``K^{⊗p/2}``) is >= eps; for
        every query, every ``|x|^p`` attention entry >= eps has its key here,
        and the set has at most ``rank/eps <= d^{p/2}/eps`` keys.
    budget : instead of eps, keep the ``budget`` keys of largest score.
    ridge, sketch_size : see :class:`LevSelector`. Without sketch_size,
        p >= 4 and M below the feature count ``F = C(d + p/2 - 1, p/2)``, the
        scores come from the M x M kernel ``(KKᵀ)^{∘p/2}`` instead of the
        F x F Gram (same scores, less work).
    generator : source of the PolySketch when ``sketch_size`` is used with
        p >= 4 (torch's global generator when None); not used otherwise.

    Returns
    -------
    int64 [B, H, S]: indices ascending, padded with -1 at the end where heads
    keep fewer than S keys (threshold mode); S = min(budget, M) in budget mode.

    References
    ----------
    Kannan, Bhattacharyya, Kacham, Woodruff. LevAttention: Time, Space, and
    Streaming Efficient Algorithm for Heavy Attentions, arXiv 2410.05462.
    """
    check_generator(generator)
    seed = 0
    if sketch_size is not None and p > 2:
        seed = int(torch.randint(2**62, (), generator=generator,
                                 device=generator.device if generator is not None else "cpu"))
    selector = LevSelector(p=p, eps=eps, budget=budget, ridge=ridge, sketch_size=sketch_size,
                           seed=seed)
    check_tensor("k", k, ndim=4)
    t, (M, d) = p // 2, k.shape[-2:]
    if t == 1 or sketch_size is not None or M >= _exact_size(d, t):
        return selector._update(k, None).select()  # k checked above
    if M > EXACT_SIZE_LIMIT:
        raise ValueError(
            f"sketch_size must be given for p={p}, d={d} and M={M} keys: exact scores need an "
            f"eigendecomposition of size min(M, C(d+{t - 1}, {t})) = {min(M, _exact_size(d, t))} "
            f"(> EXACT_SIZE_LIMIT = {EXACT_SIZE_LIMIT}), got sketch_size=None"
        )
    with torch.no_grad():
        x = k.detach().to(score_dtype(k.dtype, p))
        # Leverage scores are scale invariant: unit largest |entry| keeps <k, k'>^t in range.
        x = x / x.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
        kernel = (x @ x.transpose(-1, -2)) ** t  # ΦΦᵀ for Φ = K^{⊗t}
        if ridge > 0:  # the Gram route's λ = ridge · tr(G) / F, as a rescaling of the kernel
            trace = kernel.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(torch.finfo(x.dtype).tiny)
            kernel = kernel * (_exact_size(d, t) / trace)[..., None, None]
        score = leverage_scores_from_kernel(kernel, ridge=ridge)
    pos = torch.arange(M, device=k.device).expand(*k.shape[:2], M)
    order, kept = _choose(score, pos, eps=eps, budget=budget, beyond=M + 1)
    return torch.where(kept, order, -1)


