"""The :class:`Sketch` base class: compatibility checks, equality, serialization.

A sketch holds a few named numpy arrays (float64 or uint64) and scalars plus the
parameters of the :class:`~kernelsketch.inner.Sketcher` that built it (method,
size, seed and method options). Two sketches are compared or merged only when all
of those agree (coordinated hashing); otherwise a ``ValueError`` is raised.
``to_bytes`` / ``from_bytes``: a versioned binary format (magic ``b"KSIP"``,
version 1), specified in docs/inner_products.md.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any, ClassVar

import numpy as np

FORMAT_VERSION = 1
_MAGIC = b"KSIP"
_PREFIX = struct.Struct("<4sHI")
_DTYPES = {"f8": np.dtype("<f8"), "u8": np.dtype("<u8")}


class Sketch:
    """A coordinated sketch of one vector; estimates inner products with another.

    Built by :meth:`kernelsketch.inner.Sketcher.sketch`; not meant to be
    constructed directly. Subclasses (one per method) implement the estimator
    and the merge rule.

    Attributes
    ----------
    method : str
        One of ``"jl"``, ``"cs"``, ``"mh"``, ``"wmh"``, ``"ts"``, ``"ps"``.
    size : int
        The storage budget the sketcher was given (64-bit words).
    seed : int
        The hashing seed shared by coordinated sketches.
    params : dict
        Method options (e.g. ``{"rows": 3}`` for CountSketch).
    """

    method: ClassVar[str] = ""
    _array_names: ClassVar[tuple[str, ...]] = ()
    _scalar_names: ClassVar[tuple[str, ...]] = ()
    _registry: ClassVar[dict[str, type[Sketch]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.method:
            Sketch._registry[cls.method] = cls

    def __init__(
        self,
        *,
        size: int,
        seed: int,
        params: dict[str, Any],
        arrays: dict[str, np.ndarray],
        scalars: dict[str, float],
    ) -> None:
        self.size = int(size)
        self.seed = int(seed)
        self.params = dict(params)
        self._arrays = {k: arrays[k] for k in self._array_names}
        self._scalars = {k: float(scalars[k]) for k in self._scalar_names}

    # ------------------------------------------------------------------ API
    def inner_product(self, other: Sketch) -> float:
        """Estimate ``<a, b>`` where ``self`` sketches ``a`` and ``other`` sketches ``b``.

        Raises
        ------
        TypeError if ``other`` is not a Sketch.
        ValueError if the two sketches were built by different sketchers
        (method, size, seed or options differ).
        """
        self._check_compatible(other, "other")
        return float(self._inner(other))

    def merge(self, other: Sketch) -> Sketch:
        """Combine with a sketch of another vector built by the same sketcher.

        Linear sketches (``"jl"``, ``"cs"``) return the sketch of ``a + b`` for
        any ``a, b`` (streaming updates). Sampling sketches return the sketch of
        ``a + b`` when ``a`` and ``b`` have disjoint supports (e.g. partitions of
        a table by key); see each method's docstring for its extra condition.
        """
        self._check_compatible(other, "other")
        return self._merge(other)

    @property
    def storage_size(self) -> int:
        """Storage in 64-bit words, counted as in the papers: a sampled entry is
        2 words (index or hash, value); each stored scalar (norm, threshold) is 1."""
        raise NotImplementedError

    # --------------------------------------------------------- comparisons
    def _signature(self) -> tuple[Any, ...]:
        return (self.method, self.size, self.seed, tuple(sorted(self.params.items())))

    def _check_compatible(self, other: Any, name: str) -> None:
        if not isinstance(other, Sketch):
            raise TypeError(f"{name} must be a Sketch, got {type(other).__name__}")
        for field, mine, theirs in (
            ("method", self.method, other.method),
            ("size", self.size, other.size),
            ("seed", self.seed, other.seed),
            ("params", self.params, other.params),
        ):
            if mine != theirs:
                raise ValueError(
                    f"{name} must come from the same Sketcher (coordinated hashing): "
                    f"{field} differs, {mine!r} here vs {theirs!r} in {name}"
                )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sketch) or self._signature() != other._signature():
            return False
        same_scalars = all(
            (a == b) or (math.isnan(a) and math.isnan(b))
            for a, b in zip(self._scalars.values(), other._scalars.values())
        )
        return same_scalars and all(
            np.array_equal(self._arrays[k], other._arrays[k], equal_nan=True)
            for k in self._array_names
        )

    __hash__ = None  # mutable-array container: equality by value, not hashable

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in sorted(self.params.items()))
        return (
            f"{type(self).__name__}(method={self.method!r}, size={self.size}, seed={self.seed}"
            f"{opts}, storage_size={self.storage_size})"
        )

    def _like(self, arrays: dict[str, np.ndarray], scalars: dict[str, float]) -> Sketch:
        return type(self)(
            size=self.size, seed=self.seed, params=self.params, arrays=arrays, scalars=scalars
        )

    # ------------------------------------------------------- method hooks
    def _inner(self, other: Sketch) -> float:
        raise NotImplementedError

    def _merge(self, other: Sketch) -> Sketch:
        raise NotImplementedError

    # ------------------------------------------------------ serialization
    def to_bytes(self) -> bytes:
        """Serialize to bytes (versioned header + raw arrays); see :meth:`from_bytes`."""
        arrays = []
        for k in self._array_names:
            a = self._arrays[k]
            code = "u8" if a.dtype == np.uint64 else "f8"
            arrays.append((k, code, np.ascontiguousarray(a, dtype=_DTYPES[code])))
        header = {
            "method": self.method,
            "size": self.size,
            "seed": self.seed,
            "params": self.params,
            "scalars": {k: _float_to_json(v) for k, v in self._scalars.items()},
            "arrays": [[k, code, int(a.size)] for k, code, a in arrays],
        }
        head = json.dumps(header, sort_keys=True).encode("utf-8")
        body = b"".join(a.tobytes() for _, _, a in arrays)
        return _PREFIX.pack(_MAGIC, FORMAT_VERSION, len(head)) + head + body

    @staticmethod
    def from_bytes(data: bytes) -> Sketch:
        """Rebuild a sketch written by :meth:`to_bytes`.

        Raises
        ------
        TypeError if ``data`` is not bytes-like.
        ValueError if the magic, version, method or lengths do not match.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < _PREFIX.size:
            raise ValueError(f"data is too short to be a sketch ({len(data)} bytes)")
        magic, version, head_len = _PREFIX.unpack_from(data)
        if magic != _MAGIC:
            raise ValueError(f"data is not a kernelsketch inner-product sketch (magic {magic!r})")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"data has sketch format version {version}; this library reads version "
                f"{FORMAT_VERSION}"
            )
        start = _PREFIX.size
        try:
            header = json.loads(data[start : start + head_len].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"data has a corrupt sketch header: {exc}") from None
        cls = Sketch._registry.get(header.get("method"))
        if cls is None:
            raise ValueError(
                f"data holds unknown sketch method {header.get('method')!r}; known: "
                f"{sorted(Sketch._registry)}"
            )
        offset = start + head_len
        arrays = {}
        for name, code, n in header["arrays"]:
            nbytes = n * 8
            if offset + nbytes > len(data):
                raise ValueError(f"data is truncated: array {name!r} needs {nbytes} bytes")
            arrays[name] = np.frombuffer(data, dtype=_DTYPES[code], count=n, offset=offset).copy()
            offset += nbytes
        if offset != len(data):
            raise ValueError(f"data has {len(data) - offset} trailing bytes after the sketch")
        scalars = {k: float(v) for k, v in header["scalars"].items()}
        return cls(
            size=header["size"],
            seed=header["seed"],
            params=header["params"],
            arrays=arrays,
            scalars=scalars,
        )


def _float_to_json(x: float) -> float | str:
    # JSON has no inf/nan; keep them as strings that float() parses back.
    return x if math.isfinite(x) else repr(x)
