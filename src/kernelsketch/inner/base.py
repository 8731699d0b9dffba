"""The :class:`Sketch` base class: compatibility checks, equality, serialization.

A sketch holds a few named numpy arrays (float64 or uint64) and scalars plus the
parameters of the :class:`~kernelsketch.inner.Sketcher` that built it (method,
size, seed and method options). Two sketches are compared or merged only when all
of those agree (coordinated hashing); otherwise a ``ValueError`` is raised.
``to_bytes`` / ``from_bytes``: a versioned binary format (magic ``b"KSIP"``,
version 2; version 1 is still read), specified in docs/inner_products.md.

Values may be any finite float64: norms and sampling weights are computed
scale-free (:func:`l2_norm`, log-domain probabilities), so sketching ``c * a``
gives the estimates of ``a`` times ``c`` for ``c`` from 1e-300 to 1e300 as long
as the estimate itself is a float64.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any, ClassVar

import numpy as np

FORMAT_VERSION = 2
_MAGIC = b"KSIP"
_PREFIX = struct.Struct("<4sHI")
_DTYPES = {"f8": np.dtype("<f8"), "u8": np.dtype("<u8")}
# Version 1 stored the sampling scales linearly; version 2 stores their logarithms
# (a linear scale c ~ m / ||a||^2 over- or underflows for ||a|| beyond 1e+-154).
_V1_LOG_SCALARS = {
    "ts": ("scale", "log_scale"),
    "ps": ("tau", "log_tau"),
    "ts-column": ("scale", "log_scale"),
    "ps-column": ("scale", "log_scale"),
}


def l2_norm(values: np.ndarray, name: str = "values") -> float:
    """The l2 norm of a float64 vector, free of overflow and underflow.

    The vector is scaled by the power of two nearest its largest magnitude (an
    exact scaling), so in the normal range the result equals
    ``sqrt(sum(values**2))`` bit for bit. Raises ``ValueError`` when the norm
    itself exceeds the float64 range (the message names ``name``).
    """
    top = float(np.max(np.abs(values))) if values.size else 0.0
    if top == 0.0:
        return 0.0
    exponent = int(np.frexp(top)[1])
    scaled = np.ldexp(values, -exponent)
    with np.errstate(over="ignore"):
        norm = float(np.ldexp(np.sqrt(np.sum(scaled * scaled)), exponent))
    if not math.isfinite(norm):
        raise ValueError(
            f"{name} must have an l2 norm within the float64 range, got entries up to {top:.3g}"
        )
    return norm


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
    _param_names: ClassVar[tuple[str, ...]] = ()
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
    @classmethod
    def _defect(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> str | None:
        """What is inconsistent in deserialized parts (None if nothing); subclasses extend."""
        if set(params) != set(cls._param_names):
            return f"params must be {sorted(cls._param_names)}, got {sorted(params)}"
        return None

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
        """Rebuild a sketch written by :meth:`to_bytes` (format version 1 or 2).

        Raises
        ------
        TypeError if ``data`` is not bytes-like.
        ValueError if the magic, version, header, method or lengths do not match.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < _PREFIX.size:
            raise ValueError(f"data is too short to be a sketch ({len(data)} bytes)")
        magic, version, head_len = _PREFIX.unpack_from(data)
        if magic != _MAGIC:
            raise ValueError(f"data is not a kernelsketch inner-product sketch (magic {magic!r})")
        if version not in (1, FORMAT_VERSION):
            raise ValueError(
                f"data has sketch format version {version}; this library reads versions 1 "
                f"and {FORMAT_VERSION}"
            )
        start = _PREFIX.size
        if start + head_len > len(data):
            raise ValueError(f"data is truncated: the header needs {head_len} bytes")
        try:
            header = json.loads(data[start : start + head_len].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"data has a corrupt sketch header: {exc}") from None
        cls, fields = _parse_header(header, version)
        offset = start + head_len
        arrays = {}
        for name, code, n in fields["arrays"]:
            nbytes = n * 8
            if offset + nbytes > len(data):
                raise ValueError(f"data is truncated: array {name!r} needs {nbytes} bytes")
            arrays[name] = np.frombuffer(data, dtype=_DTYPES[code], count=n, offset=offset).copy()
            offset += nbytes
        if offset != len(data):
            raise ValueError(f"data has {len(data) - offset} trailing bytes after the sketch")
        defect = cls._defect(fields["params"], arrays)
        if defect is not None:
            raise _corrupt(defect)
        return cls(
            size=fields["size"],
            seed=fields["seed"],
            params=fields["params"],
            arrays=arrays,
            scalars=fields["scalars"],
        )


def _corrupt(what: str) -> ValueError:
    return ValueError(f"data has a corrupt sketch header: {what}")


def _parse_header(header: Any, version: int) -> tuple[type[Sketch], dict[str, Any]]:
    """Validate a decoded header against its sketch class; every defect is a ValueError."""
    if not isinstance(header, dict):
        raise _corrupt(f"expected a JSON object, got {type(header).__name__}")
    method = header.get("method")
    cls = Sketch._registry.get(method) if isinstance(method, str) else None
    if cls is None:
        raise ValueError(
            f"data holds unknown sketch method {method!r}; known: {sorted(Sketch._registry)}"
        )
    missing = {"size", "seed", "params", "scalars", "arrays"} - set(header)
    if missing:
        raise _corrupt(f"missing fields {sorted(missing)}")
    size, seed, params = header["size"], header["seed"], header["params"]
    if not (isinstance(size, int) and not isinstance(size, bool) and size >= 1):
        raise _corrupt(f"size must be a positive int, got {size!r}")
    if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**64):
        raise _corrupt(f"seed must be an int in [0, 2**64), got {seed!r}")
    if not isinstance(params, dict):
        raise _corrupt(f"params must be an object, got {params!r}")
    scalars = header["scalars"]
    if not isinstance(scalars, dict):
        raise _corrupt(f"scalars must be an object, got {scalars!r}")
    if version == 1 and method in _V1_LOG_SCALARS:
        old, new = _V1_LOG_SCALARS[method]
        if old in scalars:
            scalars = {k: v for k, v in scalars.items() if k != old}
            scalars[new] = _log(_scalar(old, header["scalars"][old]))
    if set(scalars) != set(cls._scalar_names):
        raise _corrupt(f"scalars must be {sorted(cls._scalar_names)}, got {sorted(scalars)}")
    scalars = {k: _scalar(k, v) for k, v in scalars.items()}
    arrays = header["arrays"]
    if not (isinstance(arrays, list) and all(isinstance(a, list) and len(a) == 3 for a in arrays)):
        raise _corrupt(f"arrays must be a list of [name, dtype code, length], got {arrays!r}")
    if [a[0] for a in arrays] != list(cls._array_names):
        raise _corrupt(f"arrays must be {list(cls._array_names)}, got {[a[0] for a in arrays]}")
    for name, code, n in arrays:
        if code not in _DTYPES or not (isinstance(n, int) and not isinstance(n, bool) and n >= 0):
            raise _corrupt(f"array {name!r} has dtype code {code!r} and length {n!r}")
    fields = {"size": size, "seed": seed, "params": params, "scalars": scalars, "arrays": arrays}
    return cls, fields


def _scalar(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _corrupt(f"scalar {name!r} must be a number, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise _corrupt(f"scalar {name!r} must be a number, got {value!r}") from None


def _log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


def _float_to_json(x: float) -> float | str:
    # JSON has no inf/nan; keep them as strings that float() parses back.
    return x if math.isfinite(x) else repr(x)
