"""The PolySketch attention layer: q/k layer norms, sketch drawn once, token-by-token decoding."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..._checks import check_attention_inputs, check_float, check_int
from ..common.merge import accumulation_dtype
from .config import PolySketchConfig
from .features import MAX_HEAD_DIM, PolySketchFeatures, self_tensor
from .method import sketched_polynomial_attention
from .polynomial import normalize_output, polynomial_weights


@dataclass
class PolySketchState:
    """Decoding state of :class:`PolySketchAttention` after ``length`` tokens.

    kv : [B, Hkv, r², Dv+1] Σ over completed blocks of Φ(k'_j) ⊗ [v_j, 1].
    keys, feats, values : [B, Hkv, n, D] / [B, Hkv, n, r] / [B, Hkv, n, Dv],
        the n = length mod block_size tokens of the current block (scaled,
        normalised keys and their features).
    """

    kv: torch.Tensor
    keys: torch.Tensor
    feats: torch.Tensor
    values: torch.Tensor
    length: int = 0


class PolySketchAttention(nn.Module):
    """PolySketch attention layer (no projections): q/k layer norms, sketch, decoding.

    Parameters
    ----------
    head_dim : D of q and k.
    config : :class:`PolySketchConfig` (default when None). ``config.normalize``
        selects the q/k layer norms of this module.
    is_causal : default True (language modelling).
    scale : score scale, default 1/sqrt(D).
    seed : seed of the sketch, drawn once at construction (buffers; trainable
        parameters for ``sketch="learned"``), so forward is deterministic and
        the state_dict reproduces it.
    norm_affine : the layer norms have a learnable weight and bias (default True).

    ``forward(q, k, v, return_lse=False)`` takes SDPA-layout q [B, Hq, N, D],
    k [B, Hkv, M, D], v [B, Hkv, M, Dv]. For decoding, ``state = init_state(...)``
    then ``out, state = step(q_t, k_t, v_t, state)`` per token: O(r² Dv + b D)
    per token, equal to the causal parallel form.
    """

    def __init__(
        self,
        head_dim: int,
        config: PolySketchConfig | None = None,
        *,
        is_causal: bool = True,
        scale: float | None = None,
        seed: int = 0,
        norm_affine: bool = True,
    ) -> None:
        super().__init__()
        config = PolySketchConfig() if config is None else config
        if not isinstance(config, PolySketchConfig):
            raise TypeError(f"config must be a PolySketchConfig, got {type(config).__name__}")
        check_int("head_dim", head_dim, min=1, max=MAX_HEAD_DIM)
        check_int("seed", seed, min=0, max=2**64 - 1)
        self.config, self.is_causal, self.head_dim = config, bool(is_causal), head_dim
        self.scale = 1.0 / math.sqrt(head_dim) if scale is None else check_float(
            "scale", scale, min=0.0, min_exclusive=True)
        self.features = PolySketchFeatures(head_dim, config, seed=seed)
        if config.normalize:
            self.q_norm = nn.LayerNorm(head_dim, elementwise_affine=norm_affine)
            self.k_norm = nn.LayerNorm(head_dim, elementwise_affine=norm_affine)
        else:
            self.q_norm = self.k_norm = nn.Identity()

    def _normalize(self, q, k):
        """Layer norms in the accumulation dtype (float32 for half inputs, whatever the
        parameters' dtype), so bfloat16 inputs work with a float32 layer."""
        acc = accumulation_dtype(q.dtype)
        return tuple(
            x.to(acc) if isinstance(norm, nn.Identity) else F.layer_norm(
                x.to(acc), norm.normalized_shape,
                None if norm.weight is None else norm.weight.to(acc),
                None if norm.bias is None else norm.bias.to(acc), norm.eps)
            for norm, x in ((self.q_norm, q), (self.k_norm, k))
        )

    def _check(self, q, k, v):
        dims = check_attention_inputs(q, k, v)
        if q.shape[-1] != self.head_dim:
            raise ValueError(f"q must have head dim {self.head_dim} (head_dim), got {q.shape[-1]}")
        return dims

    def forward(self, q, k, v, *, return_lse: bool = False):
        """Attention of q over k, v; out [B, Hq, N, Dv] in q's dtype (and lse)."""
        self._check(q, k, v)
        qn, kn = self._normalize(q, k)
        c = self.config
        out, lse = sketched_polynomial_attention(
            qn, kn, v, self.features, degree=c.degree, block_size=c.block_size,
            exact_local=c.exact_local, scale=self.scale, is_causal=self.is_causal,
            need_lse=return_lse,
        )
        out = out.to(q.dtype)
        return (out, lse) if return_lse else out

    def init_state(self, batch_size: int, kv_heads: int, value_dim: int | None = None, *,
                   device=None, dtype: torch.dtype = torch.float32) -> PolySketchState:
        """Empty decoding state (float32, or float64 when ``dtype`` is float64)."""
        check_int("batch_size", batch_size, min=1)
        check_int("kv_heads", kv_heads, min=1)
        dv = self.head_dim if value_dim is None else check_int("value_dim", value_dim, min=1)
        acc = accumulation_dtype(dtype)
        r, D = self.features.dim, self.head_dim
        z = {"device": device, "dtype": acc}
        return PolySketchState(
            kv=torch.zeros(batch_size, kv_heads, r * r, dv + 1, **z),
            keys=torch.zeros(batch_size, kv_heads, 0, D, **z),
            feats=torch.zeros(batch_size, kv_heads, 0, r, **z),
            values=torch.zeros(batch_size, kv_heads, 0, dv, **z),
        )

    def step(self, q, k, v, state: PolySketchState) -> tuple[torch.Tensor, PolySketchState]:
        """Attend the next token: q [B, Hq, 1, D], k [B, Hkv, 1, D], v [B, Hkv, 1, Dv].

        Returns out [B, Hq, 1, Dv] (q's dtype) and the new state. Only causal
        layers decode.
        """
        if not self.is_causal:
            raise ValueError("step needs a causal layer (is_causal=True), got is_causal=False")
        B, Hq, Hkv, N, M = self._check(q, k, v)
        if N != 1 or M != 1:
            raise ValueError(f"step takes one token: q and k must have length 1, got {N} and {M}")
        if not isinstance(state, PolySketchState):
            raise TypeError(f"state must be a PolySketchState, got {type(state).__name__}")
        if state.kv.shape[:2] != (B, Hkv) or state.values.shape[-1] != v.shape[-1]:
            raise ValueError(
                f"state must match batch {B}, kv heads {Hkv} and value dim {v.shape[-1]}, got kv "
                f"state {tuple(state.kv.shape)} (init_state(batch_size, kv_heads, value_dim))"
            )
        acc, c = state.kv.dtype, self.config
        qn, kn = self._normalize(q, k)
        root = math.sqrt(self.scale)
        qs, ks = qn.to(acc) * root, kn.to(acc) * root
        fq, fk = self.features(qs), self.features(ks)
        keys = torch.cat((state.keys, ks[:, :, 0:1]), dim=2)
        feats = torch.cat((state.feats, fk[:, :, 0:1]), dim=2)
        values = torch.cat((state.values, v.to(acc)), dim=2)
        G = Hq // Hkv
        qg, fqg = qs.reshape(B, Hkv, G, 1, -1), fq.reshape(B, Hkv, G, 1, -1)
        if c.exact_local:
            w = polynomial_weights(qg, keys.unsqueeze(2), degree=c.degree)
        else:
            w = polynomial_weights(fqg, feats.unsqueeze(2), degree=2)
        vp = torch.cat((values, torch.ones_like(values[..., :1])), dim=-1)
        res = torch.matmul(self_tensor(fqg), state.kv.unsqueeze(2)) + torch.matmul(
            w, vp.unsqueeze(2))
        out, _ = normalize_output(res[..., :-1], res[..., -1], False)
        if not bool(torch.isfinite(out).all()):
            # The state sums weights (scale q·k)^p as they come (forward shrinks them into
            # range, a stream cannot): say so instead of returning NaN.
            raise ValueError(
                f"the decoding state overflowed {str(acc).replace('torch.', '')}: (scale·q·k)^p "
                f"with scale={self.scale:.3g} and degree {c.degree} is out of its range; use "
                f"init_state(..., dtype=torch.float64) or a smaller scale"
            )
        kv = state.kv
        if keys.shape[2] == c.block_size:  # the block is complete: fold it into the prefix sum
            kv = kv + torch.matmul(self_tensor(feats).transpose(-1, -2), vp)
            keys, feats, values = keys[:, :, :0], feats[:, :, :0], values[:, :, :0]
        new = PolySketchState(kv=kv, keys=keys, feats=feats, values=values,
                              length=state.length + 1)
        return out.reshape(B, Hq, 1, -1).to(q.dtype), new

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, is_causal={self.is_causal}, config={self.config}"
