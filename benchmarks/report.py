"""The report: a text table on stdout, results.json, report.md and chart.png."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runner import ContenderResult, DatabaseResult, OpResult

CONTENDERS = ("rawbackend", "celery", "floor", "redis")
COLORS = {"rawbackend": "#1f77b4", "celery": "#ff7f0e", "floor": "#7f7f7f", "redis": "#d62728"}
LABELS = {
    "rawbackend": "rawbackend (rawdb+)",
    "celery": "Celery 5.7 db+ (pooled as a worker child; NullPool where the operation says so)",
    "floor": "floor (one statement, bare driver)",
    "redis": "Celery redis://",
}


# -- formatting ---------------------------------------------------------------
def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1000
    return f"{ms:.3g}" if ms < 1000 else f"{ms:,.0f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def cell(op: OpResult, name: str) -> str:
    """One contender's median / p99, in the operation's unit."""
    c = op.contenders.get(name)
    if c is None:
        return ""
    if c.median is None:
        return "failed" if c.error else "-"
    if op.kind == "throughput":
        return f"{c.median:,.0f}"
    if op.kind == "rate":
        return f"{c.median:,.1f}"
    if op.kind in ("cleanup", "coldstart"):
        return fmt_ms(c.median)
    return f"{fmt_ms(c.median)} / {fmt_ms(c.p99)}"


def unit(op: OpResult) -> str:
    return {"throughput": "stores/s", "rate": "queries/s", "coldstart": "ms, median",
            "cleanup": "ms, median"}.get(op.kind, "ms, median / p99")


def details(op: OpResult) -> list[str]:
    """Extra measurements worth a line of their own."""
    lines = []
    for name in CONTENDERS:
        c = op.contenders.get(name)
        if c is None:
            continue
        if c.error:
            lines.append(f"{name} failed: {c.error}")
            continue
        x = c.extra
        if op.kind == "cleanup" and x:
            lines.append(f"{name}: longest concurrent store {x.get('max_store_ms', 0):.1f} ms "
                         f"({x.get('stores', 0):.0f} stores, {x.get('errors', 0):.0f} errors)")
        elif op.kind == "coldstart" and x:
            ms = {key: fmt_ms(x.get(key)) for key in
                  ("import_celery", "build", "app", "backend", "first_store", "process_wall")}
            lines.append(
                f"{name}: import celery {ms['import_celery']} ms, build {ms['build']} ms "
                f"(app {ms['app']} + backend {ms['backend']}), first store {ms['first_store']} ms, "
                f"process {ms['process_wall']} ms, peak RSS {x.get('rss_kib', 0) / 1024:.1f} MiB, "
                f"{x.get('modules', 0):.0f} modules")
        elif op.kind == "rate" and x:
            server = (f"; the server counted {x['server_qps']:,.1f}/s" if "server_qps" in x else "")
            lines.append(f"{name}: {x.get('queries', 0):,.0f} queries in {x.get('seconds', 0):.1f} s, "
                         f"{x.get('per_waiter_after_1s', 0):.2f}/s per waiter after the first "
                         f"second{server}")
        elif op.key == "store_client" and c.median:
            lines.append(f"{name}: {1 / c.median:,.0f} stores/s (1 / median)")
    return lines


def table_rows(db: DatabaseResult) -> tuple[list[str], list[list[str]]]:
    names = [n for n in CONTENDERS if any(n in op.contenders for op in db.operations)]
    head = ["operation", "unit", *names, "raw/floor", "x faster than celery"]
    rows = []
    for op in db.operations:
        rows.append([
            op.title, unit(op), *[cell(op, n) for n in names],
            fmt_ratio(op.raw_vs_floor.median if op.raw_vs_floor else None),
            fmt_ratio(op.speedup_vs_celery.median if op.speedup_vs_celery else None),
        ])
    return head, rows


def target_line(t: Any) -> tuple[str, str]:
    status = {True: "met", False: "NOT MET", None: "n/a"}[t.met]
    measured = "not measured" if t.measured is None else f"{t.measured:.3g}"
    note = f" ({t.note})" if t.note else ""
    return status, f"{t.name} {t.limit}: {measured}{note}"


# -- text ---------------------------------------------------------------------
def render_text(meta: dict[str, Any], databases: list[DatabaseResult]) -> str:
    out = []
    for db in databases:
        out.append(f"\n== {db.url}  ({db.server}, {db.seconds:.0f} s)")
        head, rows = table_rows(db)
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        for row in [head, *rows]:
            out.append("  ".join(v.ljust(w) if i < 2 else v.rjust(w)
                                 for i, (v, w) in enumerate(zip(row, widths, strict=True))))
        for op in db.operations:
            for line in details(op):
                out.append(f"   {op.key}: {line}")
        for note in db.notes:
            out.append(f"   note: {note}")
        out.append(f"\nTargets ({db.dialect}):")
        for t in db.targets:
            status, text = target_line(t)
            out.append(f"  [{status:^7}] {text}")
    out.append("\nraw/floor: rawbackend's value / the floor's (time; stores/s for throughput), "
               "median of per-round ratios. x faster than celery: Celery's time / rawbackend's.")
    return "\n".join(out)


# -- files --------------------------------------------------------------------
def write(out: Path, meta: dict[str, Any], databases: list[DatabaseResult]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "report.md", out / "chart.png"]
    paths[0].write_text(json.dumps({"meta": meta, "databases": [asdict(db) for db in databases]},
                                   indent=2, default=str) + "\n")
    paths[1].write_text(render_markdown(meta, databases, paths[2].name))
    write_chart(paths[2], databases)
    return paths


def md_row(values: list[str]) -> str:
    return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"


def render_markdown(meta: dict[str, Any], databases: list[DatabaseResult], chart: str) -> str:
    v = meta["versions"]
    lines = [
        "# rawbackend benchmark",
        "",
        f"`{meta['command']}` — {meta['started']}, {meta['machine']}, Python {v['python']}, "
        f"Celery {v['celery']}, SQLAlchemy {v['sqlalchemy']}, psycopg {v['psycopg']}, "
        f"PyMySQL {v['pymysql']}, SQLite {v['sqlite']}, rawbackend {v['rawbackend']}.",
        "",
        "Contenders: **rawbackend** (`rawdb+URL`); **celery**, Celery 5.7.0's SQLAlchemy "
        "`DatabaseBackend` (`db+URL`) pooled as in a prefork worker child "
        "(`session_manager.forked = True`), except in the never-forked client operation, where it "
        "is left as Celery builds it outside a worker (NullPool, a new connection per call); "
        "**floor**, the one SQL statement the operation needs on a kept-open bare-driver "
        "connection in autocommit, with the same encoded bytes (and the same JSON "
        "encoding/decoding). Rounds interleave the contenders in a rotating order; a ratio is "
        "computed per round and the median of the per-round ratios is reported.",
        "",
        f"![latency per operation and contender]({chart})",
        "",
    ]
    for db in databases:
        lines += [f"## {db.dialect}: `{db.url}`", "", f"{db.server}; {db.seconds:.0f} s.", ""]
        head, rows = table_rows(db)
        lines += [md_row(head), md_row(["---", "---"] + ["---:"] * (len(head) - 2))]
        lines += [md_row(r) for r in rows]
        lines.append("")
        for op in db.operations:
            for line in details(op):
                lines.append(f"- {op.key}: {line}")
        for note in db.notes:
            lines.append(f"- note: {note}")
        lines += ["", "### Targets", "", "| status | target | limit | measured | note |",
                  "| --- | --- | --- | ---: | --- |"]
        for t in db.targets:
            status = {True: "met", False: "**not met**", None: "n/a"}[t.met]
            measured = "-" if t.measured is None else f"{t.measured:.3g}"
            lines.append(md_row([status, t.name, t.limit, measured, t.note]))
        lines.append("")
    lines += [
        "raw/floor: rawbackend's value divided by the floor's (time per call; stores/s for "
        "throughput, where higher is better). x faster than celery: Celery's time divided by "
        "rawbackend's (stores/s the other way round). p99 is the nearest-rank 99th percentile "
        "of all calls; for cleanup, prefork and cold start each round is one sample.",
        "",
    ]
    return "\n".join(lines)


def chart_value(op: OpResult, c: ContenderResult) -> tuple[float, float] | None:
    """(median, p99) in milliseconds; throughput becomes ms per store."""
    if c.median is None or op.kind == "rate":  # not a time
        return None
    if op.kind == "throughput":
        return 1000 / c.median, 1000 / c.median
    return c.median * 1000, (c.p99 or c.median) * 1000


def write_chart(path: Path, databases: list[DatabaseResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [db for db in databases if db.operations] or databases
    n_ops = max((len(db.operations) for db in shown), default=1)
    fig, axes = plt.subplots(1, len(shown), figsize=(6 * len(shown) + 3.5, 0.8 * n_ops + 2.2),
                             squeeze=False)
    same_ops = len({tuple(op.key for op in db.operations) for db in shown}) == 1
    labelled: set[str] = set()
    for col, (ax, db) in enumerate(zip(axes[0], shown, strict=True)):
        names = [n for n in CONTENDERS if any(n in op.contenders for op in db.operations)]
        height = 0.8 / max(len(names), 1)
        for i, op in enumerate(db.operations):
            for j, name in enumerate(names):
                c = op.contenders.get(name)
                value = chart_value(op, c) if c else None
                if value is None:
                    continue
                y = i + (j - (len(names) - 1) / 2) * height
                ax.barh(y, value[0], height=height * 0.9, color=COLORS[name],
                        label=None if name in labelled else LABELS[name])
                labelled.add(name)
                if value[1] > value[0]:
                    ax.plot([value[0], value[1]], [y, y], color="black", linewidth=0.7)
                ax.text(value[1] * 1.12, y, f"{value[0]:.3g}", va="center", fontsize=6)
        ax.set_yticks(range(len(db.operations)))
        if col == 0 or not same_ops:
            ax.set_yticklabels([chart_label(op) for op in db.operations], fontsize=8)
        else:
            ax.set_yticklabels([])
        ax.set_ylim(len(db.operations) - 0.5, -0.5)
        ax.set_xscale("log")
        left, right = ax.get_xlim()
        ax.set_xlim(left, right * 3)  # room for the value labels
        ax.set_xlabel("ms, log scale: bar = median, line = to p99", fontsize=8)
        ax.set_title(f"{db.dialect}: {db.server}", fontsize=9)
        ax.grid(axis="x", which="major", alpha=0.3)
    handles, legend_labels = [], []
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in legend_labels:
                handles.append(h)
                legend_labels.append(lab)
    fig.legend(handles, legend_labels, loc="lower center", ncol=min(4, len(handles)), fontsize=8,
               frameon=False)
    fig.suptitle("rawbackend vs Celery's DatabaseBackend vs the bare-driver floor "
                 "(milliseconds, lower is better)", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chart_label(op: OpResult) -> str:
    title = op.title
    if op.kind == "throughput":
        title += ": ms per store"
    elif op.kind == "coldstart":
        title = "cold start: build app + backend"
    return title.replace(", ", ",\n", 1) if len(title) > 34 else title
