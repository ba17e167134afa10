"""Law fits on data drawn from known laws (generated here, independently of nffk.scaling)."""
import json

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from nffk.scaling import fit as F
from nffk.scaling.fit import (FitError, FrontierFit, LossSurfaceFit, bootstrap, compute_optimal, fit_frontier,
                              fit_loss_surface, isoflop_profiles, lower_envelope)


def frontier_runs(seed, l_inf=0.05, gamma=0.3, n_runs=12, per_run=25, sigma=0.01):
    """Runs whose loss curves touch L(x) = l_inf + F x^-gamma at one point each and lie above it
    elsewhere (a parabola in log x), with log-normal noise: the shape of a compute sweep."""
    rng = np.random.default_rng(seed)
    F_ = 0.1 * 1e14 ** gamma
    xs, losses, sizes = [], [], []
    for size, centre in enumerate(np.linspace(12.5, 15.5, n_runs)):
        lx = np.linspace(centre - 1.0, centre + 1.0, per_run)
        bump = 1 + 0.05 * (np.log(10) * (lx - centre)) ** 2
        xs.append(10 ** lx)
        losses.append((l_inf + F_ * 10 ** (-gamma * lx)) * bump * np.exp(sigma * rng.standard_normal(per_run)))
        sizes.append(np.full(per_run, 1e4 * 2.0 ** size))
    return np.concatenate(xs), np.concatenate(losses), np.concatenate(sizes)


def surface_points(seed, E=0.05, alpha=0.35, beta=0.45, sigma=0.02):
    """L(N, D) on 5 sizes x 12 data sizes with log-normal noise."""
    rng = np.random.default_rng(seed)
    A, B = 0.3 * 1e5 ** alpha, 0.3 * 1e6 ** beta
    N = np.repeat(np.geomspace(3e3, 1e6, 5), 12)
    D = np.tile(np.geomspace(2e5, 6e6, 12), 5)
    L = (E + A * N ** -alpha + B * D ** -beta) * np.exp(sigma * rng.standard_normal(len(N)))
    return N, D, L


# ----------------------------------------------------------------------------- building blocks


def test_lower_envelope_matches_brute_force():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 40, 300).astype(float)  # ties in x on purpose
    loss = rng.random(300)
    # on the envelope: no other point reaches a lower loss with no more compute
    expected = {i for i in range(300) if not any(x[j] <= x[i] and loss[j] < loss[i] for j in range(300))}
    got = lower_envelope(x, loss)
    assert {int(i) for i in got} == expected
    assert np.all(np.diff(x[got]) > 0) and np.all(np.diff(loss[got]) < 0)


@pytest.mark.parametrize("fixed", [None, 0.0, 0.02])
def test_frontier_objective_gradient(fixed):
    rng = np.random.default_rng(2)
    u, y = rng.normal(size=40), rng.normal(size=40) * 0.3
    objective, batch = F._frontier_problem(u, y, fixed)
    theta = np.array([-0.5, 0.4, -2.0][: 3 if fixed is None else 2])
    value, grad = objective(theta)
    assert batch(theta[None, :])[0] == pytest.approx(value, rel=1e-12)
    for i in range(len(theta)):
        step = np.zeros_like(theta)
        step[i] = 1e-6
        numeric = (objective(theta + step)[0] - objective(theta - step)[0]) / 2e-6
        assert grad[i] == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def test_surface_objective_gradient():
    rng = np.random.default_rng(3)
    u, v, y = rng.normal(size=50), rng.normal(size=50), rng.normal(size=50) * 0.2
    objective, batch = F._surface_problem(u, v, y, delta=0.05)  # residuals on both sides of delta
    theta = np.array([-2.0, -1.0, 0.4, -1.5, 0.6])
    value, grad = objective(theta)
    assert batch(theta[None, :])[0] == pytest.approx(value, rel=1e-12)
    for i in range(5):
        step = np.zeros(5)
        step[i] = 1e-6
        numeric = (objective(theta + step)[0] - objective(theta - step)[0]) / 2e-6
        assert grad[i] == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def test_bootstrap_of_a_mean_has_the_textbook_width():
    rng = np.random.default_rng(4)
    values = rng.normal(3.0, 2.0, 400)
    result = bootstrap(lambda v: {"mean": v.mean()}, values, n_boot=400, seed=1)
    low, high = result.ci["mean"]
    assert low < 3.0 < high
    assert (high - low) == pytest.approx(2 * 1.96 * 2.0 / np.sqrt(400), rel=0.2)
    assert result.n_failed == 0 and len(result.samples["mean"]) == 400


def test_bootstrap_groups_resample_whole_groups():
    groups = np.repeat(np.arange(5), 10)
    seen = []
    bootstrap(lambda g: seen.append(np.bincount(g, minlength=5)) or {"n": len(g)}, groups, n_boot=20, groups=groups)
    for counts in seen:  # each group drawn 0, 10, 20, ... times
        assert np.all(counts % 10 == 0) and counts.sum() == 50


# ----------------------------------------------------------------------------- recovering known laws


@pytest.mark.parametrize("l_inf", ["fit", 0.0])
def test_frontier_recovers_gamma_within_its_interval(l_inf):
    truth = 0.3
    covered, errors = 0, []
    for seed in range(6):
        x, loss, sizes = frontier_runs(seed, l_inf=0.05 if l_inf == "fit" else 0.0, gamma=truth)
        fit = fit_frontier(x, loss, sizes=sizes, l_inf=l_inf, n_boot=60, seed=seed)
        low, high = fit.ci["gamma"]
        covered += low <= truth <= high
        errors.append(fit.params["gamma"] - truth)
        assert fit.reliable, fit.warnings
        # a wrong law (gamma off by 0.05) lies outside the interval: the check can fail
        assert not (low <= truth + 0.05 <= high) and not (low <= truth - 0.05 <= high)
    assert covered >= 5, f"95 % intervals held the truth in only {covered} of 6 seeds (errors {errors})"
    assert np.max(np.abs(errors)) < 0.02


def test_frontier_with_wrong_l_inf_is_rejected():
    # data with a large floor fitted by a pure power law (L_inf = 0): the exponent comes out far
    # off and its interval excludes the truth; fitting L_inf gets close to it.
    x, loss, sizes = frontier_runs(0, l_inf=0.3, gamma=0.3, sigma=0.005)
    wrong = fit_frontier(x, loss, sizes=sizes, l_inf=0.0, n_boot=60)
    right = fit_frontier(x, loss, sizes=sizes, l_inf="fit", n_boot=60)
    assert not (wrong.ci["gamma"][0] <= 0.3 <= wrong.ci["gamma"][1])
    assert abs(wrong.params["gamma"] - 0.3) > 0.1
    assert abs(right.params["gamma"] - 0.3) < 0.03
    assert right.params["l_inf"] == pytest.approx(0.3, rel=0.05)


def test_loss_surface_recovers_exponents_within_intervals():
    truth = {"alpha": 0.35, "beta": 0.45}
    covered = {name: 0 for name in truth}
    for seed in range(5):
        N, D, L = surface_points(seed, **truth)
        fit = fit_loss_surface(N, D, L, n_boot=60, seed=seed)
        assert fit.reliable, fit.warnings
        for name, value in truth.items():
            low, high = fit.ci[name]
            covered[name] += low <= value <= high
            assert abs(fit.params[name] - value) < 0.08
        # wrong laws are rejected: alpha 0.5 or beta 0.75 lie outside the intervals
        assert not fit.ci["alpha"][0] <= 0.5 <= fit.ci["alpha"][1]
        assert not fit.ci["beta"][0] <= 0.75 <= fit.ci["beta"][1]
    assert min(covered.values()) >= 4, covered


def test_loss_surface_noise_free_is_exact():
    N, D, L = surface_points(0, sigma=0.0)
    fit = fit_loss_surface(N, D, L, n_boot=0)
    assert fit.params["alpha"] == pytest.approx(0.35, abs=1e-3)
    assert fit.params["beta"] == pytest.approx(0.45, abs=1e-3)
    assert fit.params["E"] == pytest.approx(0.05, rel=1e-2)
    assert fit.params["A"] == pytest.approx(0.3 * 1e5 ** 0.35, rel=1e-2)
    assert fit.rmse_log < 1e-4


def test_fits_serialise_to_json_and_back():
    N, D, L = surface_points(1)
    surface = fit_loss_surface(N, D, L, n_boot=20)
    data = json.loads(json.dumps(surface.to_dict()))
    again = LossSurfaceFit.from_dict(data)
    assert again.params == surface.params and again.ci == surface.ci and data["kind"] == "LossSurfaceFit"
    x, loss, sizes = frontier_runs(1)
    frontier = fit_frontier(x, loss, sizes=sizes, n_boot=20)
    again = FrontierFit.from_dict(json.loads(json.dumps(frontier.to_dict())))
    assert np.allclose(again.predict([1e13, 1e14]), frontier.predict([1e13, 1e14]))


# ----------------------------------------------------------------------------- compute-optimal


def test_compute_optimal_matches_numeric_minimisation():
    alpha, beta, A, B, k = 0.3, 0.5, 40.0, 900.0, 6.0
    optimal = compute_optimal(alpha, beta, A=A, B=B, k=k)
    assert optimal.a == pytest.approx(beta / (alpha + beta)) and optimal.a + optimal.b == pytest.approx(1.0)
    budgets = np.geomspace(1e15, 1e21, 7)
    n_star, l_star = [], []
    for C in budgets:  # oracle: minimise A N^-alpha + B D^-beta over N with D = C / (k N)
        res = minimize_scalar(lambda t: A * np.exp(-alpha * t) + B * (C / (k * np.exp(t))) ** -beta,
                              bounds=(0, 60), method="bounded", options={"xatol": 1e-10})
        n_star.append(np.exp(res.x))
        l_star.append(res.fun)
    assert np.allclose(optimal.n_opt(budgets), n_star, rtol=1e-4)
    assert np.allclose(optimal.d_opt(budgets) * optimal.n_opt(budgets) * k, budgets)
    slope_n = np.polyfit(np.log(budgets), np.log(n_star), 1)[0]
    slope_l = -np.polyfit(np.log(budgets), np.log(l_star), 1)[0]
    assert slope_n == pytest.approx(optimal.a, abs=1e-4)
    assert slope_l == pytest.approx(optimal.gamma, abs=1e-4)
    assert optimal.gamma == pytest.approx(alpha * beta / (alpha + beta))


def test_compute_optimal_from_fit_has_intervals_and_checks_input():
    N, D, L = surface_points(2)
    surface = fit_loss_surface(N, D, L, n_boot=40)
    optimal = compute_optimal(surface, k=6.0)
    for name in ("a", "b", "gamma"):
        low, high = optimal.ci[name]
        assert low <= getattr(optimal, name) <= high
    with pytest.raises(ValueError, match="alpha"):
        compute_optimal(float("nan"), 0.3)
    with pytest.raises(ValueError, match="k"):
        compute_optimal(0.3, 0.3, k=-1.0)
    assert not compute_optimal(-0.1, 0.5).reliable


def test_isoflop_slope_recovers_allocation_exponent():
    # dense synthetic runs of L(N, D) = E + A N^-a + B D^-b at C = 6 N D
    alpha, beta = 0.4, 0.6
    A, B = 0.3 * 1e5 ** alpha, 0.3 * 1e6 ** beta
    sizes = np.geomspace(1e3, 1e7, 17)
    run, N, C, L = [], [], [], []
    for i, size in enumerate(sizes):
        d = np.geomspace(1e4, 1e10, 60)
        run += [f"r{i}"] * len(d)
        N += [size] * len(d)
        C += list(6 * size * d)
        L += list(0.05 + A * size ** -alpha + B * d ** -beta)
    iso = isoflop_profiles(np.array(run), N, C, L, n_budgets=6)
    assert iso.n_interior >= 3
    assert iso.a == pytest.approx(beta / (alpha + beta), abs=0.02)
    for budget in iso.budgets:  # an optimum is reported only where the sizes bracket it
        if budget["interior"]:
            assert min(budget["N"]) < budget["N_opt"] < max(budget["N"])


# ----------------------------------------------------------------------------- degenerate input


def test_degenerate_inputs_give_clear_errors():
    N, D, L = surface_points(3)
    with pytest.raises(FitError, match="single width"):
        fit_loss_surface(np.full_like(N, 1e5), D, L, n_boot=0)
    with pytest.raises(FitError, match="at least 6"):
        fit_loss_surface(N[:4], D[:4], L[:4], n_boot=0)
    with pytest.raises(FitError, match="same length"):
        fit_loss_surface(N, D[:-1], L, n_boot=0)
    with pytest.raises(FitError, match="no finite"):
        fit_frontier([1e12, 1e13], [float("nan"), -1.0])
    with pytest.raises(FitError, match="envelope has"):
        fit_frontier([1e12, 1e13, 1e14], [1.0, 0.9, 0.8], n_boot=0)
    with pytest.raises(ValueError, match="l_inf"):
        fit_frontier([1e12, 1e13], [1.0, 0.9], l_inf=-1.0)
    with pytest.raises(ValueError, match="axis"):
        fit_frontier([1e12, 1e13], [1.0, 0.9], axis="steps")
    assert issubclass(FitError, ValueError)


def test_non_finite_points_are_dropped_and_counted():
    N, D, L = surface_points(4)
    L = L.copy()
    L[[0, 7, 20]] = [np.nan, np.inf, -1.0]
    fit = fit_loss_surface(N, D, L, n_boot=10)
    assert fit.n_dropped == 3 and fit.n_points == len(L) - 3
    x, loss, sizes = frontier_runs(2)
    loss = loss.copy()
    loss[5] = np.nan
    assert fit_frontier(x, loss, sizes=sizes, n_boot=5).n_dropped == 1


def test_two_widths_fit_but_are_marked_unreliable():
    N, D, L = surface_points(5)
    keep = N <= np.unique(N)[1]
    fit = fit_loss_surface(N[keep], D[keep], L[keep], n_boot=20)
    assert not fit.reliable and any("2 distinct model sizes" in w for w in fit.warnings)


def test_flat_frontier_is_marked_unreliable():
    rng = np.random.default_rng(0)
    x = np.geomspace(1e12, 1e15, 60)
    loss = 0.5 * np.exp(0.01 * rng.standard_normal(60))  # no trend at all
    fit = fit_frontier(x, loss, l_inf=0.0, n_boot=40)
    assert not fit.reliable
