"""The report of a run as a table (terminal or Markdown) and as JSON."""
from __future__ import annotations

import json
import math

from nffk.bench.registry import case_key

COLUMNS = ("config", "pass", "size", "implementation", "median ms", "±%", "× nffk", "GB/s", "GFLOP/s",
           "% floor", "check")
NUMERIC = ("size", "median ms", "±%", "× nffk", "GB/s", "GFLOP/s", "% floor")


def _num(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, fmt)


def _ms(seconds) -> str:
    if seconds is None:
        return "–"
    ms = 1e3 * seconds
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def rows(report: dict, include_sweeps: bool = True) -> list:
    """One list of cells per record, in COLUMNS order."""
    out = []
    for r in report["records"]:
        if r.get("family") and not include_sweeps:
            continue
        size = f"{r['size_name']}={r['size']}"
        if r["status"] != "ok":
            out.append([r["config"], r["pass"], size, r["impl"], r["status"], "", "", "", "", "", r["note"]])
            continue
        spread = 50 * (r["q75_s"] - r["q25_s"]) / r["median_s"] if r["median_s"] else None
        floor = 100 * r["floor_fraction"] if r.get("floor_fraction") is not None else None
        out.append([r["config"], r["pass"], size, r["impl"], _ms(r["median_s"]), _num(spread, ".0f"),
                    _num(r.get("ratio_vs_nffk"), ".2f"), _num(r.get("gbytes_per_s"), ".3g"),
                    _num(r.get("gflops_per_s"), ".3g"), _num(floor, ".2g"), r.get("check") or ""])
    return out


def footnotes(report: dict, include_sweeps: bool = False) -> list:
    """What each config is and what each implementation ran as (e.g. its backend or method)."""
    configs, notes = {}, {}
    for r in report["records"]:
        if r.get("family") and not include_sweeps:
            continue
        configs.setdefault(f"{r['op']} {r['config']}", r.get("description", ""))
        if r["status"] == "ok" and r.get("note"):
            texts = notes.setdefault(f"{r['op']} {r['impl']}", [])
            if r["note"] not in texts:
                texts.append(r["note"])
    paired = [case_title(r) for r in report["records"]
              if r.get("timed_beside_nffk") and (include_sweeps or not r.get("family"))]
    paired = [f"{title}: nffk timed beside each peer in turn (all together would not fit in memory)"
              for title in dict.fromkeys(paired)]
    return ([f"{name}: {text}" for name, text in configs.items() if text] +
            [f"{impl}: {'; '.join(texts)}" for impl, texts in notes.items()] + paired + bounds(report, include_sweeps))


def case_title(r: dict) -> str:
    return f"{r['op']} {r['config']} {r['pass']} {r['size_name']}={r['size']}"


def bounds(report: dict, include_sweeps: bool = False) -> list:
    """For each bound record (a part every implementation's time includes, e.g. the tensor
    product's loss ops): the largest ratio against each peer that any implementation could reach,
    and, where the pass has a floor (its bytes as this bench counts them, at the run's copy rate),
    the largest with the kernels at that floor as well: peer / (bound + floor)."""
    ok = [r for r in report["records"] if r["status"] == "ok" and (include_sweeps or not r.get("family"))]
    lines = []
    for b in (r for r in ok if r.get("bound")):
        peers = [r for r in ok if case_key(r) == case_key(b) and not r.get("bound") and not r["impl"].startswith("nffk")]
        ours = next((r for r in ok if case_key(r) == case_key(b) and r["impl"] == "nffk"), None)
        if not peers or ours is None:
            continue
        limits = ", ".join(f"{r['median_s'] / b['median_s']:.3g}x {r['impl']}" for r in peers)
        line = (f"{case_title(b)}: {b['impl']} alone take {_ms(b['median_s'])} ms of nffk's "
                f"{_ms(ours['median_s'])}, so no implementation can be faster than each peer here by more than "
                f"{limits}")
        if ours.get("floor_s"):
            at_floor = b["median_s"] + ours["floor_s"]
            reach = ", ".join(f"{r['median_s'] / at_floor:.3g}x {r['impl']}" for r in peers)
            line += (f"; with the kernels at the floor the bench counts for this pass too "
                     f"({_ms(ours['floor_s'])} ms), by more than {reach}")
        lines.append(line)
    return lines


def header(report: dict) -> list:
    """Lines saying what was measured where: machine, load, threads, floors, versions."""
    m, s, f, p = report["machine"], report["settings"], report["floors"], report["packages"]
    load = lambda values: "/".join(f"{v:.1f}" for v in values) if values else "n/a"  # noqa: E731
    peers = ", ".join(f"{name} {version}" for name, version in p.items() if version and name != "nffk")
    missing = ", ".join(name for name, version in p.items() if not version)
    lines = [
        f"{m['cpu']} ({m['cpu_count']} cores), {s['device']}" + (f" {m['gpu']}" if m.get("gpu") else "") +
        f", {s['threads']} torch thread(s), {s['dtype']}, mode {s['mode']}, malloc {s.get('malloc', 'system')}"
        f", {report['created']}",
        f"load average (1/5/15 min) at start {load(m.get('load_average_start'))}, at end "
        f"{load(m.get('load_average_end'))}; nffk extension {m['nffk_extension']}" +
        "".join(f"; {k}={v}" for k, v in (m.get("environment") or {}).items()),
        f"floors measured in this run: copy {f['copy_bytes_per_s'] / 1e9:.3g} GB/s, "
        f"{f['matmul_dtype']} matmul {f['matmul_flops_per_s'] / 1e9:.3g} GFLOP/s",
        f"nffk {p.get('nffk')}; installed: {peers}",
    ]
    if missing:
        lines.append(f"not installed: {missing}")
    if report.get("command"):
        lines.append(f"command: {report['command']} ({report.get('seconds', 0):.0f} s)")
    return lines


LEGEND = ("median ms: median over interleaved rounds; ±%: half the interquartile range / median; "
          "× nffk: this time / nffk's (2.0 = nffk is twice as fast); GB/s, GFLOP/s: minimal bytes and FLOPs "
          "of the op / time; % floor: time the op would take at the measured copy bandwidth or matmul rate "
          "(whichever is slower) / measured time; check: output equals nffk's on the same input ('n/a' where "
          "the layout differs)")


def print_table(report: dict, console=None, include_sweeps: bool = False) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    if console is None:
        console = Console()
        if not console.is_terminal or console.width < 120:
            console = Console(width=140)  # files and narrow terminals: keep one record per line
    table = Table(title="nffk bench")
    for name in COLUMNS:
        table.add_column(name, justify="right" if name in NUMERIC else "left", overflow="fold")
    previous = None
    for cells in rows(report, include_sweeps):
        if previous is not None and cells[:3] != previous[:3]:
            table.add_section()
        style = "bold" if cells[3] == "nffk" else ("dim" if cells[4] in ("missing", "error", "skipped") else None)
        table.add_row(*[escape(str(c)) for c in cells], style=style)
        previous = cells
    for line in header(report):
        console.print(escape(line), highlight=False)
    console.print(table)
    for line in footnotes(report, include_sweeps) + [LEGEND]:
        console.print(escape(line), highlight=False, soft_wrap=True)


def markdown(report: dict, include_sweeps: bool = False) -> str:
    """The table as GitHub Markdown, with the header lines above it."""
    lines = [f"- {line}" for line in header(report)] + [""]
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "|".join("---:" if c in NUMERIC else "---" for c in COLUMNS) + "|")
    for cells in rows(report, include_sweeps):
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    lines += [""] + [f"- {line}" for line in footnotes(report, include_sweeps)] + ["", LEGEND]
    return "\n".join(lines) + "\n"


def write_json(report: dict, path) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=1, default=str)
        f.write("\n")


def read_json(path) -> dict:
    with open(path) as f:
        return json.load(f)
