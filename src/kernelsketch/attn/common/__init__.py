"""Machinery shared by several attention methods.

- :mod:`.spec`: ``MethodConfig`` and ``MethodSpec``, what a method declares.
- :mod:`.exact`: exact attention, the reference (SDPA; chunked with log-sum-exp),
  and ``partial_attention`` over an explicit key set.
- :mod:`.merge`: merging partial attentions by log-sum-exp.
- :mod:`.causal`: the recursive causal decomposition of the LSH methods.
- :mod:`.sortlsh`: attention on the LSH-sorted block diagonal plus weighted key
  samples (torch path and fused Triton kernels), shared by hyper and kde.
- :mod:`.gqa`: grouped-query folding and row gathers.
- :mod:`.metrics`: the error measures the papers bound.
- :mod:`.triton_utils`: Triton availability and launch settings.
"""
