"""PNG plots of the sweeps: time against lmax and against batch size, one line per
implementation, log axes, with the floor (the time at the measured copy bandwidth or matmul
rate) dashed."""
from __future__ import annotations

import os
import re
from collections import defaultdict

X_LABEL = {"lmax": "lmax", "batch": "batch size"}
SWEEP_TITLES = {("tp", "lmax"): "tensor product 32x(l = 0..lmax) x Y(0..lmax), batch fixed",
                ("sh", "lmax"): "spherical harmonics Y(0..lmax)"}


def plot_sweeps(report: dict, directory) -> list:
    """One PNG per (op, sweep, pass); returns the paths written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = defaultdict(list)
    for r in report["records"]:
        if r.get("family") and r["status"] == "ok":
            groups[(r["op"], r["family"], r["pass"])].append(r)
    os.makedirs(directory, exist_ok=True)
    written = []
    machine, settings = report["machine"], report["settings"]
    for (op, family, pass_name), records in sorted(groups.items()):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        by_impl = defaultdict(dict)
        floor = {}
        for r in records:
            x = r["params"][family]
            label = r["impl"]
            if r.get("note", "").startswith("backend="):  # which of nffk's backends ran
                label += f" ({r['note'].split(';')[0]})"
            by_impl[label][x] = 1e3 * r["median_s"]
            if r.get("floor_s"):
                floor[x] = 1e3 * r["floor_s"]
        for impl, points in by_impl.items():
            xs = sorted(points)
            ax.plot(xs, [points[x] for x in xs], marker="o", label=impl,
                    linewidth=2.2 if impl.startswith("nffk") else 1.4)
        if floor:
            xs = sorted(floor)
            ax.plot(xs, [floor[x] for x in xs], linestyle="--", color="0.5", label="floor (copy/matmul rate)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        if family == "lmax":
            ticks = sorted({r["params"][family] for r in records})
            ax.set_xticks(ticks)
            ax.set_xticklabels([str(t) for t in ticks])
            ax.minorticks_off()
        ax.set_xlabel(X_LABEL.get(family, family))
        ax.set_ylabel("median time (ms)")
        title = SWEEP_TITLES.get((op, family), f"{op} {records[0]['config']}" if family == "batch" else op)
        ax.set_title(f"{title}: {pass_name}", fontsize=11)
        fig.text(0.01, 0.01, f"{machine['cpu']}, {settings['device']}, {settings['threads']} thread(s), "
                             f"{settings['dtype']}, {report['created']}", fontsize=7, color="0.4")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        name = re.sub(r"[^A-Za-z0-9]+", "-", f"{op}-{family}-{pass_name}").strip("-") + ".png"
        path = os.path.join(directory, name)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
