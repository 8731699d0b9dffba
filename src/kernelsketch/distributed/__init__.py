"""Scale-out: context-parallel attention over ``torch.distributed``, kernel ridge on Dask.

- :func:`context_parallel_attention` (:mod:`.attention`): each rank passes its
  sequence shard and gets its rows of ``kernelsketch.attention`` on the whole.
- :mod:`.collectives`: the counted, differentiable collectives it uses
  (:func:`count_bytes` measures what a rank sends).
- :mod:`.dask`: Dask arrays through the feature maps and ``KernelRidge``.

Theory and communication costs: docs/distributed.md.
"""

from .attention import CONTEXT_PARALLEL_METHODS, context_parallel_attention
from .collectives import ByteCounter, count_bytes

__all__ = ["CONTEXT_PARALLEL_METHODS", "ByteCounter", "context_parallel_attention", "count_bytes"]
