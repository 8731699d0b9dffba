import numpy as np
import pytest
from scipy.integrate import quad

from kernelsketch.recovery import fourier
from kernelsketch.recovery.fourier import (
    Bandlimited,
    GaussianSpectrum,
    MaternSpectrum,
    Multiband,
    PowerSpectrum,
    ReconstructedSignal,
    SparseFrequencies,
    default_signal_samples,
    reconstruct_signal,
    sample_universal,
    statistical_dimension,
    universal_density,
)

GRID = np.linspace(0.0, 1.0, 2001)


def _translates(spectrum, random_state, n=12, T=1.0):
    """A random real signal of the class: Σ a_j k(t - c_j) (finite RKHS norm)."""
    centres, amps = random_state.uniform(0, T, size=n), random_state.standard_normal(n)
    return lambda t: np.real(spectrum.kernel(np.asarray(t)[..., None] - centres)) @ amps


def _edge_signal(spectrum, reg, T=1.0, n=160):
    """The class's extremal signal at t = 0 (its ridge-leverage peak): Σ_i φ_i(0) φ_i(t)
    over the eigenfunctions of 𝒦 with eigenvalue above λ (Nyström-extended)."""
    x, w = np.polynomial.legendre.leggauss(n)
    t, w = (x + 1) * T / 2, w / 2
    sw = np.sqrt(w)
    e, V = np.linalg.eigh(sw[:, None] * spectrum.kernel(t[:, None] - t[None, :]) * sw[None, :])
    keep = e > reg
    e, V = e[keep], V[:, keep]
    phi0 = spectrum.kernel(0.0 - t) @ (sw[:, None] * V) / e
    b = sw * (V @ (phi0 / e))
    return lambda tt: spectrum.kernel(np.asarray(tt)[..., None] - t) @ b


def _rel(rec, f, t=GRID):
    return np.linalg.norm(rec(t) - f(t)) / np.linalg.norm(f(t))


# --- universal density and statistical dimension ----------------------------------------


@pytest.mark.parametrize("s", [1.0, 7.5, 120.0])
def test_universal_density_is_a_probability_density(s, random_state):
    T = float(random_state.uniform(0.5, 5.0))
    delta = min(0.25, 1 / s**2)
    pts = [delta * T, T / 2, T - delta * T]
    mass = quad(lambda t: universal_density(t, T, s), 0, T, points=pts, limit=200)[0]
    assert abs(mass - 1.0) < 1e-6
    assert universal_density(np.array([-0.1, T + 0.1]), T, s).max() == 0.0


@pytest.mark.statistical
def test_sampler_follows_universal_density(random_state, measure):
    # Kolmogorov–Smirnov distance between the sampler and the density's CDF. The DKW
    # inequality bounds its failure probability: P(sup |F_n - F| > 0.02) <= 2 exp(-2 n 0.02²)
    # = 2.3e-7 for n = 20000, whatever the seed.
    T, s = 2.0, 20.0
    t = np.sort(sample_universal(20000, T, s, random_state))
    assert t.min() >= 0 and t.max() <= T
    probe = np.linspace(0, T, 41)[1:-1]
    cdf = np.array(
        [
            quad(lambda u: universal_density(u, T, s), 0, p, points=[T / s**2], limit=200)[0]
            for p in probe
        ]
    )
    emp = np.searchsorted(t, probe) / len(t)
    assert measure("ks", np.abs(emp - cdf).max()) < 0.02


@pytest.mark.statistical
def test_statistical_dimension_of_bandlimited_is_time_bandwidth_product(random_state, measure):
    # s_λ ≈ 2FT plus a term logarithmic in 1/λ (prolate spheroidal eigenvalues).
    F = float(random_state.uniform(3, 6))
    s1 = statistical_dimension(Bandlimited(F), 1.0, regularization=1e-6)
    s2 = statistical_dimension(Bandlimited(2 * F), 1.0, regularization=1e-6)
    assert 2 * F < s1 < 2 * F + 12
    # Doubling the band adds the time-bandwidth product 2FT (plus the slowly growing log term);
    # the ratio s2 / s1 is not a fixed number for small F (measured 1.59 at F = 3).
    assert 1.0 < measure("growth", (s2 - s1) / (2 * F)) < 1.15
    assert statistical_dimension(Bandlimited(F), 1.0, regularization=1e-10) > s1


def test_statistical_dimension_of_separated_sparse_spectrum_is_its_size(random_state):
    k = int(random_state.randint(3, 8))
    freqs = 3.0 * np.arange(k) - 3.0 * (k // 2)
    s = statistical_dimension(SparseFrequencies(freqs), 1.0, regularization=1e-8)
    assert abs(s - k) < 1e-3


def test_statistical_dimension_warns_when_quadrature_is_capped(monkeypatch):
    monkeypatch.setattr(fourier, "MAX_NODES", 300)  # the real cap (3000) is slow to reach
    with pytest.warns(UserWarning, match="may be under-estimated"):
        statistical_dimension(Bandlimited(1.0), 10.0)


def test_default_sample_count_scales_like_s_log_s():
    assert default_signal_samples(10.0) == int(np.ceil(40 * np.log(10)))
    ratio = default_signal_samples(200.0) / default_signal_samples(100.0)
    assert 2.0 < ratio < 2.4


# --- reconstruction ------------------------------------------------------------------------


@pytest.mark.statistical
def test_bandlimited_recovered_to_noise_level_with_default_samples(random_state, measure):
    # Samples ∝ s_λ log s_λ recover the signal to the noise level, for growing bandwidth.
    sigma = 1e-3
    for F in (3.0, 8.0):
        spec = Bandlimited(F)
        f = _translates(spec, random_state)
        scale = np.sqrt(np.mean(f(GRID) ** 2))
        noise = sigma * scale

        def noisy(t, f=f, noise=noise):
            return f(t) + noise * random_state.standard_normal(t.shape)

        rec = reconstruct_signal(noisy, 1.0, spec, regularization=sigma**2, random_state=random_state)
        assert len(rec.times) == default_signal_samples(rec.statistical_dimension)
        assert measure(f"error_over_sigma_F{F:g}", _rel(rec, f) / sigma) < 5


@pytest.mark.statistical
def test_error_falls_with_samples(random_state, measure):
    spec = Bandlimited(4.0)
    f = _translates(spec, random_state)
    s = statistical_dimension(spec, 1.0, regularization=1e-10)
    errs = [
        np.median(
            [
                _rel(reconstruct_signal(f, 1.0, spec, m, regularization=1e-10, random_state=random_state), f)
                for _ in range(3)
            ]
        )
        for m in (int(s), int(2 * s * np.log(s)), int(8 * s * np.log(s)))
    ]
    # From s to 2 s ln s samples the error falls by >= 1174x (10 seed offsets,
    # tools/stat_runs.py). Past that it sits at the ridge floor of λ = 1e-10 (~1.5e-9):
    # 8 s ln s was only 1.19 +- 0.12x better (min 1.045), so the old errs[1] > errs[2]
    # was ~1.6 sd from failing; checked as the floor instead (max 2.2e-9, bound 1e-7).
    assert measure("first_over_second", errs[0] / errs[1]) > 10
    measure("second_over_third", errs[1] / errs[2])
    assert measure("third", errs[2]) < 1e-7


@pytest.mark.statistical
def test_multiband_real_signal(random_state, measure):
    spec = Multiband([(-14.0, -11.0), (11.0, 14.0)])
    freqs, phases = random_state.uniform(11, 14, size=6), random_state.uniform(0, 2 * np.pi, size=6)
    amps = random_state.standard_normal(6)

    def f(t):
        return np.cos(2 * np.pi * freqs * np.asarray(t)[..., None] + phases) @ amps

    rec = reconstruct_signal(f, 1.0, spec, regularization=1e-10, random_state=random_state)
    out = rec(GRID)
    assert np.isrealobj(out)
    assert measure("error", _rel(rec, f)) < 1e-3
    # far fewer samples than the statistical dimension cannot work: measured 0.53 +- 0.23
    # (min 0.27) over 10 seed offsets; 0.05 is 6 sd below in log scale (sd 0.4)
    few = reconstruct_signal(
        f, 1.0, spec, int(rec.statistical_dimension / 3), regularization=1e-10, random_state=random_state
    )
    assert measure("error_few", _rel(few, f)) > 0.05


@pytest.mark.statistical
def test_sparse_clustered_frequencies_complex_signal(random_state, measure):
    # Frequencies closer than 1/T: the class is ill-conditioned (polynomial-like).
    freqs = np.sort(random_state.uniform(-2.0, 2.0, size=6))
    coef = random_state.standard_normal(6) + 1j * random_state.standard_normal(6)

    def f(t):
        return np.exp(2j * np.pi * np.asarray(t)[..., None] * freqs) @ coef

    rec = reconstruct_signal(
        f, 1.0, SparseFrequencies(freqs), regularization=1e-12, random_state=random_state
    )
    assert np.iscomplexobj(rec(GRID))
    assert measure("error", _rel(rec, f)) < 1e-3


@pytest.mark.parametrize(
    "spec,reg", [(GaussianSpectrum(0.08), 1e-8), (MaternSpectrum(2.5, 0.3), 1e-5)]
)
@pytest.mark.statistical
def test_gp_kriging(spec, reg, random_state, measure):
    f = _translates(spec, random_state)
    rec = reconstruct_signal(f, 1.0, spec, regularization=reg, random_state=random_state)
    assert measure("error", _rel(rec, f)) < 1e-2


def test_uniform_sampling_is_gp_posterior_mean(random_state):
    # With uniform samples the weights are 1/m, and the weighted ridge regression is the
    # kriging / GP posterior mean k(t, S)(K + m λ k(0) I)^{-1} y.
    spec, reg, m = GaussianSpectrum(0.1), 1e-4, 40
    f = _translates(spec, random_state)
    rec = reconstruct_signal(
        f, 1.0, spec, m, regularization=reg, sampling="uniform", random_state=random_state
    )
    K = spec.kernel(rec.times[:, None] - rec.times[None, :])
    alpha = np.linalg.solve(K + m * reg * np.eye(m), f(rec.times))
    np.testing.assert_allclose(rec(GRID), spec.kernel(GRID[:, None] - rec.times) @ alpha, atol=1e-8)


@pytest.mark.statistical
def test_power_spectrum_matches_closed_form_kernel(random_state, measure):
    F = 2.0
    user = PowerSpectrum(lambda xi: np.ones_like(xi), (-F, F))
    tau = random_state.uniform(-2, 2, size=50)
    np.testing.assert_allclose(user.kernel(tau), Bandlimited(F).kernel(tau), atol=1e-10)
    f = _translates(Bandlimited(F), random_state)
    rec = reconstruct_signal(f, 1.0, user, regularization=1e-8, random_state=random_state)
    assert measure("error", _rel(rec, f)) < 1e-3


def _ridge_leverage(spectrum, reg, t, T=1.0, n=400):
    """Ridge leverage function τ(t) of 𝒦 on [0, T] (∫ τ dt/T = s_λ), Nyström-extended."""
    x, w = np.polynomial.legendre.leggauss(n)
    nodes, w = (x + 1) * T / 2, w / 2
    sw = np.sqrt(w)
    e, V = np.linalg.eigh(sw[:, None] * spectrum.kernel(nodes[:, None] - nodes[None, :]) * sw[None, :])
    keep = e > 1e-3 * reg
    e, V = e[keep], V[:, keep]
    phi = (spectrum.kernel(t[:, None] - nodes[None, :]) * w) @ (V / sw[:, None]) / e
    return (phi**2 * (e / (e + reg))).sum(1)


def test_universal_needs_fewer_samples_than_uniform():
    # Narrow band at a tiny ridge: the class is polynomial-like and its leverage peaks at
    # the ends, where uniform sampling under-samples. Importance sampling from a density p
    # needs a number of samples proportional to sup_t τ(t) / (T p(t)) (the paper's Thm. 1
    # argument); for the universal density it is 3x smaller than for uniform sampling
    # (measured 44 against 133; the budget 2 s ln s gives only a ~1.3x lower median error
    # over many draws, too small to test on a few). Deterministic.
    spec, reg, T = Bandlimited(2.0), 1e-12, 1.0
    s = statistical_dimension(spec, T, regularization=reg)
    t = np.concatenate([np.linspace(0.0, T, 4001), np.geomspace(1e-6, 1e-2, 200)])
    tau = _ridge_leverage(spec, reg, t, T)
    assert abs(tau[:4001].mean() - s) < 0.01 * s  # ∫ τ dt/T = s_λ
    uniform = tau.max()  # p = 1/T
    universal = (tau / (T * universal_density(t, T, s))).max()
    assert uniform > s**2 / 2  # edge leverage O(s_λ²)
    assert universal < uniform / 2.5


@pytest.mark.statistical
def test_mixture_keeps_uniform_efficiency_for_bandlimited_signals(random_state, measure):
    # For a wide band at moderate λ the leverage function is nearly flat, and the
    # universal density (which spends a log factor at the ends) needs more samples
    # than uniform; the half/half mixture stays within 2x of uniform. Seeded.
    spec, reg = Bandlimited(10.0), 1e-8
    s = statistical_dimension(spec, 1.0, regularization=reg)
    m = int(3 * s)

    def median_error(sampling):
        return np.median(
            [
                _rel(
                    reconstruct_signal(
                        f, 1.0, spec, m, regularization=reg, sampling=sampling, random_state=random_state
                    ),
                    f,
                )
                for f in [_translates(spec, random_state) for _ in range(5)]
            ]
        )

    # Over 10 seed offsets: mixture 1.0e-6 +- 0.9e-6 (max 3.4e-6), universal 0.18 +- 0.15
    # but as low as 2.6e-4, so the old "universal > 1e-3" failed (offset 7): universal's
    # error at 3 s_λ spans three decades. Checked: the mixture reaches 1e-3 (> 2 decades
    # of margin) and beats the universal density (by >= 2.4 decades in every offset).
    mixture, universal = median_error("mixture"), median_error("universal")
    assert measure("mixture", mixture) < 1e-3
    assert measure("universal_over_mixture", universal / mixture) > 1


@pytest.mark.statistical
@pytest.mark.parametrize("sampling", ["mixture", "universal", "uniform"])
def test_importance_weights_are_unbiased(sampling, random_state, measure):
    # Σ_j v_j g(t_j) is unbiased for (1/T) ∫_0^T g; check with g = 1 and g = t / T
    # (6-sigma bound over independent draws, seeded).
    T = 3.0
    sums = []
    for _ in range(200):
        rec = reconstruct_signal(
            np.cos, T, Bandlimited(1.0), 40, sampling=sampling, random_state=random_state
        )
        sums.append([rec.weights.sum(), rec.weights @ rec.times / T])
    sums = np.array(sums)
    se = sums.std(0) / np.sqrt(len(sums))
    z = np.abs(sums.mean(0) - [1.0, 0.5]) / np.maximum(se, 1e-300)
    # two z-scores at 6 standard errors (2 x 2e-9); uniform sampling's weights are exact
    assert np.all((measure("max_z", z.max()) < 6) | (np.abs(sums.mean(0) - [1.0, 0.5]) < 1e-12))


def test_random_state_has_scikit_learn_meaning():
    # int: a fresh RandomState(int); RandomState: used as is (advances); None: numpy's
    # global RandomState (np.random.seed makes it reproducible).
    def times(random_state):
        return reconstruct_signal(np.cos, 1.0, Bandlimited(1.0), 12,
                                  random_state=random_state).times

    np.testing.assert_array_equal(times(9), times(9))
    np.testing.assert_array_equal(times(9), times(np.random.RandomState(9)))
    shared = np.random.RandomState(9)
    assert not np.array_equal(times(shared), times(shared))
    np.random.seed(9)
    first = times(None)
    np.random.seed(9)
    np.testing.assert_array_equal(first, times(None))
    np.testing.assert_array_equal(first, times(9))
    np.testing.assert_array_equal(sample_universal(5, 1.0, 4.0, random_state=3),
                                  sample_universal(5, 1.0, 4.0, np.random.RandomState(3)))


def test_result_attributes():
    rec = reconstruct_signal(np.cos, 2.0, Bandlimited(1.0), 30, random_state=0)
    assert isinstance(rec, ReconstructedSignal)
    assert rec.times.shape == rec.weights.shape == rec.coef.shape == (30,)
    assert rec.times.min() >= 0 and rec.times.max() <= 2.0
    assert rec(np.zeros((2, 3))).shape == (2, 3)


# --- errors --------------------------------------------------------------------------------


def test_error_samples_fn_not_callable():
    with pytest.raises(TypeError, match="samples_fn must be callable"):
        reconstruct_signal(np.ones(3), 1.0, Bandlimited(1.0))


def test_error_nonpositive_T():
    with pytest.raises(ValueError, match="T must be > 0.0, got 0.0"):
        reconstruct_signal(np.cos, 0.0, Bandlimited(1.0))


def test_error_spectrum_wrong_type():
    with pytest.raises(TypeError, match="spectrum must be one of"):
        reconstruct_signal(np.cos, 1.0, "bandlimited")


def test_error_nonpositive_bandwidth():
    with pytest.raises(ValueError, match="bandwidth must be > 0.0, got -1.0"):
        Bandlimited(-1.0)


def test_error_inverted_band():
    with pytest.raises(ValueError, match="bands must be finite with lo < hi"):
        Multiband([(3.0, 1.0)])


def test_error_sparse_weights_mismatch():
    with pytest.raises(ValueError, match="weights must be 2 finite positive numbers"):
        SparseFrequencies([1.0, 2.0], weights=[1.0])


def test_error_power_spectrum_bad_support():
    with pytest.raises(ValueError, match="support must be a finite interval"):
        PowerSpectrum(np.ones_like, (1.0, -1.0))


def test_error_nonpositive_regularization():
    with pytest.raises(ValueError, match="regularization must be > 0.0, got 0.0"):
        reconstruct_signal(np.cos, 1.0, Bandlimited(1.0), regularization=0.0)


def test_error_unknown_sampling():
    with pytest.raises(ValueError, match="sampling must be one of"):
        reconstruct_signal(np.cos, 1.0, Bandlimited(1.0), sampling="grid")


def test_error_zero_samples():
    with pytest.raises(ValueError, match="n_samples must be >= 1, got 0"):
        reconstruct_signal(np.cos, 1.0, Bandlimited(1.0), 0)


def test_error_samples_fn_wrong_shape():
    with pytest.raises(
        ValueError, match=r"samples_fn must return one value per time, shape \(10,\)"
    ):
        reconstruct_signal(lambda t: t[:3], 1.0, Bandlimited(1.0), 10)


def test_error_samples_fn_nan():
    with pytest.raises(ValueError, match="samples_fn must return finite numbers"):
        reconstruct_signal(lambda t: t * np.nan, 1.0, Bandlimited(1.0), 10)


def test_error_evaluate_nan_time():
    rec = reconstruct_signal(np.cos, 1.0, Bandlimited(1.0), 10, random_state=0)
    with pytest.raises(ValueError, match="t must be finite"):
        rec(np.array([0.5, np.nan]))


def test_error_random_state_generator(np_rng):
    with pytest.raises(TypeError, match="random_state must be None, an int or a numpy.random"
                                        ".RandomState .*got Generator"):
        reconstruct_signal(np.cos, 1.0, Bandlimited(1.0), 10, random_state=np_rng)
    with pytest.raises(TypeError, match="random_state must be None, an int or"):
        sample_universal(5, 1.0, 4.0, random_state=0.5)


# --- extreme parameters ------------------------------------------------------------------


@pytest.mark.parametrize("nu", [0.5, 2.5, 30.0, 49.0, 60.0, 170.0, 171.0, 1e3, 1e6, 1e12, 1e300])
def test_matern_kernel_finite_for_any_smoothness(nu):
    # MaternSpectrum(1e6, 1.0).kernel returned NaN (Γ(ν) and r^ν overflow); it is finite in
    # [0, 1], 1 at 0, decreasing in |τ|, and tends to the Gaussian exp(-τ²/(2ℓ²)) as ν grows
    tau = np.array([0.0, 1e-300, 1e-120, 1e-8, 0.1, 1.0, 3.0, 1e3, 1e10, 1e200, -1.0])
    k = MaternSpectrum(nu, 1.0).kernel(tau)
    assert np.all(np.isfinite(k)) and np.all((k >= 0) & (k <= 1))
    assert k[0] == 1.0 and k[1] == pytest.approx(1.0, abs=1e-12) and k[-1] == k[5]
    assert np.all(np.diff(k[:-1]) <= 0) and k[-3] == k[-2] == 0.0
    if nu >= 1e6:
        np.testing.assert_allclose(k[:-1], np.exp(-tau[:-1] ** 2 / 2), rtol=1e-5, atol=1e-300)


@pytest.mark.parametrize("nu", [0.5, 1.5, 2.5, 10.0, 45.0])
def test_matern_kernel_matches_closed_forms(nu):
    # half-integer closed forms; between, scipy's K_ν where it does not overflow
    from scipy.special import gamma, kv

    tau = np.linspace(0.01, 4.0, 50)
    r = np.sqrt(2 * nu) * tau
    want = {
        0.5: np.exp(-r),
        1.5: (1 + r) * np.exp(-r),
        2.5: (1 + r + r**2 / 3) * np.exp(-r),
    }.get(nu, 2 ** (1 - nu) / gamma(nu) * r**nu * kv(nu, r))
    np.testing.assert_allclose(MaternSpectrum(nu, 1.0).kernel(tau), want, rtol=1e-12)


@pytest.mark.parametrize("nu", [50.5, 60.0, 100.0, 150.0])
def test_matern_debye_branch_matches_scipy(nu):
    # above ν = 50 the Debye expansion replaces K_ν where the closed form overflows; where
    # both are finite they agree to 1e-10 (measured 5.8e-11 at ν = 50.5)
    from scipy.special import gamma, kv

    from kernelsketch.recovery.fourier import _debye_matern

    tau = np.array([1e-3, 0.1, 0.5, 1.0, 2.0, 5.0])
    r = np.sqrt(2 * nu) * tau
    with np.errstate(over="ignore", invalid="ignore"):
        want = 2 ** (1 - nu) / gamma(nu) * r**nu * kv(nu, r)
    ok = np.isfinite(want)
    np.testing.assert_allclose(_debye_matern(nu, 2 * tau[ok] ** 2), want[ok], rtol=1e-10)


@pytest.mark.parametrize(
    "T,s,match",
    [(-1.0, 4.0, "T must be >= 1e-280"), (np.nan, 4.0, "T must be finite"),
     (1.0, -4.0, "s must be > 0.0"), (1.0, np.inf, "s must be finite")],
)
def test_sample_universal_rejects_bad_lengths(T, s, match):
    # negative and NaN lengths were accepted and gave negative or NaN times
    with pytest.raises(ValueError, match=match):
        sample_universal(3, T, s, random_state=0)


def test_sample_universal_rejects_too_many_draws():
    with pytest.raises(ValueError, match=f"n must be <= {2**27}"):
        sample_universal(10**12, 1.0, 4.0, random_state=0)


def test_power_spectrum_refuses_unaffordable_quadrature_before_allocating():
    # PowerSpectrum(..., (-1e4, 1e4)) asked for 27 GiB (leggauss on 60024 nodes)
    spec = PowerSpectrum(np.ones_like, (-1e4, 1e4))
    with pytest.raises(ValueError, match=r"tau must satisfy \(hi - lo\) \* max\|tau\| <= 1357"):
        spec.kernel(np.array([0.0, 1.0]))
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="narrow the support"):
        statistical_dimension(spec, 1.0)


def test_power_spectrum_kernel_is_chunked_and_exact(random_state):
    # evaluation in blocks gives the unblocked values
    user = PowerSpectrum(lambda xi: np.exp(-(xi**2)), (-3.0, 3.0))
    tau = random_state.uniform(-2, 2, size=(7, 300))
    x, w = np.polynomial.legendre.leggauss(24 + int(3 * 6.0 * np.abs(tau).max()))
    xi, w = 3.0 * x, 3.0 * w * np.exp(-((3.0 * x) ** 2))
    want = np.real(np.exp(2j * np.pi * tau[..., None] * xi) @ (w / w.sum()))
    np.testing.assert_allclose(user.kernel(tau), want, atol=1e-12)


@pytest.mark.parametrize("support", [(1.0,), (1.0, 2.0, 3.0), ("a", "b"), 5.0])
def test_power_spectrum_support_must_be_a_pair(support):
    with pytest.raises(ValueError, match="support must be a pair"):
        PowerSpectrum(np.ones_like, support)


def test_power_spectrum_density_zero_everywhere_rejected():
    with pytest.raises(ValueError, match="density must be positive somewhere"):
        PowerSpectrum(np.zeros_like, (-1.0, 1.0)).kernel(np.zeros(2))


def test_sample_count_bounds():
    with pytest.raises(ValueError, match=f"n_samples must be <= {2**14}"):
        reconstruct_signal(np.cos, 1.0, Bandlimited(1.0), 10**6)
    with pytest.raises(ValueError, match=f"n_nodes must be <= {2**13}"):
        statistical_dimension(Bandlimited(1.0), 1.0, n_nodes=10**6)
    with pytest.raises(ValueError, match="s must be >= 0.0"):
        default_signal_samples(-1.0)
    with pytest.raises(ValueError, match="s must be finite"):
        default_signal_samples(float("nan"))


def test_reconstruction_evaluates_in_blocks(monkeypatch):
    rec = reconstruct_signal(np.cos, 1.0, Bandlimited(2.0), 40, random_state=0)
    t = np.linspace(0, 1, 1001)
    whole = rec(t)
    monkeypatch.setattr(fourier, "_CHUNK_ELEMENTS", 100)
    np.testing.assert_allclose(rec(t.reshape(7, 143)), whole.reshape(7, 143), rtol=1e-13)


def test_kernels_at_extreme_arguments():
    # found by tests/fuzz/test_fuzz_recovery.py: sinc of an overflowed argument was NaN
    # (Bandlimited(1e300) at τ = 3e7), and τ²/ℓ² was 0/0 for ℓ = 1e-300 at τ = 0
    assert Bandlimited(1e300).kernel(np.array([0.0, 2.9e7])).tolist() == [1.0, 0.0]
    np.testing.assert_array_equal(GaussianSpectrum(1e-300).kernel(np.array([0.0, 1.0])), [1, 0])
    np.testing.assert_array_equal(MaternSpectrum(2.5, 1e-300).kernel(np.array([0.0, 1.0])),
                                  [1, 0])
    assert Multiband([(-1e300, -1.0), (1.0, 1e300)]).kernel(np.array([0.0]))[0] == 1.0
    with pytest.raises(ValueError, match=r"tau must keep frequency \* tau within"):
        SparseFrequencies([1e300]).kernel(np.array([1e300]))
    for spec in (Bandlimited(1.0), GaussianSpectrum(1.0), MaternSpectrum(1.5, 1.0)):
        with pytest.raises(ValueError, match="tau must be finite"):
            spec.kernel(np.array([0.0, np.nan]))


def test_density_limits():
    # a subnormal T made the density overflow; s near 1e154 overflowed 1/s² (OverflowError)
    # and s = 6e304 the default sample count (OverflowError converting inf to int)
    with pytest.raises(ValueError, match="T must be >= 1e-280"):
        universal_density(np.zeros(1), 2.2e-309, 1.0)
    with pytest.raises(ValueError, match="s must be <= 1000000000000000.0"):
        sample_universal(3, 1.0, 1.34e154, random_state=0)
    with pytest.raises(ValueError, match="s must be <= 1000000000000000.0"):
        default_signal_samples(6.4e304)
    with pytest.raises(ValueError, match="t must not contain NaN"):
        universal_density(np.array([0.5, np.nan]), 1.0, 4.0)
    p = universal_density(np.array([0.0, 0.5e-280]), 1e-280, 1e15)
    assert np.all(np.isfinite(p)) and np.all(p > 0)
