"""Fuzz function recovery: spectra, the universal density and sampler, signal and
spherical-harmonic reconstruction (issue 21).

Contract (tests/fuzz/contract.py, numpy_inputs.py): a ValueError / TypeError
naming an argument, or a finite result of the documented shape; no input
modified; bounded time (sizes kept small; the documented limits refuse the rest).
"""

import warnings

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kernelsketch.recovery import (
    Bandlimited,
    GaussianSpectrum,
    MaternSpectrum,
    Multiband,
    PowerSpectrum,
    SparseFrequencies,
    default_signal_samples,
    default_spherical_samples,
    reconstruct_signal,
    recover_spherical,
    sample_universal,
    statistical_dimension,
    universal_density,
)
from tests.fuzz.numpy_inputs import check, finite

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.filterwarnings("ignore::UserWarning")]  # documented caps and n < dim

REAL = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -1.0, 1e-300, 1e-8, 0.3, 2.5, 7.0, 1e6, 1e300]),
    st.integers(-3, 10),
)
SMALL_POS = st.floats(min_value=1e-3, max_value=20.0)
TAU = hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=2, max_side=5),
                 elements=st.floats(-1e300, 1e300))


@st.composite
def spectra(draw, real=REAL):
    """A zero-argument constructor of a spectrum (arguments drawn now, built in the test)."""
    kind = draw(st.sampled_from(["band", "multi", "sparse", "gauss", "matern", "power"]))
    if kind == "band":
        F = draw(real)
        return lambda: Bandlimited(F)
    if kind == "multi":
        bands = draw(st.lists(st.tuples(real, real), max_size=3))
        return lambda: Multiband(bands)
    if kind == "sparse":
        f = draw(st.lists(real, max_size=4))
        w = draw(st.one_of(st.none(), st.lists(real, max_size=4)))
        return lambda: SparseFrequencies(f, w)
    if kind == "gauss":
        ell = draw(real)
        return lambda: GaussianSpectrum(ell)
    if kind == "matern":
        nu, ell = draw(real), draw(real)
        return lambda: MaternSpectrum(nu, ell)
    support = draw(st.one_of(st.tuples(real, real), st.just((1.0,)), st.just("ab")))
    density = draw(st.sampled_from([np.ones_like, np.zeros_like, lambda x: -x, lambda x: x**2,
                                    lambda x: np.full_like(x, np.nan), 3.0]))
    return lambda: PowerSpectrum(density, support)


NAMES = ("bandwidth", "bands", "frequencies", "weights", "lengthscale", "nu", "support",
         "density", "tau", "T", "s", "regularization", "n_nodes", "t", "n", "random_state")


@settings(max_examples=120)
@given(make=spectra(), tau=TAU)
def test_spectrum_kernels(make, tau):
    spec = check(make, names=NAMES)
    if spec is None:
        return
    k = check(spec.kernel, tau, names=NAMES)
    if k is not None:
        assert k.shape == tau.shape and finite(k)
        assert np.all(np.abs(k) <= 1 + 1e-9)  # a normalised positive-definite kernel


@settings(max_examples=40)
@given(make=spectra(), T=REAL, reg=REAL, n_nodes=st.one_of(st.none(), st.integers(-1, 300)))
def test_statistical_dimension(make, T, reg, n_nodes):
    spec = check(make, names=NAMES)
    if spec is None or (isinstance(T, float) and np.isfinite(T) and abs(T) > 100):
        return  # huge windows only hit the documented node caps, slowly
    s = check(statistical_dimension, spec, T, regularization=reg, n_nodes=n_nodes, names=NAMES)
    if s is not None:
        assert finite(s) and s >= 0


@settings(max_examples=60)
@given(t=TAU, T=st.one_of(SMALL_POS, REAL), s=st.one_of(SMALL_POS, REAL),
       n=st.one_of(st.integers(1, 50), st.integers(-1, 0), st.just(2**40)),
       rs=st.one_of(st.integers(0, 5), st.none(), st.integers(-1, -1), st.just(2**33),
                    st.just(1.5)))
def test_universal_density_and_sampler(t, T, s, n, rs):
    p = check(universal_density, t, T, s, names=NAMES)
    if p is not None:
        assert p.shape == np.shape(t) and finite(p) and np.all(p >= 0)
    times = check(sample_universal, n, T, s, random_state=rs, names=NAMES)
    if times is not None:
        assert times.shape == (n,) and finite(times)
        assert np.all((times >= 0) & (times <= T))
    m = check(default_signal_samples, s, names=NAMES)
    assert m is None or (isinstance(m, int) and m >= 1)


SAMPLE_FNS = st.sampled_from([
    np.cos,
    lambda t: np.exp(2j * np.pi * t),
    lambda t: t[:2],
    lambda t: np.full_like(t, np.inf),
    lambda t: t.astype(str),
    lambda t: 1e300 * np.sin(t),
    lambda t: 1e-300 * np.sin(t),
    "not callable",
])


@settings(max_examples=60)
@given(fn=st.one_of(st.just(np.cos), SAMPLE_FNS), T=st.one_of(SMALL_POS, SMALL_POS, REAL),
       make=spectra(st.one_of(st.floats(0.05, 4.0), st.floats(0.05, 4.0),
                              st.sampled_from([0.0, -1.0, np.nan]))),
       n=st.one_of(st.none(), st.integers(-1, 40), st.just(10**6)),
       reg=st.one_of(SMALL_POS, SMALL_POS, REAL),
       sampling=st.sampled_from(["mixture", "universal", "uniform", "mixture", "grid"]))
def test_reconstruct_signal(fn, T, make, n, reg, sampling):
    spec = check(make, names=NAMES)
    if spec is None or (isinstance(T, float) and np.isfinite(T) and T > 5):
        return  # long windows only make the default sample count large, slowly
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rec = check(reconstruct_signal, fn, T, spec, n, regularization=reg, sampling=sampling,
                    random_state=0, names=(*NAMES, "samples_fn", "spectrum", "n_samples",
                                           "sampling"))
    if rec is not None:
        out = rec(np.linspace(0, float(T), 7))
        assert out.shape == (7,) and finite(out)
        assert rec.coef.shape == rec.times.shape and finite(rec.coef)


@settings(max_examples=40)
@given(
    f=st.sampled_from([lambda X: X[:, 0], lambda X: X[:, 0] * X[:, 1 % X.shape[1]],
                       lambda X: X[:, 0] * 1j, lambda X: X[:1, 0],
                       lambda X: np.full(len(X), np.nan), lambda X: 1e300 * X[:, 0] ** 2,
                       "f"]),
    d=st.one_of(st.integers(2, 6), st.integers(-1, 6), st.just(1000), st.just(2.0)),
    degree=st.one_of(st.integers(0, 5), st.integers(-1, 5), st.just(10**4)),
    n=st.one_of(st.none(), st.integers(-1, 60)),
    reg=st.one_of(st.just(0.0), st.floats(0, 1), REAL),
    rcond=st.one_of(st.just(1e-10), st.floats(1e-12, 0.5), REAL),
)
def test_recover_spherical(f, d, degree, n, reg, rcond):
    # d = 1000 is there for the huge harmonic spaces (degree 10**4: refused up front); its
    # valid small degrees with the default count solve a dense system of 6916+ samples
    # (degree 1; ~20 s, over the 120 s timeout on a loaded CI machine); test_spherical.py
    # covers the solve at smaller sizes
    assume(not (d == 1000 and n is None and 1 <= degree <= 5))
    names = ("f", "d", "degree", "n_samples", "regularization", "rcond", "X")
    g = check(recover_spherical, f, d, degree, n, regularization=reg, rcond=rcond,
              random_state=1, names=names)
    if g is not None:
        X = np.eye(d)[:3] if d >= 3 else np.eye(d)
        out = g(X)
        assert out.shape == (len(X),) and finite(out)
    beta = check(default_spherical_samples, d, degree, names=names)
    assert beta is None or beta >= 1
