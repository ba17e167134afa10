"""Scaling-law fits: the compute frontier L(C), the loss surface L(N, D), bootstrap intervals,
compute-optimal allocation and isoFLOP profiles.

Conventions:
- Every fit works on log-loss, and positive quantities (L_inf, F, E, A, B) are optimised as
  logarithms, so they stay positive and the problem is well scaled.
- N and D (or C) are divided by their geometric mean before fitting (a pure reparametrisation:
  the reported A, B, F are in the original units) so the optimiser sees numbers of order one.
- Non-linear fits run L-BFGS (scipy) from the best few points of a grid of initialisations
  (as Hoffmann et al. 2022 did for L(N, D)); bootstrap replicates restart from the full-data optimum.
- Bad input (too few points, a single model size, nothing finite) raises `FitError`, a
  ValueError saying what was expected. Fits that ran but should not be trusted come back with
  `reliable=False` and the reasons in `warnings`.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # optional: only makes the fits faster on busy machines
    threadpool_limits = None


class FitError(ValueError):
    """The data cannot support the fit asked for (the message says why)."""


# ------------------------------------------------------------------------------------------
# helpers


def _single_threaded(function):
    """Run a fit with one BLAS thread: scipy's L-BFGS-B makes many tiny BLAS calls, and letting
    OpenBLAS wake threads for each made fits ~5x slower on a loaded 2-core machine."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        limit = threadpool_limits(1) if threadpool_limits else nullcontext()
        with limit:
            return function(*args, **kwargs)

    return wrapper


def _as_1d(name: str, values) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise FitError(f"{name} must be an array of numbers ({err})") from None
    return array


def _clean(names_values: dict, what: str):
    """Keep the rows where every array is finite and > 0; returns (arrays, keep mask)."""
    arrays = {name: _as_1d(name, v) for name, v in names_values.items()}
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise FitError(f"{what}: arrays must have the same length, got {lengths}")
    keep = np.ones(next(iter(lengths.values())), dtype=bool)
    for array in arrays.values():
        keep &= np.isfinite(array) & (array > 0)
    return {name: a[keep] for name, a in arrays.items()}, keep


def _logsumexp_terms(terms):
    """log(sum(exp(t))) over a list of broadcastable arrays, and each term's softmax weight."""
    top = terms[0]
    for term in terms[1:]:
        top = np.maximum(top, term)
    exps = [np.exp(term - top) for term in terms]
    total = sum(exps)
    return top + np.log(total), [e / total for e in exps]


def _huber(r, delta):
    """Huber loss divided by delta (so gradients are O(1)) and its derivative."""
    if delta is None:
        return 0.5 * r * r, r
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r * r / delta, np.abs(r) - 0.5 * delta)
    return value, np.clip(r, -delta, delta) / delta


def _best_of_grid(objective, batch_objective, grid: np.ndarray, top_k: int, bounds, extra_starts=()):
    """L-BFGS from the `top_k` best grid points (and any extra starts); the best result, or None."""
    with np.errstate(all="ignore"):
        chunks = np.array_split(grid, max(1, len(grid) // 256))  # bounded memory for many points
        values = np.concatenate([batch_objective(chunk) for chunk in chunks])
    values = np.where(np.isfinite(values), values, np.inf)
    starts = [grid[i] for i in np.argsort(values)[:top_k] if np.isfinite(values[i])]
    starts += [np.asarray(s, dtype=np.float64) for s in extra_starts]
    return _best_of_starts(objective, starts, bounds)


def _lbfgs(objective, start, bounds):
    """L-BFGS-B from `start`. Bounds keep log-scale offsets (log L_inf, log E) from drifting
    towards -inf when the data want them at 0, which would otherwise take a thousand steps."""
    low = [-np.inf if lo is None else lo for lo, _ in bounds]
    high = [np.inf if hi is None else hi for _, hi in bounds]
    start = np.clip(np.asarray(start, dtype=np.float64), low, high)
    with np.errstate(all="ignore"):
        try:
            result = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds,
                              options={"maxiter": 1000, "ftol": 1e-12, "gtol": 1e-9})
        except (ValueError, FloatingPointError, np.linalg.LinAlgError):
            return None
    if not (np.isfinite(result.fun) and np.all(np.isfinite(result.x))):
        return None
    return result


def _interval(samples: np.ndarray, level: float):
    samples = samples[np.isfinite(samples)]
    if len(samples) == 0:
        return [float("nan"), float("nan")]
    tail = 0.5 * (1.0 - level)
    low, high = np.quantile(samples, [tail, 1.0 - tail])
    return [float(low), float(high)]


@dataclass
class BootstrapResult:
    """Percentile bootstrap: `samples[name]` holds one value per successful replicate."""

    samples: dict
    ci: dict  # name -> [low, high]
    ci_level: float
    n_boot: int
    n_failed: int


def bootstrap(fit_fn, *arrays, n_boot: int = 200, ci: float = 0.95, seed: int = 0, groups=None) -> BootstrapResult:
    """Percentile confidence intervals of the numbers `fit_fn(*arrays)` returns (a dict name -> float).

    Each replicate resamples rows with replacement (or, with `groups`, whole groups such as runs)
    and calls `fit_fn` on the resampled arrays. Replicates whose fit fails or returns non-finite
    numbers are counted in `n_failed` and left out of the intervals.
    """
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"bootstrap arrays must have the same length, got {[len(a) for a in arrays]}")
    rng = np.random.default_rng(seed)
    if groups is not None:
        groups = np.asarray(groups)
        members = [np.flatnonzero(groups == g) for g in dict.fromkeys(groups.tolist())]
    collected: dict = {}
    failed = 0
    for _ in range(n_boot):
        if groups is None:
            index = rng.integers(0, n, size=n)
        else:
            index = np.concatenate([members[i] for i in rng.integers(0, len(members), size=len(members))])
        try:
            values = fit_fn(*[a[index] for a in arrays])
        except (ValueError, FloatingPointError, np.linalg.LinAlgError, ZeroDivisionError):
            failed += 1
            continue
        if not all(np.isfinite(v) for v in values.values()):
            failed += 1
            continue
        for name, value in values.items():
            collected.setdefault(name, []).append(float(value))
    samples = {name: np.asarray(v) for name, v in collected.items()}
    return BootstrapResult(samples=samples, ci={name: _interval(v, ci) for name, v in samples.items()},
                           ci_level=ci, n_boot=n_boot, n_failed=failed)


class _Serialisable:
    """to_dict / from_dict for the fit dataclasses; fields marked json=False stay in memory only."""

    def to_dict(self) -> dict:
        out = {"kind": type(self).__name__}
        for f in dataclasses.fields(self):
            if f.metadata.get("json", True):
                out[f.name] = _plain(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls, data: dict):
        names = {f.name for f in dataclasses.fields(cls) if f.metadata.get("json", True)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def _wide(ci, value) -> bool:
    low, high = ci
    return not (np.isfinite(low) and np.isfinite(high)) or (high - low) > 2.0 * abs(value)


# ------------------------------------------------------------------------------------------
# the compute frontier L(C) = L_inf + F C^-gamma


def lower_envelope(x, loss) -> np.ndarray:
    """Indices of the points that reach the lowest loss so far: sorted by x, each strictly below
    every point at smaller or equal x (the Pareto frontier of loss against compute)."""
    x = np.asarray(x, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    order = np.lexsort((loss, x))
    sorted_loss = loss[order]
    best_before = np.concatenate([[np.inf], np.minimum.accumulate(sorted_loss)[:-1]])
    return order[sorted_loss < best_before]


@dataclass
class FrontierFit(_Serialisable):
    """L(x) = l_inf + F x^-gamma fitted to the lowest loss reached at each x (compute or wall-clock)."""

    axis: str  # "compute" (FLOPs) or "wall" (seconds)
    l_inf_mode: object  # "fit" or the fixed value used
    params: dict  # l_inf, F, gamma
    ci: dict  # name -> [low, high]
    ci_level: float
    n_input: int  # finite positive points given
    n_dropped: int  # points dropped for being non-finite or <= 0
    n_points: int  # frontier points the law was fitted to
    frontier_x: list
    frontier_loss: list
    left_out_x: list  # envelope points set by the smallest or largest model (not fitted)
    left_out_loss: list
    rmse_log: float  # root mean square of log(L) - log(fit) on the frontier
    n_boot: int
    n_boot_failed: int
    reliable: bool
    warnings: list
    samples: dict = field(default_factory=dict, repr=False, metadata={"json": False})

    def predict(self, x):
        x = np.asarray(x, dtype=np.float64)
        p = self.params
        return p["l_inf"] + np.exp(np.log(p["F"]) - p["gamma"] * np.log(x))


def _frontier_problem(u, y, l_inf_fixed):
    """(value, gradient) of the mean squared error of log L - log(L_inf + e^(f - gamma u)) over the
    variance of log L, and the same for a batch of parameter vectors. Parameters: [f, gamma], plus
    e = log L_inf when L_inf is fitted (l_inf_fixed None)."""
    n = len(y)
    scale = n * max(float(np.var(y)), 1e-8)
    log_fixed = None if not l_inf_fixed else np.log(l_inf_fixed)

    def objective(theta):
        power = theta[0] - theta[1] * u
        if l_inf_fixed is None or log_fixed is not None:
            e = theta[2] if l_inf_fixed is None else log_fixed
            top = np.maximum(power, e)
            x_p, x_e = np.exp(power - top), np.exp(e - top)
            total = x_p + x_e
            r = top + np.log(total) - y
            w_p = x_p / total
        else:
            r, w_p = power - y, 1.0
        rw = r * w_p
        grad = [rw.sum(), -(rw @ u)]
        if l_inf_fixed is None:
            grad.append((r * x_e / total).sum())
        return 0.5 * float(r @ r) / scale, np.asarray(grad) / scale

    def batch(grid):
        power = grid[:, 0:1] - grid[:, 1:2] * u
        if l_inf_fixed is None:
            lse, _ = _logsumexp_terms([power, np.broadcast_to(grid[:, 2:3], power.shape)])
        elif log_fixed is not None:
            lse, _ = _logsumexp_terms([power, np.full_like(power, log_fixed)])
        else:
            lse = power
        return 0.5 * ((lse - y) ** 2).sum(axis=-1) / scale

    return objective, batch


def _fit_frontier_points(x, loss, l_inf, starts=None, top_k=6):
    """Fit the law to frontier points; returns (params, theta, rmse_log) or raises FitError."""
    x0 = float(np.exp(np.mean(np.log(x))))
    u, y = np.log(x / x0), np.log(loss)
    fixed = None if l_inf == "fit" else float(l_inf)
    objective, batch = _frontier_problem(u, y, fixed)
    # f and gamma free; log L_inf at least 1e-6 of the lowest loss (indistinguishable from 0).
    bounds = [(None, None), (None, None)]
    if fixed is None:
        bounds.append((np.log(loss.min()) - 14.0, np.log(loss.max())))
    if starts is None:
        grid_axes = [np.log(np.median(loss)) + np.log([0.03, 0.1, 0.3, 0.6, 1.0]),
                     np.array([0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0])]
        if fixed is None:
            grid_axes.append(np.log(loss.min()) + np.log([0.01, 0.1, 0.3, 0.5, 0.7, 0.9]))
        grid = np.array(list(itertools.product(*grid_axes)))
        best = _best_of_grid(objective, batch, grid, top_k, bounds)
    else:
        best = _best_of_starts(objective, starts, bounds)
    if best is None:
        raise FitError("the frontier fit did not converge from any initialisation")
    f, gamma = best.x[0], best.x[1]
    l_inf_value = float(np.exp(best.x[2])) if fixed is None else fixed
    lse, _ = _logsumexp_terms(_frontier_terms_plain(best.x, u, fixed))
    rmse = float(np.sqrt(np.mean((lse - y) ** 2)))
    params = {"l_inf": l_inf_value, "F": float(np.exp(f + gamma * np.log(x0))), "gamma": float(gamma)}
    return params, best.x, rmse


def _frontier_terms_plain(theta, u, fixed):
    power = theta[0] - theta[1] * u
    if fixed is None:
        return [power, np.full_like(power, theta[2])]
    if fixed == 0.0:
        return [power]
    return [power, np.full_like(power, np.log(fixed))]


def frontier_indices(x, loss, sizes=None):
    """(used, left_out): envelope indices fitted, and those left out for being set by the smallest
    or largest model (see `fit_frontier`)."""
    x = np.asarray(x, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    sizes = None if sizes is None else np.asarray(sizes, dtype=np.float64)
    envelope = lower_envelope(x, loss)
    if sizes is None or len(np.unique(sizes)) < 3:
        return envelope, envelope[:0]
    inner = (sizes[envelope] > sizes.min()) & (sizes[envelope] < sizes.max())
    return envelope[inner], envelope[~inner]


@_single_threaded
def fit_frontier(x, loss, *, sizes=None, l_inf="fit", axis: str = "compute", n_boot: int = 200,
                 ci: float = 0.95, seed: int = 0, min_points: int | None = None) -> FrontierFit:
    """Fit L(x) = L_inf + F x^-gamma to the lowest loss reached at each x.

    x: compute (FLOPs) or wall-clock seconds of every validation point of every run of one
    architecture; loss: the validation losses. The lower envelope is taken here, so pass all
    points. l_inf: "fit" (>= 0, fitted), or a fixed value (0 as the study assumes).
    sizes: model size N of each point. When given (and there are 3 or more sizes), envelope
    points set by the smallest or the largest model are left out: whether a smaller (larger)
    model would have done better there is unknown, and keeping them bends the fitted curve.
    Bootstrap replicates resample the envelope points.
    """
    if axis not in ("compute", "wall"):
        raise ValueError(f"axis must be 'compute' or 'wall', got {axis!r}")
    if not (l_inf == "fit" or (isinstance(l_inf, (int, float)) and np.isfinite(l_inf) and l_inf >= 0)):
        raise ValueError(f"l_inf must be 'fit' or a finite number >= 0, got {l_inf!r}")
    columns = {"x": x, "loss": loss} if sizes is None else {"x": x, "loss": loss, "sizes": sizes}
    data, keep = _clean(columns, "fit_frontier")
    x, loss, sizes, dropped = data["x"], data["loss"], data.get("sizes"), int((~keep).sum())
    n_params = 3 if l_inf == "fit" else 2
    min_points = n_params + 1 if min_points is None else min_points
    if len(x) == 0:
        raise FitError(f"fit_frontier: no finite positive (x, loss) points ({dropped} dropped)")
    index, left_out = frontier_indices(x, loss, sizes)
    fx, floss = x[index], loss[index]
    if len(fx) < min_points:
        extra = f" ({len(left_out)} more, set by the smallest or largest model, left out)" if len(left_out) else ""
        raise FitError(f"fit_frontier: the lowest-loss envelope has {len(fx)} usable point(s){extra}; "
                       f"fitting {n_params} parameters needs at least {min_points} (give more runs or "
                       "validation points)")
    params, theta, rmse = _fit_frontier_points(fx, floss, l_inf)

    def refit(bx, bl):
        if len(np.unique(bx)) < n_params:
            raise FitError("too few distinct points in replicate")
        p, _, _ = _fit_frontier_points(bx, bl, l_inf, starts=[theta])
        return p

    # Intervals resample the envelope points (given which points form the envelope). Re-taking
    # the envelope of resampled raw points instead biases it upwards: a minimum over fewer points.
    boot = bootstrap(refit, fx, floss, n_boot=n_boot, ci=ci, seed=seed)
    ci_values = {name: boot.ci.get(name, [float("nan")] * 2) for name in params}
    notes = []
    serious = False
    decades = float(np.log10(fx.max() / fx.min()))
    if decades < 1.0:
        notes.append(f"the frontier spans only {decades:.2f} decades of {axis}")
        serious = True
    if params["gamma"] <= 0:
        notes.append(f"gamma = {params['gamma']:.3g} <= 0: the loss does not fall along the frontier")
        serious = True
    if l_inf == "fit" and params["l_inf"] > 0.9 * floss.min():
        notes.append("L_inf is close to the lowest loss reached: the frontier has barely started to bend")
    if n_boot and boot.n_failed > 0.2 * n_boot:
        notes.append(f"{boot.n_failed} of {n_boot} bootstrap fits failed")
        serious = True
    if n_boot and _wide(ci_values["gamma"], params["gamma"]):
        notes.append("the interval of gamma is wider than twice its value")
        serious = True
    return FrontierFit(axis=axis, l_inf_mode=l_inf, params=params, ci=ci_values, ci_level=ci,
                       n_input=len(x), n_dropped=dropped, n_points=len(fx), frontier_x=fx.tolist(),
                       frontier_loss=floss.tolist(), left_out_x=x[left_out].tolist(),
                       left_out_loss=loss[left_out].tolist(), rmse_log=rmse, n_boot=n_boot,
                       n_boot_failed=boot.n_failed, reliable=not serious, warnings=notes,
                       samples=boot.samples)


# ------------------------------------------------------------------------------------------
# the loss surface L(N, D) = E + A N^-alpha + B D^-beta


@dataclass
class LossSurfaceFit(_Serialisable):
    """L(N, D) = E + A N^-alpha + B D^-beta fitted with a Huber loss on log L."""

    params: dict  # E, A, alpha, B, beta (A and B in the units of N and D given)
    ci: dict
    ci_level: float
    n_points: int
    n_dropped: int
    n_distinct_N: int
    n_distinct_D: int
    N_range: list
    D_range: list
    huber_delta: float
    objective: float  # mean Huber loss / delta at the optimum
    rmse_log: float
    n_boot: int
    n_boot_failed: int
    reliable: bool
    warnings: list
    samples: dict = field(default_factory=dict, repr=False, metadata={"json": False})

    def predict(self, N, D):
        p = self.params
        N = np.asarray(N, dtype=np.float64)
        D = np.asarray(D, dtype=np.float64)
        return (p["E"] + np.exp(np.log(p["A"]) - p["alpha"] * np.log(N))
                + np.exp(np.log(p["B"]) - p["beta"] * np.log(D)))


def _surface_problem(u, v, y, delta):
    """(value, gradient) of the mean Huber loss of log L - log(e^e + e^(a - alpha u) + e^(b - beta v)),
    and the same value for a batch of parameter vectors (rows of a grid)."""
    n = len(y)

    def objective(theta):
        e, a, alpha, b, beta = theta
        t_n, t_d = a - alpha * u, b - beta * v
        top = np.maximum(np.maximum(t_n, t_d), e)
        x_e, x_n, x_d = np.exp(e - top), np.exp(t_n - top), np.exp(t_d - top)
        total = x_e + x_n + x_d
        value, slope = _huber(top + np.log(total) - y, delta)
        g = slope / (n * total)  # d(mean loss)/d(term i) = slope * softmax weight_i / n
        gn, gd = g * x_n, g * x_d
        return float(value.mean()), np.array([g @ x_e, gn.sum(), -(gn @ u), gd.sum(), -(gd @ v)])

    def batch(grid):
        e, a, alpha, b, beta = (column[:, None] for column in grid.T)
        lse, _ = _logsumexp_terms([np.broadcast_to(e, (len(grid), n)), a - alpha * u, b - beta * v])
        value, _ = _huber(lse - y, delta)
        return value.mean(axis=-1)

    return objective, batch


def _best_of_starts(objective, starts, bounds):
    """The lowest L-BFGS result over the given initialisations (None if none converged)."""
    best = None
    for start in starts:
        result = _lbfgs(objective, start, bounds)
        if result is not None and (best is None or result.fun < best.fun):
            best = result
    return best


def _fit_surface_points(N, D, loss, delta, starts=None, top_k=8, grid_points=2000, rng=None):
    N0 = float(np.exp(np.mean(np.log(N))))
    D0 = float(np.exp(np.mean(np.log(D))))
    u, v, y = np.log(N / N0), np.log(D / D0), np.log(loss)
    objective, _ = _surface_problem(u, v, y, delta)
    # log E at least 1e-6 of the lowest loss (indistinguishable from 0); the rest free.
    bounds = [(np.log(loss.min()) - 14.0, np.log(loss.max()))] + [(None, None)] * 4
    if starts is None:
        # Rank the grid on a subsample when there are many points (ranking only needs a rough value).
        if len(y) > grid_points:
            pick = (rng or np.random.default_rng(0)).choice(len(y), grid_points, replace=False)
            _, batch = _surface_problem(u[pick], v[pick], y[pick], delta)
        else:
            _, batch = _surface_problem(u, v, y, delta)
        exponents = np.array([0.05, 0.15, 0.3, 0.5, 0.8, 1.2])
        grid = np.array(list(itertools.product(
            np.log(loss.min()) + np.log([0.05, 0.3, 0.6, 0.9]),
            np.log(np.median(loss)) + np.log([0.01, 0.05, 0.2, 0.5, 1.0]), exponents,
            np.log(np.median(loss)) + np.log([0.01, 0.05, 0.2, 0.5, 1.0]), exponents)))
        best = _best_of_grid(objective, batch, grid, top_k, bounds)
    else:
        best = _best_of_starts(objective, starts, bounds)
    if best is None:
        raise FitError("the L(N, D) fit did not converge from any initialisation")
    e, a, alpha, b, beta = best.x
    with np.errstate(over="ignore"):  # a degenerate fit (tiny sweeps) may give A or B = inf: reported as is
        params = {"E": float(np.exp(e)), "A": float(np.exp(a + alpha * np.log(N0))), "alpha": float(alpha),
                  "B": float(np.exp(b + beta * np.log(D0))), "beta": float(beta)}
    lse, _ = _logsumexp_terms([np.full_like(u, e), a - alpha * u, b - beta * v])
    rmse = float(np.sqrt(np.mean((lse - y) ** 2)))
    return params, best.x, float(best.fun), rmse


@_single_threaded
def fit_loss_surface(N, D, loss, *, huber_delta: float = 1e-3, n_boot: int = 200, ci: float = 0.95,
                     seed: int = 0, groups=None) -> LossSurfaceFit:
    """Fit L(N, D) = E + A N^-alpha + B D^-beta (N parameters, D atoms seen) to validation points.

    Minimises the mean Huber loss (threshold `huber_delta`) between log L and the law's log,
    with L-BFGS from the best points of a grid of initialisations. Bootstrap intervals resample
    points, or whole `groups` (e.g. run ids) when given.
    """
    if not (isinstance(huber_delta, (int, float)) and huber_delta > 0):
        raise ValueError(f"huber_delta must be a number > 0, got {huber_delta!r}")
    data, keep = _clean({"N": N, "D": D, "loss": loss}, "fit_loss_surface")
    N, D, loss, dropped = data["N"], data["D"], data["loss"], int((~keep).sum())
    if groups is not None:
        groups = np.asarray(groups)
        if len(groups) != len(keep):
            raise FitError(f"groups must have one entry per point ({len(keep)}), got {len(groups)}")
        groups = groups[keep]
    n_N, n_D = len(np.unique(N)), len(np.unique(D))
    if len(loss) < 6:
        raise FitError(f"fit_loss_surface: {len(loss)} finite positive point(s) ({dropped} dropped); "
                       "fitting 5 parameters needs at least 6")
    if n_N < 2:
        raise FitError(f"fit_loss_surface: all points have the same model size N={N[0]:.4g}; "
                       "alpha cannot be fitted from a single width (sweep at least 3 widths)")
    if n_D < 2:
        raise FitError(f"fit_loss_surface: all points have the same data size D={D[0]:.4g}; "
                       "beta cannot be fitted (log several validation points per run)")
    params, theta, objective, rmse = _fit_surface_points(N, D, loss, huber_delta)

    def refit(bN, bD, bl):
        if len(np.unique(bN)) < 2 or len(np.unique(bD)) < 2:
            raise FitError("degenerate replicate")
        p, _, _, _ = _fit_surface_points(bN, bD, bl, huber_delta, starts=[theta])
        return p

    boot = bootstrap(refit, N, D, loss, n_boot=n_boot, ci=ci, seed=seed, groups=groups)
    ci_values = {name: boot.ci.get(name, [float("nan")] * 2) for name in params}
    notes, serious = [], False
    if n_N < 3:
        notes.append(f"only {n_N} distinct model sizes: alpha rests on two points")
        serious = True
    for name in ("alpha", "beta"):
        if not 0.0 < params[name] < 3.0:
            notes.append(f"{name} = {params[name]:.3g} is outside (0, 3)")
            serious = True
        elif n_boot and _wide(ci_values[name], params[name]):
            notes.append(f"the interval of {name} is wider than twice its value")
            serious = True
    if n_boot and boot.n_failed > 0.2 * n_boot:
        notes.append(f"{boot.n_failed} of {n_boot} bootstrap fits failed")
        serious = True
    if len(loss) < 20:
        notes.append(f"only {len(loss)} points for 5 parameters")
    return LossSurfaceFit(params=params, ci=ci_values, ci_level=ci, n_points=len(loss), n_dropped=dropped,
                          n_distinct_N=n_N, n_distinct_D=n_D, N_range=[float(N.min()), float(N.max())],
                          D_range=[float(D.min()), float(D.max())], huber_delta=float(huber_delta),
                          objective=objective, rmse_log=rmse, n_boot=n_boot, n_boot_failed=boot.n_failed,
                          reliable=not serious, warnings=notes, samples=boot.samples)


# ------------------------------------------------------------------------------------------
# compute-optimal allocation


@dataclass
class ComputeOptimal(_Serialisable):
    """N* ∝ C^a, D* ∝ C^b and L*(C) - E ∝ C^-gamma implied by alpha and beta.

    With C = k N D (k = 3 kappa: training FLOPs per parameter per atom), minimising
    A N^-alpha + B D^-beta at fixed C gives N* = G (C/k)^a and D* = (C/k)^b / G with
    a = beta/(alpha+beta), b = alpha/(alpha+beta), G = (alpha A / (beta B))^(1/(alpha+beta)),
    and the frontier exponent gamma = alpha beta / (alpha + beta).
    """

    alpha: float
    beta: float
    a: float
    b: float
    gamma: float
    ci: dict  # a, b, gamma -> [low, high] (from bootstrap samples of alpha and beta, when given)
    ci_level: float
    G: float | None  # N* = G (C/k)^a, when A, B are given
    k: float | None  # training FLOPs per parameter per atom, when given
    reliable: bool
    warnings: list

    def n_opt(self, C):
        if self.G is None or self.k is None:
            raise ValueError("n_opt needs A, B and k: pass them to compute_optimal")
        return self.G * (np.asarray(C, dtype=np.float64) / self.k) ** self.a

    def d_opt(self, C):
        C = np.asarray(C, dtype=np.float64)
        return C / self.k / self.n_opt(C)


def _allocation(alpha, beta):
    total = alpha + beta
    return beta / total, alpha / total, alpha * beta / total


def compute_optimal(alpha, beta=None, *, A=None, B=None, k=None, samples=None, ci: float = 0.95) -> ComputeOptimal:
    """Compute-optimal exponents from alpha and beta (floats), or from a `LossSurfaceFit`
    passed as `alpha` (its A, B and bootstrap samples are used). `samples`: {"alpha": array,
    "beta": array} of bootstrap replicates, for intervals of a, b and gamma."""
    if isinstance(alpha, LossSurfaceFit):
        fit = alpha
        alpha, beta = fit.params["alpha"], fit.params["beta"]
        A, B = fit.params["A"], fit.params["B"]
        samples = fit.samples if samples is None else samples
        ci = fit.ci_level
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not isinstance(value, (int, float, np.floating)) or not np.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if alpha + beta == 0:
        raise ValueError("alpha + beta must not be 0")
    a, b, gamma = _allocation(float(alpha), float(beta))
    notes = []
    if alpha <= 0 or beta <= 0:
        notes.append("alpha and beta must both be > 0 for a compute-optimal allocation to exist")
    intervals = {}
    if samples and len(samples.get("alpha", ())) and len(samples.get("beta", ())):
        sa, sb = np.asarray(samples["alpha"]), np.asarray(samples["beta"])
        with np.errstate(all="ignore"):
            sa_, sb_, sg_ = _allocation(sa, sb)
        intervals = {"a": _interval(sa_, ci), "b": _interval(sb_, ci), "gamma": _interval(sg_, ci)}
    G = None
    if A is not None and B is not None and alpha > 0 and beta > 0:
        G = float((alpha * A / (beta * B)) ** (1.0 / (alpha + beta)))
    if k is not None and not (np.isfinite(k) and k > 0):
        raise ValueError(f"k (training FLOPs per parameter per atom) must be a finite number > 0, got {k!r}")
    return ComputeOptimal(alpha=float(alpha), beta=float(beta), a=a, b=b, gamma=gamma, ci=intervals, ci_level=ci,
                          G=G, k=None if k is None else float(k), reliable=not notes, warnings=notes)


def intervals_overlap(ci1, ci2) -> bool:
    """Whether two [low, high] intervals share a value (NaN intervals never overlap)."""
    if not all(np.isfinite(v) for v in (*ci1, *ci2)):
        return False
    return max(ci1[0], ci2[0]) <= min(ci1[1], ci2[1])


# ------------------------------------------------------------------------------------------
# isoFLOP profiles


@dataclass
class IsoflopProfiles(_Serialisable):
    """Loss against N at fixed compute budgets, interpolated along each run's curve (log-log).

    For each budget whose lowest loss is not at the smallest or largest size, a parabola in
    log N is fitted around that lowest point; its vertex estimates N*(C). The slope of log N* against log C
    estimates the allocation exponent a independently of the L(N, D) fit.
    """

    budgets: list  # per budget: {"C", "N": [...], "loss": [...], "N_opt", "loss_opt", "interior"}
    a: float | None  # slope of log N_opt vs log C over budgets with an interior optimum
    n_interior: int
    warnings: list


def isoflop_profiles(run, N, C, loss, *, n_budgets: int = 5, budgets=None, min_runs: int = 3) -> IsoflopProfiles:
    """IsoFLOP profiles from all points of one architecture (`run` ids, sizes N, compute C, loss)."""
    data, keep = _clean({"N": N, "C": C, "loss": loss}, "isoflop_profiles")
    run = np.asarray(run)
    if len(run) != len(keep):
        raise FitError(f"run must have one entry per point ({len(keep)}), got {len(run)}")
    run = run[keep]
    curves = []
    for run_id in dict.fromkeys(run.tolist()):
        mask = run == run_id
        order = np.argsort(data["C"][mask])
        logc = np.log(data["C"][mask][order])
        if len(logc) >= 2:
            curves.append((float(data["N"][mask][0]), logc, np.log(data["loss"][mask][order])))
    notes = []
    if len(curves) < min_runs:
        return IsoflopProfiles(budgets=[], a=None, n_interior=0,
                               warnings=[f"isoFLOP profiles need at least {min_runs} runs, got {len(curves)}"])
    if budgets is None:
        candidates = np.linspace(min(c[1][0] for c in curves), max(c[1][-1] for c in curves), 64)
        covered = [lc for lc in candidates if sum(c[1][0] <= lc <= c[1][-1] for c in curves) >= min_runs]
        if not covered:
            return IsoflopProfiles(budgets=[], a=None, n_interior=0,
                                   warnings=[f"no compute budget is reached by {min_runs} runs"])
        # evenly spread over the budgets that enough runs reach (not over the whole range:
        # that can be covered in pieces)
        picks = np.unique(np.linspace(0, len(covered) - 1, n_budgets).round().astype(int))
        log_budgets = np.asarray(covered)[picks]
    else:
        log_budgets = np.log(np.asarray(budgets, dtype=np.float64))
    profiles = []
    for lc in log_budgets:
        sizes, losses = [], []
        for size, logc, logl in curves:
            if logc[0] <= lc <= logc[-1]:
                sizes.append(size)
                losses.append(float(np.exp(np.interp(lc, logc, logl))))
        order = np.argsort(sizes)
        sizes, losses = np.asarray(sizes)[order], np.asarray(losses)[order]
        entry = {"C": float(np.exp(lc)), "N": sizes.tolist(), "loss": losses.tolist(), "N_opt": None,
                 "loss_opt": None, "interior": False, "parabola": None, "parabola_N": None}
        lowest = int(np.argmin(losses)) if len(losses) else 0
        # A parabola in log N only describes the profile near its minimum: fit the lowest point
        # and up to two neighbours on each side, and only when the lowest point is not an end.
        if len(np.unique(sizes)) >= 3 and 0 < lowest < len(sizes) - 1:
            window = slice(max(0, lowest - 2), lowest + 3)
            coefs = np.polyfit(np.log(sizes[window]), np.log(losses[window]), 2)
            entry["parabola"] = coefs.tolist()
            entry["parabola_N"] = [float(sizes[window][0]), float(sizes[window][-1])]
            vertex = -coefs[1] / (2 * coefs[0]) if coefs[0] > 0 else None
            if vertex is not None and np.log(sizes[0]) < vertex < np.log(sizes[-1]):
                entry.update(N_opt=float(np.exp(vertex)), loss_opt=float(np.exp(np.polyval(coefs, vertex))),
                             interior=True)
        profiles.append(entry)
    interior = [p for p in profiles if p["interior"]]
    a = None
    if len(interior) >= 2:
        a = float(np.polyfit(np.log([p["C"] for p in interior]), np.log([p["N_opt"] for p in interior]), 1)[0])
    else:
        notes.append(f"{len(interior)} budget(s) with the optimum inside the sampled sizes: no slope")
    return IsoflopProfiles(budgets=profiles, a=a, n_interior=len(interior), warnings=notes)
