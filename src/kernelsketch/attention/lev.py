"""LevAttention (Kannan, Bhattacharyya, Kacham, Woodruff; arXiv 2410.05462).

**Universal set.** For ``f(x) = |x|^p`` the attention entry of query ``q`` on
key ``k_j`` is ``A_j(q) = |<q, k_j>|^p / Σ_l |<q, k_l>|^p``. For even
``p = 2t`` write ``|<q, k>|^p = <q^{⊗t}, k^{⊗t}>²`` and let ``Φ`` be the
matrix whose rows are ``φ(k_j) = k_j^{⊗t}``. By Cauchy–Schwarz in the metric
of ``G = ΦᵀΦ``,

    A_j(q) = <φ(q), φ(k_j)>² / ‖Φ φ(q)‖² <= φ(k_j)ᵀ G⁺ φ(k_j) = τ_j,

the leverage score of row j of Φ, with equality for ``φ(q) = G⁺ φ(k_j)``. The
scores sum to ``rank(Φ) <= C(d + t - 1, t) <= d^t``, so the *universal set*
``U = {j : τ_j >= ε}`` has at most ``rank(Φ)/ε <= d^{p/2}/ε`` keys and holds,
for EVERY query, every key of attention >= ε (the paper's main theorem; for
p = 2 these are the leverage scores of K itself, for p = 2t those of
``K^{⊗t}``). The paper also treats general ``p`` through ℓp Lewis weights;
only even ``p`` is implemented here, where the leverage scores of ``K^{⊗t}``
are the exact sensitivities.

**Features.** ``φ`` is ``k`` itself for p = 2; for p >= 4 it is either the
exact symmetric tensor power (``F = C(d + t - 1, t)`` coordinates, the Gram is
F x F) or, with ``sketch_size``, a PolySketch of ``k^{⊗t}``
(sketch/tensor.py). Without a sketch, :func:`universal_set` on M < F keys
never forms the features: the leverage scores of Φ are those of its kernel
matrix ``ΦΦᵀ = (KKᵀ)^{∘t}`` (M x M); exact scores of size above
``EXACT_SIZE_LIMIT`` (min(M, F) for one shot, F for a stream) need
``sketch_size``. With ``sketch_size >= rank(Φ)`` the sketch keeps the
column space of Φ and the scores are exact; below that, use ``ridge > 0``:
the sketch is then a spectral approximation of the kernel ``ΦΦᵀ + λI`` and
the scores approximate ridge leverage scores (an approximation, not the
theorem's guarantee).

**Streaming and parallel.** The scores only need the ``F x F`` Gram ``G``,
accumulated over key blocks (memory independent of n) and summed over
shards. :class:`LevSelector` keeps, after every block, exactly the keys whose
score w.r.t. the current Gram reaches ε: a score only decreases as keys
arrive (``G`` grows in the Loewner order), so a key dropped once never
returns and the final set equals the one-pass universal set, for a stream
or for merged shards, with at most ``rank/ε`` candidates held. With a fixed
``budget`` the selector keeps the ``budget`` best keys w.r.t. the current
Gram (the paper's practical rule, exact in one shot; in a stream a key
dropped early can outrank a kept one at the end: on random streams a few
percent of the kept keys differ from the one-pass set, carrying well under
1% of its score mass; threshold mode is exact).

**Attention.** Queries attend exactly (softmax, the paper's practical
variant, or normalised ``|x|^p``) to the selected keys of their key/value
head, optionally plus a local window of the ``window`` keys ending at their
own position; the two parts are disjoint and merged by log-sum-exp. With
``is_causal`` a query sees only selected keys at positions <= its own
(aligned bottom-right). The set is computed from all M keys (as for a
prompt or an image), so for causal training the *choice* of set depends on
later keys (not through gradients: selection is not differentiable), and the
ε-guarantee is for attention over all M keys (a causal row has a smaller
normaliser, so its entries can exceed their full-row value); for strictly
causal decoding, with the guarantee over the prefix, use
:class:`kernelsketch.attention.kvcache.LevKVCache`.
Gradients flow to q, k, v through the gathered keys. When the set is all
keys (budget >= M, no eps) the exact method runs.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from .._checks import (
    check_choice,
    check_float,
    check_int,
    check_same,
    check_tensor,
)
from ..sketch.leverage import leverage_scores_from_gram, leverage_scores_from_kernel
from ..sketch.tensor import PolySketch
from .api import MethodConfig, MethodSpec
from .exact import ExactConfig, exact_forward, partial_attention
from .gqa import fold_groups, gather_rows, query_positions, unfold_groups
from .merge import accumulation_dtype, merge_partials

__all__ = [
    "EXACT_SIZE_LIMIT",
    "LevConfig",
    "LevSelector",
    "power_partial_attention",
    "score_dtype",
    "symmetric_power_features",
    "universal_set",
]


@dataclass(frozen=True)
class LevConfig(MethodConfig):
    """Configuration of LevAttention.

    p : even int >= 2; the scores are leverage scores of ``K^{⊗p/2}`` (the
        universal set of ``|x|^p`` attention).
    eps : threshold in (0, 1]; when given, every key with score >= eps is
        kept (set size <= rank/eps <= d^{p/2}/eps per head) and ``budget`` is
        ignored.
    budget : keys kept per key/value head when ``eps`` is None (the keys of
        largest score); the paper uses 32. At or above the key count every
        key is kept (softmax: the exact method runs).
    window : each query also attends to the ``window`` keys ending at its
        own position (0: none).
    kind : "softmax" (softmax restricted to the set; the paper's practical
        LevAttention) or "power" (``|q·k|^p`` normalised over the set).
    ridge : relative ridge ``λ = ridge · tr(G) / F`` added to the Gram
        (0: plain, rank-aware leverage scores).
    sketch_size : for p >= 4, PolySketch features of this size instead of the
        exact symmetric tensor power (None: exact scores, through the
        ``C(d+p/2-1, p/2)`` features or the M x M kernel, whichever is
        smaller; a ValueError asks for sketch_size when both exceed
        ``EXACT_SIZE_LIMIT``).
    """

    p: int = 2
    eps: float | None = None
    budget: int = 32
    window: int = 0
    kind: str = "softmax"
    ridge: float = 0.0
    sketch_size: int | None = None

    def __post_init__(self) -> None:
        _check_p(self.p)
        if self.eps is not None:
            check_float("eps", self.eps, min=0.0, max=1.0, min_exclusive=True)
        check_int("budget", self.budget, min=1)
        check_int("window", self.window, min=0)
        check_choice("kind", self.kind, ("softmax", "power"))
        check_float("ridge", self.ridge, min=0.0)
        if self.sketch_size is not None:
            check_int("sketch_size", self.sketch_size, min=1)

    @classmethod
    def full_budget(cls, seq_len: int) -> LevConfig:
        """A config that keeps every key at this length (equals exact softmax attention)."""
        return cls(budget=max(check_int("seq_len", seq_len, min=0), 1))


# Largest exact eigendecomposition (F x F Gram or M x M kernel) computed without a sketch:
# beyond it use sketch_size (one 4096 x 4096 eigh per head is already seconds on a CPU).
EXACT_SIZE_LIMIT = 4096


def _check_p(p) -> int:
    check_int("p", p, min=2)
    if p % 2:
        raise ValueError(f"p must be an even int >= 2 (leverage scores of K^(⊗p/2)), got {p}")
    return p


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
    p : even int >= 2.
    eps : threshold in (0, 1]; give exactly one of ``eps`` and ``budget``.
    budget : int >= 1, keys kept per head.
    ridge : relative ridge (see :class:`LevConfig`).
    sketch_size : PolySketch feature size for p >= 4 (None: exact features).
    seed : seed of the PolySketch; shards to be merged must share it.

    Attributes
    ----------
    gram : [B, H, F, F] accumulated Gram (see :func:`score_dtype`).
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
        self.p = _check_p(p)
        if (eps is None) == (budget is None):
            raise ValueError(f"give exactly one of eps and budget, got eps={eps!r}, budget={budget!r}")
        self.eps = None if eps is None else check_float("eps", eps, min=0.0, max=1.0,
                                                        min_exclusive=True)
        self.budget = None if budget is None else check_int("budget", budget, min=1)
        self.ridge = check_float("ridge", ridge, min=0.0)
        self.sketch_size = None if sketch_size is None else check_int("sketch_size", sketch_size,
                                                                      min=1)
        self.seed = check_int("seed", seed, min=0)
        self.gram: torch.Tensor | None = None
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
        if other.gram is None:
            return self
        if self.gram is None:
            self.__dict__.update({k: v for k, v in other.__dict__.items()})
            return self
        self._check_block(other.keys, other.values)
        self.gram = self.gram + other.gram
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
        if self.gram is None:
            raise ValueError("scores() needs at least one update(k_block) first, got none")
        check_tensor("k", k, ndim=4)
        if k.shape[:2] != self.keys.shape[:2] or k.shape[-1] != self.keys.shape[-1]:
            raise ValueError(f"k must have shape [{self.keys.shape[0]}, {self.keys.shape[1]}, m, "
                             f"{self.keys.shape[-1]}] like the streamed keys, got {list(k.shape)}")
        check_same(("streamed keys", "k"), (self.keys, k))
        return self._scores(k)

    # -- internals --------------------------------------------------------------------------

    def _update(self, k_block: torch.Tensor, v_block: torch.Tensor | None) -> LevSelector:
        with torch.no_grad():
            acc = score_dtype(k_block.dtype, self.p)
            if self._features is None:
                self._features = _PowerFeatures(k_block.shape[-1], self.p // 2, self.sketch_size,
                                                self.seed, k_block.device)
            phi = self._features(k_block.detach().to(acc))
            block_gram = phi.transpose(-1, -2) @ phi
            self.gram = block_gram if self.gram is None else self.gram + block_gram
        m = k_block.shape[2]
        pos = torch.arange(self.num_seen, self.num_seen + m, device=k_block.device)
        pos = pos.expand(*k_block.shape[:2], m)
        self.num_seen += m
        self._absorb(k_block.detach(), None if v_block is None else v_block.detach(), pos)
        return self

    def _scores(self, k: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            phi = self._features(k.detach().to(self.gram.dtype))
            gram = self.gram
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
    seed: int = 0,
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
    ridge, sketch_size, seed : see :class:`LevSelector`. Without sketch_size,
        p >= 4 and M below the feature count ``F = C(d + p/2 - 1, p/2)``, the
        scores come from the M x M kernel ``(KKᵀ)^{∘p/2}`` instead of the
        F x F Gram (same scores, less work).

    Returns
    -------
    int64 [B, H, S]: indices ascending, padded with -1 at the end where heads
    keep fewer than S keys (threshold mode); S = min(budget, M) in budget mode.

    References
    ----------
    Kannan, Bhattacharyya, Kacham, Woodruff. LevAttention: Time, Space, and
    Streaming Efficient Algorithm for Heavy Attentions, arXiv 2410.05462.
    """
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
        # Leverage scores are scale invariant: unit largest key norm keeps <k, k'>^t finite.
        x = x / x.norm(dim=-1).amax(-1).clamp_min(torch.finfo(x.dtype).tiny)[..., None, None]
        kernel = (x @ x.transpose(-1, -2)) ** t  # ΦΦᵀ for Φ = K^{⊗t}
        if ridge > 0:  # the Gram route's λ = ridge · tr(G) / F, as a rescaling of the kernel
            trace = kernel.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(torch.finfo(x.dtype).tiny)
            kernel = kernel * (_exact_size(d, t) / trace)[..., None, None]
        score = leverage_scores_from_kernel(kernel, ridge=ridge)
    pos = torch.arange(M, device=k.device).expand(*k.shape[:2], M)
    order, kept = _choose(score, pos, eps=eps, budget=budget, beyond=M + 1)
    return torch.where(kept, order, -1)


def power_partial_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    p: int,
    scale: float,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised ``|x|^p`` attention of q over k, as a partial attention.

    Weights ``|scale·<q, k_j>|^p / Σ_l |scale·<q, k_l>|^p``. Returns
    ``(out [..., n, Dv], lse [..., n])`` with ``lse = log Σ_j |scale·<q, k_j>|^p``
    (so parts merge with :func:`~kernelsketch.attention.merge.merge_partials`);
    rows with no kept key or all-zero scores get out = 0, lse = -inf. Computed
    as ``(|s| / max|s|)^p`` so it neither overflows nor has a NaN gradient at 0.
    """
    acc = accumulation_dtype(q.dtype)
    a = (torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale).abs()
    if mask is not None:
        a = a.masked_fill(~mask, 0.0)
    m = a.amax(dim=-1).detach()
    m_safe = torch.where(m > 0, m, torch.ones_like(m))
    w = (a / m_safe.unsqueeze(-1)) ** p
    denom = w.sum(dim=-1)
    nonzero = denom > 0
    denom_safe = torch.where(nonzero, denom, torch.ones_like(denom))
    out = torch.matmul(w, v.to(acc)) / denom_safe.unsqueeze(-1)
    lse = torch.where(nonzero, p * torch.log(m_safe) + torch.log(denom_safe),
                      torch.full_like(m, float("-inf")))
    return out, lse


def _partial(config: LevConfig, q, k, v, *, scale, mask):
    if config.kind == "power":
        return power_partial_attention(q, k, v, p=config.p, scale=scale, mask=mask)
    return partial_attention(q, k, v, scale=scale, mask=mask)


def _window_partial(q, k, v, *, scale, config):
    """Attention of each query to the keys (pos - window, pos], in query blocks.

    q [B, Hkv, G, N, D]; query i sits at key position i + M - N. Query block b
    of c rows needs the c + window - 1 contiguous keys ending at its last
    position, so memory is O(N (c + window) D) instead of O(N M).
    """
    B, Hkv, G, N, D = q.shape
    M, w = k.shape[2], config.window
    c = max(16, w)
    nb = math.ceil(N / c)
    q = torch.nn.functional.pad(q, (0, 0, 0, nb * c - N))
    dev = q.device
    first = torch.arange(nb, device=dev) * c + (M - N)  # position of each block's first query
    key_pos = first[:, None] - w + 1 + torch.arange(c + w - 1, device=dev)  # [nb, L]
    q_pos = first[:, None] + torch.arange(c, device=dev)  # [nb, c]
    mask = ((key_pos[:, None, :] <= q_pos[:, :, None]) & (key_pos[:, None, :] > q_pos[:, :, None] - w)
            & (key_pos[:, None, :] >= 0) & (key_pos[:, None, :] < M))
    idx = key_pos.clamp(0, M - 1)
    kb = k[:, :, idx].unsqueeze(2)  # [B, Hkv, 1, nb, L, D]
    vb = v[:, :, idx].unsqueeze(2)
    qb = q.reshape(B, Hkv, G, nb, c, D)
    out, lse = _partial(config, qb, kb, vb, scale=scale, mask=mask)
    out = out.reshape(B, Hkv, G, nb * c, -1)[:, :, :, :N]
    lse = lse.reshape(B, Hkv, G, nb * c)[:, :, :, :N]
    return out.reshape(B, Hkv, G * N, -1), lse.reshape(B, Hkv, G * N)


def lev_forward(q, k, v, *, is_causal, scale, config, generator, need_lse):
    """Registry entry of LevAttention (see :class:`LevConfig` and the module docstring)."""
    B, Hq, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    if config.eps is None and config.budget >= M and config.kind == "softmax":
        return exact_forward(q, k, v, is_causal=is_causal, scale=scale,
                             config=_EXACT_CONFIG, generator=None, need_lse=need_lse)
    seed = 0
    if config.sketch_size is not None and config.p > 2:
        seed = int(torch.randint(2**62, (), generator=generator,
                                 device=generator.device if generator is not None else "cpu"))
    budget = None if config.eps is not None else min(config.budget, M)
    idx = universal_set(k, config.p, config.eps, budget, ridge=config.ridge,
                        sketch_size=config.sketch_size, seed=seed)  # [B, Hkv, S]
    if idx.shape[-1] == 0:  # no key reaches eps: one padded slot keeps the shapes non-empty
        idx = torch.full((*idx.shape[:2], 1), -1, dtype=idx.dtype, device=idx.device)
    valid = idx >= 0
    gidx = idx.clamp(min=0)
    k_sel, v_sel = gather_rows(k, gidx), gather_rows(v, gidx)
    same_keys_for_all = not (is_causal or config.window or config.eps is not None)
    if same_keys_for_all and config.kind == "softmax" and not need_lse:
        # Every query sees the same S keys: one fused SDPA call (flash / cuDNN on GPU).
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k_sel, v_sel, scale=scale, enable_gqa=Hq != Hkv)
        return out, None
    groups = Hq // Hkv
    qf = fold_groups(q, Hkv)  # [B, Hkv, G*N, D]
    mask = valid.unsqueeze(2)  # [B, Hkv, 1, S]
    if is_causal or config.window:
        q_pos = query_positions(N, M, groups, q.device)[None, None, :, None]
        key_pos = gidx.unsqueeze(2)
        if is_causal:
            mask = mask & (key_pos <= q_pos)
        if config.window:  # those keys are counted by the window part
            mask = mask & ~((key_pos <= q_pos) & (key_pos > q_pos - config.window))
    out, lse = _partial(config, qf, k_sel, v_sel, scale=scale, mask=mask)
    if config.window:
        qg = qf.reshape(B, Hkv, groups, N, D)
        out, lse = merge_partials(out, lse, *_window_partial(qg, k, v, scale=scale, config=config))
    return unfold_groups(out, Hq), (unfold_groups(lse, Hq) if need_lse else None)


_EXACT_CONFIG = ExactConfig()

METHOD = MethodSpec(
    name="lev",
    forward=lev_forward,
    config_cls=LevConfig,
    summary="LevAttention: attention over the leverage-score universal key set (+ local window)",
    paper="arXiv 2410.05462",
    causal=True,
)
