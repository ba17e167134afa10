"""Scaling-law report: fits every architecture of one or more sweeps and writes `report.md`,
`report.json` (every number) and PNG plots into an output directory.

    from nffk.scaling.report import write_report, print_exponents_table
    report = write_report(["runs/sweep"], "runs/report")
    print_exponents_table(report)
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from nffk.scaling.fit import (FitError, compute_optimal, fit_frontier, fit_loss_surface, frontier_indices,
                              intervals_overlap, isoflop_profiles)
from nffk.scaling.points import load_sweeps
from nffk.scaling.runlog import atomic_write_text, dumps

# Ngo & Ravanbakhsh, "Scaling Laws and Symmetry, Evidence from Neural Force Fields" (arXiv
# 2510.09768), as summarised in the project's STUDY.md. Only gamma had confidence intervals there.
PUBLISHED = {
    "MPNN": {"gamma_c": 0.14, "gamma_wall": 0.21, "alpha": 0.28, "beta": 0.31},
    "EGNN": {"gamma_c": 0.17, "gamma_wall": 0.27, "alpha": 0.39, "beta": 0.39},
    "GemNet-OC": {"gamma_c": 0.25, "gamma_wall": 0.33, "alpha": 0.52, "beta": 0.50},
    "eSEN (lmax 4)": {"gamma_c": 0.40, "gamma_wall": 0.45, "alpha": 0.82, "beta": 0.75},
    "eSEN (lmax 2)": {"gamma_c": 0.35},
}
PUBLISHED_SOURCE = "Ngo & Ravanbakhsh, arXiv 2510.09768 (ICLR 2026)"

PLOTS = {
    "loss_vs_compute": "loss_vs_compute.png",
    "loss_vs_wallclock": "loss_vs_wallclock.png",
    "frontiers": "frontiers.png",
    "loss_vs_params": "loss_vs_params.png",
    "loss_vs_data": "loss_vs_data.png",
    "isoflop": "isoflop.png",
}


# ------------------------------------------------------------------------------------------
# analysis


def _attempt(fits: dict, errors: dict, name: str, seconds: dict, function, *args, **kwargs):
    """Run one fit; a FitError becomes a recorded reason instead of stopping the report."""
    start = time.perf_counter()
    try:
        fits[name] = function(*args, **kwargs)
    except FitError as err:
        errors[name] = str(err)
    seconds[name] = time.perf_counter() - start


def _analyse_architecture(points, runs, settings) -> tuple[dict, dict]:
    """Fits for one architecture: (JSON-ready entry, fit objects for the plots)."""
    n_boot, ci, seed = settings["n_boot"], settings["ci"], settings["seed"]
    sizes = points.params if settings["trim_edges"] else None
    fits, errors, seconds = {}, {}, {}
    _attempt(fits, errors, "frontier", seconds, fit_frontier, points.flops, points.val_loss, sizes=sizes,
             l_inf=settings["frontier_l_inf"], axis="compute", n_boot=n_boot, ci=ci, seed=seed)
    _attempt(fits, errors, "frontier_wall", seconds, fit_frontier, points.wall, points.val_loss, sizes=sizes,
             l_inf=settings["frontier_l_inf"], axis="wall", n_boot=n_boot, ci=ci, seed=seed)
    _attempt(fits, errors, "loss_surface", seconds, fit_loss_surface, points.params, points.atoms_seen,
             points.val_loss, huber_delta=settings["huber_delta"], n_boot=n_boot, ci=ci, seed=seed)
    with np.errstate(all="ignore"):
        ratio = points.flops / (points.params * points.atoms_seen)
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    k = float(np.median(ratio)) if len(ratio) else None
    if "loss_surface" in fits:
        _attempt(fits, errors, "compute_optimal", seconds, compute_optimal, fits["loss_surface"], k=k)
    _attempt(fits, errors, "isoflop", seconds, isoflop_profiles, points.run, points.params, points.flops,
             points.val_loss)

    entry = {
        "label": points.label[0],
        "arch": points.arch[0],
        "lmax": points.lmax[0],
        "n_runs": len(runs),
        "n_runs_done": sum(r.status == "done" for r in runs),
        "n_points": len(points),
        "widths": sorted({int(w) for w in points.width}),
        "params": sorted({int(n) for n in points.params}),
        "flops_per_param_atom": k,
        "kappa": None if k is None else k / 3.0,
        "runs": [_run_entry(r, points) for r in runs],
        "errors": errors,
        "fit_seconds": seconds,
    }
    for name in ("frontier", "frontier_wall", "loss_surface", "compute_optimal", "isoflop"):
        entry[name] = fits[name].to_dict() if name in fits else None
    if "frontier" in fits:
        used, _ = frontier_indices(points.flops, points.val_loss, sizes)
        entry["frontier"]["n_runs"] = len(set(points.run[used].tolist()))
    entry["gamma_check"] = _gamma_check(fits)
    return entry, fits


def _run_entry(run, points) -> dict:
    mine = points.subset(points.run == run.run_id)
    last = int(np.argmax(mine.step)) if len(mine) else None
    return {"run_id": run.run_id, "status": run.status, "width": run.spec.get("width"),
            "params": None if last is None else int(mine.params[last]), "n_points": run.n_points,
            "n_records": run.n_records, "total_steps": run.total_steps, "seconds": run.seconds,
            "final_val_loss": None if last is None else float(mine.val_loss[last]),
            "final_atoms_seen": None if last is None else int(mine.atoms_seen[last]),
            "final_flops": None if last is None else float(mine.flops[last]),
            "sweep_dir": run.sweep_dir}


def _gamma_check(fits) -> dict | None:
    """The frontier exponent against alpha beta / (alpha + beta) from the L(N, D) fit."""
    if "frontier" not in fits or "compute_optimal" not in fits:
        return None
    frontier, optimal = fits["frontier"], fits["compute_optimal"]
    implied_ci = optimal.ci.get("gamma", [float("nan"), float("nan")])
    return {"gamma_c": frontier.params["gamma"], "gamma_c_ci": frontier.ci["gamma"],
            "gamma_implied": optimal.gamma, "gamma_implied_ci": implied_ci,
            "ratio": frontier.params["gamma"] / optimal.gamma if optimal.gamma else None,
            "consistent": intervals_overlap(frontier.ci["gamma"], implied_ci)}


def _stage_timings(data) -> dict:
    stages = {}
    for sweep in data.sweeps:
        for stage, seconds in (sweep.get("timings") or {}).items():
            stages[stage] = stages.get(stage, 0.0) + float(seconds)
    trained = [r.seconds for r in data.runs if isinstance(r.seconds, (int, float))]
    if trained:
        stages["runs (sum of run times)"] = float(sum(trained))
    return stages


def analyse(sweep_dirs, *, drop_fraction: float = 0.05, n_boot: int = 200, ci: float = 0.95, seed: int = 0,
            frontier_l_inf=0.0, trim_edges: bool = True, huber_delta: float = 1e-3):
    """Load the sweeps and fit every architecture: (report dict, {label: fits}, SweepData)."""
    settings = {"drop_fraction": drop_fraction, "n_boot": n_boot, "ci": ci, "seed": seed,
                "frontier_l_inf": frontier_l_inf, "trim_edges": trim_edges, "huber_delta": huber_delta}
    start = time.perf_counter()
    data = load_sweeps(sweep_dirs, drop_fraction=drop_fraction)
    if len(data.points) == 0:
        raise ValueError(f"no validation points found in {[str(d) for d in sweep_dirs]} "
                         "(no run has written metrics.jsonl yet?)")
    runs_by_label = {}
    for run in data.runs:
        runs_by_label.setdefault(run.label, []).append(run)
    architectures, all_fits = {}, {}
    for label, points in data.points.group_by("label").items():
        entry, fits = _analyse_architecture(points, runs_by_label.get(label, []), settings)
        architectures[label], all_fits[label] = entry, fits
    from nffk import __version__

    report = {
        "nffk_version": __version__,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "sweep_dirs": [str(d) for d in sweep_dirs],
        "settings": settings,
        "n_runs": len(data.runs),
        "n_points": len(data.points),
        "architectures": architectures,
        "stage_timings": _stage_timings(data),
        "sweep_meta": [{"path": s.get("path"), "meta": s.get("meta", {}), "created": s.get("created")}
                       for s in data.sweeps],
        "load_warnings": data.warnings,
        "published": {"source": PUBLISHED_SOURCE, "values": PUBLISHED},
        "analysis_seconds": time.perf_counter() - start,
    }
    return report, all_fits, data


def write_report(sweep_dirs, out_dir, **settings) -> dict:
    """Fit every architecture of the sweeps and write report.md, report.json and the plots
    into `out_dir`; returns the report as read back from report.json. Settings: see `analyse`."""
    if isinstance(sweep_dirs, (str, Path)):
        sweep_dirs = [sweep_dirs]
    out_dir = Path(out_dir)
    report, fits, data = analyse(sweep_dirs, **settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report["plots"] = write_plots(data, fits, out_dir)
    report["plot_seconds"] = time.perf_counter() - start
    text = dumps(report, indent=2) + "\n"
    atomic_write_text(out_dir / "report.json", text)
    report = json.loads(text)  # what the caller gets is exactly what the file holds
    atomic_write_text(out_dir / "report.md", render_markdown(report))
    return report


# ------------------------------------------------------------------------------------------
# tables


def _fmt(value, digits: int = 3) -> str:
    """0.185, 12.3, 3.36e+03: three decimals for numbers of order one, significant digits otherwise."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "—"
    if value == 0:
        return "0"
    if abs(value) >= 100 or abs(value) < 1e-3:
        return f"{value:.{digits}g}"
    return f"{value:.{digits}f}"


def _with_ci(value, ci, digits: int = 3) -> str:
    if value is None:
        return "—"
    if not ci or ci[0] is None or ci[1] is None:
        return _fmt(value, digits)
    return f"{_fmt(value, digits)} [{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]"


def exponent_rows(report: dict) -> list[dict]:
    """One row per architecture: the headline numbers as strings (shared by markdown and terminal)."""
    rows = []
    for label, entry in report["architectures"].items():
        frontier, wall = entry.get("frontier"), entry.get("frontier_wall")
        surface, optimal = entry.get("loss_surface"), entry.get("compute_optimal")

        def exponent(fit, name):
            if not fit:
                return "—"
            mark = "" if fit["reliable"] else " †"
            return _with_ci(fit["params"][name], fit["ci"].get(name)) + mark

        def allocation(name):
            if not optimal:
                return "—"
            value = optimal["gamma"] if name == "gamma" else optimal[name]
            return _with_ci(value, optimal["ci"].get(name))

        rows.append({"architecture": label, "runs": str(entry["n_runs"]), "points": str(entry["n_points"]),
                     "gamma_c": exponent(frontier, "gamma"), "gamma_wall": exponent(wall, "gamma"),
                     "alpha": exponent(surface, "alpha"), "beta": exponent(surface, "beta"),
                     "gamma_implied": allocation("gamma"), "a": allocation("a"), "b": allocation("b")})
    return rows


COLUMN_TITLES = {"architecture": "architecture", "runs": "runs", "points": "points", "gamma_c": "γ_c (compute)",
                 "gamma_wall": "γ (wall-clock)", "alpha": "α (N)", "beta": "β (D)",
                 "gamma_implied": "αβ/(α+β)", "a": "a = β/(α+β)", "b": "b = α/(α+β)"}


TERMINAL_COLUMNS = {"architecture": "architecture", "runs": "runs/pts", "gamma_c": "γ_c", "gamma_wall": "γ wall",
                    "alpha": "α", "beta": "β", "gamma_implied": "αβ/(α+β)", "a": "a"}


def _two_lines(cell: str) -> str:
    """'0.185 [0.179, 0.194] †' -> '0.185 †' over a dim '0.179–0.194' (narrow columns)."""
    if " [" not in cell:
        return cell
    value, rest = cell.split(" [", 1)
    interval, mark = rest.split("]", 1)
    return f"{value}{mark}\n[dim]{interval.replace(', ', '– ')}[/dim]"


def exponents_table(report: dict):
    """The exponents table as a rich Table for the terminal: each value over its interval."""
    from rich.table import Table

    level = int(round(100 * report["settings"]["ci"]))
    table = Table(title=f"scaling exponents ({level} % bootstrap intervals under the values; † unreliable)",
                  caption=f"a = β/(α+β): N* ∝ C^a.  Published: {report['published']['source']}")
    for key, title in TERMINAL_COLUMNS.items():
        if key == "architecture":
            table.add_column(title, no_wrap=True)
        else:
            table.add_column(title, justify="right", overflow="fold")  # narrow terminals wrap, never hide digits
    for row in exponent_rows(report):
        table.add_row(row["architecture"], f"{row['runs']}/{row['points']}",
                      *[_two_lines(row[key]) for key in list(TERMINAL_COLUMNS)[2:]])
    table.add_section()
    for name, values in report["published"]["values"].items():
        table.add_row(f"[dim]{name} (pub.)[/dim]", "",
                      *[f"[dim]{_fmt(values.get(k))}[/dim]" for k in ("gamma_c", "gamma_wall", "alpha", "beta")],
                      "", "")
    return table


def print_exponents_table(report: dict, console=None) -> None:
    from rich.console import Console

    (console or Console()).print(exponents_table(report))


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _surface_line(fit) -> str:
    p, c = fit["params"], fit["ci"]
    names = {"E": "E", "A": "A", "alpha": "α", "B": "B", "beta": "β"}
    return ", ".join(f"{symbol} = {_with_ci(p[name], c[name])}" for name, symbol in names.items())


def render_markdown(report: dict) -> str:
    settings = report["settings"]
    level = int(round(100 * settings["ci"]))
    l_inf = settings["frontier_l_inf"]
    out = [
        "# Scaling-law report",
        "",
        f"nffk {report['nffk_version']}, {report['created']}. Sweeps: "
        + ", ".join(f"`{d}`" for d in report["sweep_dirs"])
        + f" ({report['n_runs']} runs, {report['n_points']} validation points after dropping the first "
        f"{100 * settings['drop_fraction']:g} % of each run's steps).",
        "",
        "Laws: frontier L(C) = L∞ + F·C^−γ_c fitted to the lowest loss reached at each compute C "
        + ("(L∞ = 0, as in the study)" if l_inf == 0
           else f"(L∞ {'fitted' if l_inf == 'fit' else f'= {l_inf}'})")
        + ("; envelope points set by the smallest or largest model are left out" if settings["trim_edges"] else "")
        + "; the same against wall-clock seconds. "
        "L(N, D) = E + A·N^−α + B·D^−β (N parameters, D atoms seen) "
        f"fitted with a Huber loss (δ = {settings['huber_delta']:g}) on log L by L-BFGS from a grid of starts. "
        f"Intervals: {level} % percentile bootstrap over {settings['n_boot']} resamples of the points. "
        "Compute-optimal allocation: N* ∝ C^a, D* ∝ C^b with a = β/(α+β), b = α/(α+β); the frontier "
        "exponent should then be close to αβ/(α+β).",
        "",
        "## Exponents",
        "",
    ]
    keys = list(COLUMN_TITLES)
    rows = [[row[k] for k in keys] for row in exponent_rows(report)]
    for name, values in report["published"]["values"].items():
        published = [_fmt(values.get(k)) for k in ("gamma_c", "gamma_wall", "alpha", "beta")]
        rows.append([f"*{name}, published*", "", ""] + published + ["", "", ""])
    out += [_markdown_table([COLUMN_TITLES[k] for k in keys], rows), "",
            "† the fit ran but should not be trusted (reasons below). Published values: "
            f"{report['published']['source']} (different data, models and sizes: compare trends, not digits).", ""]
    out += ["## Per architecture", ""]
    for label, entry in report["architectures"].items():
        out += _architecture_section(label, entry)
    timings = report.get("stage_timings") or {}
    if timings:
        rows = [[stage, f"{seconds:.1f}"] for stage, seconds in timings.items()]
        out += ["## Stage timings", "", _markdown_table(["stage", "seconds"], rows), ""]
    out += [f"Analysis took {report['analysis_seconds']:.1f} s, plotting {report.get('plot_seconds', 0):.1f} s.", ""]
    if report.get("load_warnings"):
        out += ["## Warnings while loading", ""] + [f"- {w}" for w in report["load_warnings"]] + [""]
    out += ["## Plots", ""]
    for name in report.get("plots", []):
        out += [f"![{name}]({name})", ""]
    return "\n".join(out)


def _architecture_section(label: str, entry: dict) -> list[str]:
    out = [f"### {label}", ""]
    k = entry.get("flops_per_param_atom")
    out.append(f"- {entry['n_runs']} runs ({entry['n_runs_done']} finished), {entry['n_points']} points; widths "
               f"{entry['widths']}; N from {_fmt(min(entry['params']))} to {_fmt(max(entry['params']))} parameters"
               + (f"; C/(N·D) = {_fmt(k)} FLOPs per parameter per atom (κ = {_fmt(k / 3)})" if k else "") + ".")
    for name, title in (("frontier", "compute frontier"), ("frontier_wall", "wall-clock frontier")):
        fit = entry.get(name)
        if fit:
            p, c = fit["params"], fit["ci"]
            runs = f" from {fit['n_runs']} runs" if "n_runs" in fit else ""
            out.append(f"- {title}: γ = {_with_ci(p['gamma'], c['gamma'])}, F = {_fmt(p['F'])}, "
                       f"L∞ = {_fmt(p['l_inf'])}; {fit['n_points']} envelope points{runs} of {fit['n_input']} "
                       f"({len(fit['left_out_x'])} set by the edge models left out); "
                       f"rms log residual {_fmt(fit['rmse_log'])}.")
    surface = entry.get("loss_surface")
    if surface:
        out.append(f"- L(N, D): {_surface_line(surface)}; {surface['n_points']} points, {surface['n_distinct_N']} "
                   f"model sizes; rms log residual {_fmt(surface['rmse_log'])}.")
    optimal = entry.get("compute_optimal")
    if optimal:
        line = (f"- compute-optimal: N* ∝ C^{_fmt(optimal['a'])}, D* ∝ C^{_fmt(optimal['b'])}"
                f" (a in {_with_ci(optimal['a'], optimal['ci'].get('a'))})")
        if optimal.get("G") is not None and optimal.get("k") is not None:
            line += f"; N* = {_fmt(optimal['G'])}·(C/{_fmt(optimal['k'])})^a"
        out.append(line + ".")
    check = entry.get("gamma_check")
    if check:
        verdict = "consistent" if check["consistent"] else "NOT consistent (intervals do not overlap)"
        out.append(f"- check: frontier γ_c = {_with_ci(check['gamma_c'], check['gamma_c_ci'])} vs αβ/(α+β) = "
                   f"{_with_ci(check['gamma_implied'], check['gamma_implied_ci'])}: {verdict}.")
    iso = entry.get("isoflop")
    if iso and iso.get("a") is not None:
        out.append(f"- isoFLOP: slope of log N_opt against log C = {_fmt(iso['a'])} over {iso['n_interior']} "
                   "budgets (an independent estimate of a).")
    for name, reason in entry.get("errors", {}).items():
        out.append(f"- {name}: not fitted: {reason}")
    for name in ("frontier", "frontier_wall", "loss_surface", "compute_optimal", "isoflop"):
        for warning in (entry.get(name) or {}).get("warnings", []):
            out.append(f"- {name}: {warning}")
    out.append("")
    return out


# ------------------------------------------------------------------------------------------
# plots (matplotlib's object API with the Agg canvas: no global backend, no pyplot state)


def _figure(n_panels: int, width: float = 4.6, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(n_panels, 3)
    rows = -(-n_panels // cols)
    W, H = width * cols, height * rows
    figure = Figure(figsize=(W, H))
    # fixed margins in inches: a layout engine measures every tick label and doubles the drawing time
    figure.subplots_adjust(left=1.05 / W, right=1 - 0.15 / W, bottom=0.55 / H, top=1 - 0.6 / H,
                           wspace=0.38, hspace=0.55)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return figure, axes[:n_panels]


def _tidy_log_axes(ax):
    """Loss axes labelled at 1, 2, 5 x 10^k in plain numbers (a loss rarely spans many decades);
    no labels on minor ticks of a multi-decade x axis (they overlap)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    low, high = ax.get_xlim()
    if low > 0 and high / low >= 10:
        ax.xaxis.set_minor_formatter(NullFormatter())


def _size_colours(sizes):
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm

    sizes = np.asarray(sorted(set(sizes)), dtype=float)
    norm = LogNorm(sizes.min(), sizes.max() if sizes.max() > sizes.min() else sizes.min() * 1.01)
    cmap = colormaps["viridis"]
    return lambda n: cmap(0.9 * norm(n))


def _runs(points):
    """(N, sorted points of one run) per run, by size."""
    runs = []
    for run_id in points.run_ids():
        run = points.subset(points.run == run_id)
        order = np.argsort(run.step)
        runs.append((float(run.params[0]), run.subset(order)))
    return sorted(runs, key=lambda item: item[0])


def _plot_frontier_panels(data, fits, path, column: str, fit_name: str, xlabel: str):
    groups = data.points.group_by("label")
    figure, axes = _figure(len(groups))
    for ax, (label, points) in zip(axes, groups.items()):
        colour = _size_colours(points.params)
        for size, run in _runs(points):
            ax.plot(getattr(run, column), run.val_loss, "-", color=colour(size), lw=1, alpha=0.8,
                    label=f"N={size:.3g}")
        fit = fits[label].get(fit_name)
        title = label
        if fit is not None:
            ax.plot(fit.frontier_x, fit.frontier_loss, "o", ms=3, color="black", label="frontier points")
            if fit.left_out_x:
                ax.plot(fit.left_out_x, fit.left_out_loss, "x", ms=4, color="grey", label="left out (edge model)")
            x = np.geomspace(np.nanmin(getattr(points, column)), np.nanmax(getattr(points, column)), 100)
            ax.plot(x, fit.predict(x), "--", color="crimson", lw=1.5, label=f"fit γ={fit.params['gamma']:.3f}")
            low, high = fit.ci["gamma"]
            title += f"\nγ = {fit.params['gamma']:.3f} [{low:.3f}, {high:.3f}]"
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="validation loss", title=title)
        _tidy_log_axes(ax)
        ax.legend(fontsize=6)
    figure.savefig(path, dpi=110)


def _plot_frontiers(data, fits, path):
    figure, (ax,) = _figure(1, 6.0, 4.5)
    for label in data.points.group_by("label"):
        fit = fits[label].get("frontier")
        if fit is None:
            continue
        line, = ax.plot(fit.frontier_x, fit.frontier_loss, "o", ms=3)
        x = np.geomspace(min(fit.frontier_x), max(fit.frontier_x), 100)
        ax.plot(x, fit.predict(x), "-", color=line.get_color(), label=f"{label}: γ_c={fit.params['gamma']:.3f}")
    ax.set(xscale="log", yscale="log", xlabel="training compute C (FLOPs)", ylabel="validation loss",
           title="compute frontiers")
    _tidy_log_axes(ax)
    ax.legend(fontsize=7)
    figure.savefig(path, dpi=110)


def _interpolate(run, column, at):
    """log-log interpolation of a run's loss at `at` (None outside the run's range)."""
    x = getattr(run, column)
    if not (x.min() <= at <= x.max()):
        return None
    return float(np.exp(np.interp(np.log(at), np.log(x), np.log(run.val_loss))))


def _plot_loss_vs_params(data, fits, path):
    groups = data.points.group_by("label")
    figure, axes = _figure(len(groups))
    for ax, (label, points) in zip(axes, groups.items()):
        runs = _runs(points)
        low = max(run.atoms_seen.min() for _, run in runs)
        high = min(run.atoms_seen.max() for _, run in runs)
        levels = np.geomspace(low, high, 3) if high > low else [high]
        surface = fits[label].get("loss_surface")
        sizes = np.geomspace(min(s for s, _ in runs), max(s for s, _ in runs), 100)
        for level, colour in zip(levels, ("tab:blue", "tab:orange", "tab:green")):
            found = [(size, _interpolate(run, "atoms_seen", level)) for size, run in runs]
            found = [(s, v) for s, v in found if v is not None]
            ax.plot([s for s, _ in found], [v for _, v in found], "o", color=colour, label=f"D = {level:.3g}")
            if surface is not None:
                ax.plot(sizes, surface.predict(sizes, level), "--", color=colour, lw=1)
        title = label
        if surface is not None:
            title += f"\nα = {surface.params['alpha']:.3f}, fit dashed"
        ax.set(xscale="log", yscale="log", xlabel="parameters N", ylabel="validation loss", title=title)
        _tidy_log_axes(ax)
        ax.legend(fontsize=7)
    figure.savefig(path, dpi=110)


def _plot_loss_vs_data(data, fits, path):
    groups = data.points.group_by("label")
    figure, axes = _figure(len(groups))
    for ax, (label, points) in zip(axes, groups.items()):
        colour = _size_colours(points.params)
        surface = fits[label].get("loss_surface")
        for size, run in _runs(points):
            ax.plot(run.atoms_seen, run.val_loss, "o", ms=2.5, color=colour(size), label=f"N={size:.3g}")
            if surface is not None:
                d = np.geomspace(run.atoms_seen.min(), run.atoms_seen.max(), 50)
                ax.plot(d, surface.predict(size, d), "-", color=colour(size), lw=1)
        title = label + (f"\nβ = {surface.params['beta']:.3f}, fit as lines" if surface is not None else "")
        ax.set(xscale="log", yscale="log", xlabel="atoms seen D", ylabel="validation loss", title=title)
        _tidy_log_axes(ax)
        ax.legend(fontsize=6)
    figure.savefig(path, dpi=110)


def _plot_isoflop(data, fits, path):
    from matplotlib import colormaps

    groups = data.points.group_by("label")
    figure, axes = _figure(len(groups))
    cmap = colormaps["plasma"]
    for ax, (label, points) in zip(axes, groups.items()):
        iso = fits[label].get("isoflop")
        budgets = iso.budgets if iso is not None else []
        for i, budget in enumerate(budgets):
            colour = cmap(0.85 * i / max(1, len(budgets) - 1))
            ax.plot(budget["N"], budget["loss"], "o", color=colour, label=f"C = {budget['C']:.2g}")
            if budget["parabola"] is not None:
                n = np.geomspace(*budget["parabola_N"], 60)
                ax.plot(n, np.exp(np.polyval(budget["parabola"], np.log(n))), "-", color=colour, lw=1)
            if budget["interior"]:
                ax.plot(budget["N_opt"], budget["loss_opt"], "*", ms=10, color=colour, mec="black")
        title = label + (f"\nN_opt ∝ C^{iso.a:.2f} (stars)" if iso is not None and iso.a is not None else "")
        ax.set(xscale="log", yscale="log", xlabel="parameters N", ylabel="validation loss at fixed compute",
               title=title)
        _tidy_log_axes(ax)
        if budgets:
            ax.legend(fontsize=6)
    figure.savefig(path, dpi=110)


def write_plots(data, fits, out_dir) -> list[str]:
    """All plots into out_dir; returns their file names."""
    out_dir = Path(out_dir)
    _plot_frontier_panels(data, fits, out_dir / PLOTS["loss_vs_compute"], "flops", "frontier",
                          "training compute C (FLOPs)")
    _plot_frontier_panels(data, fits, out_dir / PLOTS["loss_vs_wallclock"], "wall", "frontier_wall",
                          "wall-clock time (s)")
    _plot_frontiers(data, fits, out_dir / PLOTS["frontiers"])
    _plot_loss_vs_params(data, fits, out_dir / PLOTS["loss_vs_params"])
    _plot_loss_vs_data(data, fits, out_dir / PLOTS["loss_vs_data"])
    _plot_isoflop(data, fits, out_dir / PLOTS["isoflop"])
    return list(PLOTS.values())
