"""Write the docs' generated pages from data: nothing in them is typed by hand.

    python docs/render.py            # (re)write every generated file
    python docs/render.py --check    # exit 1, naming them, if any would change

Reads benchmarks/results/*.json (each script's saved result, see benchmarks/record.py),
benchmarks/reference.json (the published and all-windows reference figures) and the pydantic
config models, and writes:

- docs/generated/ett.md, reference.md, windows.md, batch_forecast.md, serving.md, soak.md,
  intervals.md, backtest.md: the
  benchmark tables, each with a line saying which commit, date and machine measured it
  (included into docs/benchmarks.md with `--8<-- "ett.md"` and so on);
- docs/config-reference.md: every config key, its type, default, constraints and description;
- README.md's headline table, between `<!-- table:headline -->` and `<!-- /table:headline -->`,
  where README.md has those markers (otherwise README.md is left alone).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
# the runs of benchmarks/ett.py the long-horizon table shows, their cells in this order
ETT_RESULTS = ("etth.json", "ettm2.json")
REFERENCE = ROOT / "benchmarks" / "reference.json"
GENERATED = ROOT / "docs" / "generated"
CONFIG_REFERENCE = ROOT / "docs" / "config-reference.md"
README = ROOT / "README.md"
HEADLINE = re.compile(r"(<!-- table:headline -->\n).*?(<!-- /table:headline -->)", re.S)


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def table(head: list[str], rows: list[list[Any]], align: str = "") -> str:
    """A Markdown table; `align` gives each column's alignment, l or r (default: l, then r)."""
    align = align or "l" + "r" * (len(head) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = [head, rule, *[[str(c) for c in row] for row in rows]]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines) + "\n"


def cell(text: Any) -> str:
    """Text for a table cell: one line, pipes escaped, and outside `code` the < that Markdown
    would read as an HTML tag (`<output_dir>/locks`)."""
    parts = " ".join(str(text).split()).replace("|", "\\|").split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;")
    return "`".join(parts)


def fixed(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def gap(ours: float, target: float) -> str:
    """Ours minus the target, to the 4 decimals our figures have (negative: ours is lower)."""
    return f"{ours - target:+.4f}"


def when(date: str) -> str:
    """'2026-12-04T22:16:13Z' -> '2026-12-04 22:16 UTC'; a bare date stays as it is."""
    if "T" not in date:
        return date
    stamp = datetime.datetime.fromisoformat(date.replace("Z", "+00:00"))
    return stamp.strftime("%Y-%m-%d %H:%M UTC")


def provenance(doc: dict[str, Any]) -> str:
    """One line: the command, commit, date and machine a results file was measured with."""
    commit = doc.get("commit")
    if commit is None:
        at = "outside git"
    else:
        sha, dirty = commit.removesuffix("+dirty"), commit.endswith("+dirty")
        at = f"commit `{sha[:7]}`" + (" with uncommitted changes" if dirty else "")
    m = doc["machine"]
    parts = [f"{m['cores']} cores ({m['cpu']})", m["gpu"] or "no GPU"]
    if m.get("memory_gb") is not None:
        parts.append(f"{m['memory_gb']:g} GB memory")
    if m.get("load_average_1m") is not None:
        parts.append(f"load average {m['load_average_1m']:g} at the start")
    line = f"Measured by `{doc['command']}` at {at}, {when(doc['date'])}; {', '.join(parts)}."
    if doc.get("note"):
        line += f" {doc['note']}"
    return line + "\n"


# --- ETTh and the reference figures ---------------------------------------------------------

def reference_cells(reference: dict[str, Any], column: str) -> dict[tuple[str, int], dict]:
    return {(r["dataset"], r["horizon"]): r for r in reference["all_windows"]
            if r["column"] == column}


def targets(reference: dict[str, Any]) -> dict[tuple[str, int], float]:
    """Each cell's target: the better (lower) test MSE of PatchTST's two all-windows re-runs."""
    official, best = (reference_cells(reference, c) for c in ("official", "best_lookback"))
    return {key: min(official[key]["mse"], best[key]["mse"]) for key in official}


TARGET = "PatchTST target [F]/[T]"


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.1f}%"


def ett_page(runs: list[dict[str, Any]], reference: dict[str, Any]) -> str:
    """The long-horizon table, one row per cell of every run in `runs`, then each run's
    provenance. A cell measured before the skip alone was scored shows n/a there."""
    goal = targets(reference)
    rows = []
    for c in (cell for run in runs for cell in run["results"]):
        target = goal[(c["dataset"], c["horizon"])]
        rows.append([
            c["dataset"], c["horizon"], c["lookback"],
            f"{c['mse']:.4f} ± {c['mse_std']:.4f}", f"{c['mae']:.4f} ± {c['mae_std']:.4f}",
            f"{target:.3f}", gap(c["mse"], target),
            fixed(c["baselines"]["linear"]["mse"], 3), fixed(c.get("skip_mse"), 4),
            f"{percent(c.get('val_skill_over_skip'))} / {percent(c.get('skill_over_skip'))}",
            c["windows"], fixed(c["train_seconds"], 1), c["params"],
            fixed(c["peak_rss_mb"], 0)])
    head = ["data", "H", "L", "test MSE", "test MAE", TARGET, "MSE gap", "Ridge MSE",
            "skip alone MSE", "encoder skill val / test", "windows", "train s", "params",
            "peak RSS MB"]
    return table(head, rows, "lrrrrrrrrrrrrr") + "\n" + "\n".join(map(provenance, runs))


def headline(runs: list[dict[str, Any]], reference: dict[str, Any]) -> str:
    goal = targets(reference)
    rows = []
    for c in (cell for run in runs for cell in run["results"]):
        target = goal[(c["dataset"], c["horizon"])]
        rows.append([c["dataset"], c["horizon"], f"{c['mse']:.4f}", f"{target:.3f}",
                     gap(c["mse"], target)])
    return table(["data", "H", "test MSE (ours, mean over seeds)", TARGET, "gap"], rows)


def lookback_text(lookback: int | list[int] | None) -> str:
    if lookback is None:
        return "L not given"
    if isinstance(lookback, list):
        return "L best of " + "/".join(map(str, lookback))
    return f"L={lookback}"


def figure(entry: dict[str, Any]) -> str:
    mae = "" if entry["mae"] is None else f" / {entry['mae']:.3f}"
    return f"{entry['mse']:.3f}{mae}"


def reference_page(reference: dict[str, Any]) -> str:
    published = reference["published"]
    models = list(dict.fromkeys((r["model"], r["lookback"]) for r in published))
    keys = list(dict.fromkeys((r["dataset"], r["horizon"]) for r in published))
    by_cell = {(r["dataset"], r["horizon"], r["model"]): r for r in published}
    rows = [[d, h, *(figure(by_cell[(d, h, m)]) if (d, h, m) in by_cell else ""
                     for m, _ in models)] for d, h in keys]
    head = ["data", "H", *(f"{m} (L={L})" for m, L in models)]
    out = ["Published test MSE / MAE, from the papers' own tables (scored with `drop_last`, "
           "so up to 127 of the last test windows are left out):\n\n", table(head, rows)]
    used = dict.fromkeys(r["source"] for r in published)
    out.append("\nSources: " + "; ".join(f"{s}: {reference['sources'][s]}" for s in used)
               + ".\n")

    every = reference["all_windows"]
    keys = list(dict.fromkeys((r["dataset"], r["horizon"]) for r in every))
    rows = []
    for d, h in keys:
        entries = [r for r in every if (r["dataset"], r["horizon"]) == (d, h)]
        column = {r["column"]: r for r in entries if r["column"] != "also"}
        best = column["best_known"]
        known = (f"{figure(best)} ({best['model']}, {lookback_text(best['lookback'])} "
                 f"[{best['source']}])")
        also = [f"{r['model']} {figure(r)} [{r['source']}]" for r in entries
                if r["column"] == "also"]
        rows.append([d, h, figure(column["official"]), figure(column["best_lookback"]),
                     "; ".join([known, *also])])
    head = ["data", "H", cell(reference["columns"]["official"]),
            cell(reference["columns"]["best_lookback"]), "best known, every window"]
    out += ["\nTest MSE / MAE with every test window scored, as here:\n\n", table(head, rows)]
    used = dict.fromkeys(r["source"] for r in every)
    out.append("\nSources: " + "; ".join(f"[{s}] {reference['sources'][s]}" for s in used)
               + ".\n")
    return "".join(out)


# --- the other benchmarks -------------------------------------------------------------------

def windows_page(doc: dict[str, Any]) -> str:
    r = doc["results"]
    head = ["rows", "L", "H", "windows", "batches", "raw MB", "added peak RSS MB",
            "copy of every window GB", "seconds"]
    row = [f"{r['rows']:,}", r["lookback"], r["horizon"], f"{r['windows']:,}", r["batches"],
           r["raw_mb"], r["added_rss_mb"], r["materialised_copy_gb"], r["seconds"]]
    return table(head, [row], "r" * len(head)) + "\n" + provenance(doc)


def batch_forecast_page(doc: dict[str, Any]) -> str:
    r = doc["results"]
    head = ["engine", "series", "series/s", "job s", "wall s", "peak RSS MB: driver", "JVM",
            "largest Python worker", "whole job at once (PSS)", "model loads"]
    rows = []
    for run in r["runs"]:
        peak, spark = run["peak_rss_mb"], run["engine"] == "spark"
        rows.append([run["engine"], f"{run['series']:,}", f"{run['series_per_second']:,.0f}",
                     f"{run['job_seconds']:.1f}", f"{run['wall_seconds']:.1f}",
                     f"{peak['driver']:.0f}", f"{peak['jvm']:.0f}" if spark else "",
                     f"{peak['python_workers']:.0f}" if spark else "",
                     f"{peak['tree_total']:.0f}", run["model_loads"]])
    fits = [f"{engine}: {f['fixed_seconds']:.0f} s fixed + 1 s per "
            f"{f['series_per_second_marginal']:,.0f} series" for engine, f in r["fit"].items()]
    notes = (f"{r['rows']} rows per series, {r['chunk_size']:,} series per forward pass; Spark "
             f"on `{r['spark_master']}`. Wall time fitted from the two largest runs: "
             f"{'; '.join(fits)}. Largest difference between the engines' forecasts: "
             f"{r['max_abs_diff']:.1e}.\n")
    return (table(head, rows, "lrrrrrrrrr") + "\n" + notes + "\n" + crossover(r)
            + "\n" + provenance(doc))


def crossover(r: dict[str, Any]) -> str:
    """Where Spark would overtake the local engine, from the fitted fixed cost and marginal
    rate of each, if Spark's marginal rate grew in proportion to its cores."""
    fit, local = r["fit"], re.fullmatch(r"local\[(\d+)\]", r["spark_master"] or "")
    if not {"local", "spark"} <= set(fit) or local is None:
        return ""
    cores = int(local.group(1))
    f_l, r_l = fit["local"]["fixed_seconds"], fit["local"]["series_per_second_marginal"]
    f_s, r_s = fit["spark"]["fixed_seconds"], fit["spark"]["series_per_second_marginal"]
    rows = []
    for total in (8, 32, 128, 512):
        rate = r_s * total / cores
        gain = 1 / r_l - 1 / rate  # seconds saved per series
        rows.append([total, f"{rate:,.0f}", f"{(f_s - f_l) / gain:,.0f}" if gain > 0 else
                     "never (slower per series)", f"{9 * f_s * rate:,.0f}"])
    return ("Projected, if Spark's marginal rate grew in proportion to its cores (each task is "
            "one Python worker on one core) and its fixed cost (JVM start, shuffle set-up, a "
            "model load per Python worker) stayed as measured:\n\n"
            + table(["Spark cores", "Spark series/s", "Spark is faster above (series)",
                     "fixed cost under 10% of the job above (series)"], rows, "rrrr"))


LOADS = {"c1": "1 series, concurrency 1", "c16": "1 series, concurrency 16",
         "c64": "1 series, concurrency 64",
         "c1q3": "1 series with 3 quantiles, concurrency 1",
         "batch256": "256 series, concurrency 1"}
SERVERS = {"ours": "ours (`forecast serve`)", "mlflow": "`mlflow models serve`"}


def server_label(key: str) -> str:
    """'ours_2w' → 'ours (`forecast serve`), 2 workers'."""
    kind, _, workers = key.partition("_")
    n = workers.removesuffix("w")
    return SERVERS.get(kind, kind) + (f", {n} worker{'s' if n != '1' else ''}" if n else "")


def serving_page(doc: dict[str, Any]) -> str:
    rows = [[server_label(server), LOADS.get(level, level), f"{r['p50_ms']:.1f}",
             f"{r['p95_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['rps']:.1f}", r["errors"]]
            for server, levels in doc["results"].items() for level, r in levels.items()]
    head = ["server", "request, load", "p50 ms", "p95 ms", "p99 ms", "requests/s", "errors"]
    return table(head, rows, "llrrrrr") + "\n" + provenance(doc)


def soak_page(doc: dict[str, Any]) -> str:
    r = doc["results"]
    rows = [[m["minute"], f"{m['requests']:,}", m["errors"], f"{m['p50_ms']:.1f}",
             f"{m['p99_ms']:.1f}", f"{m['rps']:.0f}", f"{m['rss_mb']:.0f}", m["version"]]
            for m in r["minutes"]]
    head = ["minute", "requests", "errors", "p50 ms", "p99 ms", "requests/s", "RSS MB",
            "version answering"]
    moves = ", ".join(f"to version {m['version']} at {m['at_s']:.0f} s" for m in r["alias_moves"])
    return (table(head, rows, "r" * len(head)) + "\n"
            f"Concurrency {r['concurrency']}, one worker. The alias moved {moves}. RSS after "
            f"the first minute {r['rss_after_warmup_mb']:.0f} MB, at the end "
            f"{r['rss_end_mb']:.0f} MB ({r['rss_growth_pct']:+.1f}%); {r['errors']} failed "
            "requests.\n\n" + provenance(doc))


METHODS = {"a_split_conformal": "(a) split conformal", "b_quantile_head": "(b) quantile head",
           "c_conformal_head": "(c) conformalised head",
           "a_scaled_by_mean_abs_diff": "(a), errors over the mean absolute difference",
           "a_scaled_by_last_24_spread": "(a), errors over the last 24 steps' spread",
           "a_scaled_by_nothing": "(a), errors unscaled"}


def cell_name(r: dict[str, Any]) -> str:
    return f"{r['dataset']} H={r['horizon']}"


def intervals_page(doc: dict[str, Any]) -> str:
    rows = []
    for r in doc["results"]:
        t = r["test"]
        best_baseline = min(v for v in (t["linear_wql"], t["seasonal_naive_wql"])
                            if v is not None)
        naive = "" if t["seasonal_naive_wql"] is None else f"{t['seasonal_naive_wql']:.4f}"
        rows.append([cell_name(r), r["lookback"], f"{t['mse']:.4f}", f"{t['coverage_80']:.3f}",
                     f"{t['coverage_95']:.3f}",
                     f"{t['worst_step_coverage_80']:.3f} (step {t['worst_step_80']})",
                     f"{t['worst_step_coverage_95']:.3f} (step {t['worst_step_95']})",
                     f"{t['wql']:.4f}", f"{t['linear_wql']:.4f}", naive,
                     "yes" if t["wql"] < best_baseline else "**no**"])
    head = ["cell", "L", "MSE", "coverage 80%", "coverage 95%", "worst step, 80%",
            "worst step, 95%", "WQL", "linear WQL", "seasonal-naive WQL", "WQL beats both"]
    methods = [[cell_name(r), METHODS[name], f"{m['coverage_80']:.3f}",
                f"{m['coverage_95']:.3f}", f"{m['wql']:.4f}"]
               for r in doc["results"] for name, m in r["validation_methods"].items()
               if name in METHODS]
    return (table(head, rows, "lr" + "r" * (len(head) - 2))
            + "\nThe choice of method, on validation only (calibrated on its first half, "
            "scored on its second):\n\n"
            + table(["cell", "method", "coverage 80%", "coverage 95%", "WQL"], methods,
                    "llrrr") + "\n" + provenance(doc))


def backtest_page(doc: dict[str, Any]) -> str:
    r = doc["results"]
    rows = []
    for run in r["runs"]:
        for name, m in run["mean_by_cutoff"].items():
            rows.append([f"{run['cutoffs']:,}", f"{run['wall_seconds']:.1f}",
                         f"{run['peak_rss_mb']:.0f}", name, f"{m['mse']:.4f}",
                         f"{m['coverage_80']:.3f}", f"{m['coverage_95']:.3f}",
                         f"{m['wql']:.4f}"])
    head = ["cutoffs", "wall s", "peak RSS MB", "forecaster", "MSE", "coverage 80%",
            "coverage 95%", "WQL"]
    return (table(head, rows, "rrrlrrrr")
            + f"\n{r['dataset']}, H={r['horizon']}, `{r['config']}`, cutoffs "
            f"{r['runs'][0]['step']} hour(s) apart; scores are means over cutoffs. Peak RSS at "
            f"{r['runs'][-1]['cutoffs']:,} cutoffs over {r['runs'][-2]['cutoffs']:,}: "
            f"{r['rss_ratio_most_to_second']:.3f}; over {r['runs'][0]['cutoffs']:,}: "
            f"{r['rss_ratio_most_to_fewest']:.3f}.\n\n" + provenance(doc))


DEFAULTS_CANDIDATES = {
    "encoder": "encoder alone (L 96, d_model 64, 2 layers, dropout 0.1, 20 epochs)",
    "skip": "least-squares skip with level (L 336, d_model 16, 3 layers, dropout 0.3)",
    "skip-robust": "the same, skip fitted robustly (Huber delta 0.5)",
    "skip-robust-0.1": "the same, Huber delta 0.1: **the defaults**",
    "skip-L96": "least-squares skip with level at L 96",
    "skip-lr1e-4": "least-squares skip with level, lr 1e-4",
}


def defaults_page(doc: dict[str, Any]) -> str:
    rows = doc["results"]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    head = ["candidate", *(f"{d} (H {next(r['horizon'] for r in rows if r['dataset'] == d)})"
                           for d in datasets), "mean vs first"]
    first = {r["dataset"]: r["val_mse"] for r in rows if r["candidate"] == rows[0]["candidate"]}
    table_rows = []
    for name in dict.fromkeys(r["candidate"] for r in rows):
        mine = {r["dataset"]: r for r in rows if r["candidate"] == name}
        ratio = sum(mine[d]["val_mse"] / first[d] for d in mine) / len(mine)
        table_rows.append([DEFAULTS_CANDIDATES.get(name, name),
                           *(fixed(mine[d]["val_mse"], 4) if d in mine else "-"
                             for d in datasets),
                           f"{ratio:.3f} ({len(mine)} sets)"])
    linear = {r["dataset"]: r["linear_mse"] for r in rows if r["lookback"] == 336}
    table_rows.append(["linear baseline (Ridge, L 336)",
                       *(fixed(linear.get(d), 4) for d in datasets), ""])
    note = ("Validation MSE, seed 0, each set's own split (ETT: the benchmark's rows), "
            "one torch thread per training; the test block is not scored.\n")
    return table(head, table_rows, "l" + "r" * (len(head) - 1)) + "\n" + note + "\n" + \
        provenance(doc)


def tracking_server_page(doc: dict[str, Any]) -> str:
    r = doc["results"]
    gate = r["gate"]
    head = ["jobs", "registered models", "wall s", "exit codes", "result"]
    rows = [[r["same_model_jobs"], 1, f"{r['same_model_wall_s']:.1f}",
             " ".join(map(str, sorted(set(r["same_model_exit_codes"])))),
             f"{gate['decided']} of {gate['versions']} versions record a gate decision; "
             f"champion v{gate['champion']}, best v{gate['best']}"],
            [r["many_model_jobs"], r["many_models_registered"], f"{r['many_model_wall_s']:.1f}",
             " ".join(map(str, sorted(set(r["many_model_exit_codes"])))),
             f"{r['many_models_registered']} models registered"]]
    rss = r["peak_rss_mb"]
    note = (f"Backend {r['backend']}, `mlflow server --workers {r['server_workers']}`; peak RSS"
            f" of the server {rss['server']} MB, of PostgreSQL {rss['postgres']} MB.\n")
    return table(head, rows, "rrrll") + "\n" + note + "\n" + provenance(doc)


# --- the config reference -------------------------------------------------------------------

def local_path(metadata: Any) -> bool:
    """Whether a field's validators include forecast.config.fields' local-path check."""
    return any(getattr(getattr(m, "func", None), "__name__", "") == "_local_path"
               for m in metadata)


def field_type(field: Any) -> str:
    return "path" if local_path(field.metadata) else type_text(field.annotation)


def type_text(annotation: Any) -> str:
    """A type in words: `int or null`, `"wide" or "long"`, `path`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if origin is typing.Annotated:
        return "path" if local_path(args[1:]) else type_text(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_text(a) for a in args)
    if origin is typing.Literal:
        return " or ".join(json.dumps(a) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(type_text(a) for a in args)}]" if args else \
            origin.__name__
    return getattr(annotation, "__name__", str(annotation))


CONSTRAINTS: dict[str, Callable[[Any], str]] = {
    "gt": lambda v: f"> {v}", "ge": lambda v: f"≥ {v}", "lt": lambda v: f"< {v}",
    "le": lambda v: f"≤ {v}", "min_length": lambda v: f"at least {v} item(s)",
    "max_length": lambda v: f"at most {v} item(s)",
}


def constraints(field: Any) -> str:
    """gt/ge/lt/le/min_length of a field, from its metadata (and that of an optional type's
    Annotated part)."""
    metadata = list(field.metadata)
    for arg in typing.get_args(field.annotation):
        if typing.get_origin(arg) is typing.Annotated:
            metadata += typing.get_args(arg)[1:]
    found = [render(getattr(m, name)) for m in metadata for name, render in CONSTRAINTS.items()
             if getattr(m, name, None) is not None]
    return ", ".join(found)


def default_text(field: Any) -> str:
    from pydantic_core import PydanticUndefined, to_jsonable_python

    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    return f"`{json.dumps(to_jsonable_python(value))}`"


def key_rows(model: Any, prefix: str) -> list[list[str]]:
    """One row per leaf key of a pydantic model, nested models walked into."""
    from pydantic import BaseModel

    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            rows += key_rows(field.annotation, key + ".")
            continue
        rows.append([f"`{key}`", cell(field_type(field)), default_text(field),
                     cell(constraints(field)), cell(field.description or "")])
    return rows


def config_page() -> str:
    from pydantic import BaseModel

    from forecast.config import Config

    out = ["# Every config key\n\n",
           "Generated by `python docs/render.py` from the pydantic models in `forecast/config/`: "
           "do not edit it by hand.\n"]
    for name, field in Config.model_fields.items():
        out.append(f"\n## `{name}`\n\n")
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            doc = (section.__doc__ or "").strip().split("\n\n")[0]
            if doc:
                out.append(" ".join(doc.split()) + "\n\n")
            rows = key_rows(section, f"{name}.")
        else:
            rows = [[f"`{name}`", cell(field_type(field)), default_text(field),
                     cell(constraints(field)), cell(field.description or "")]]
        out.append(table(["key", "type", "default", "constraints", "description"], rows,
                         "lllll"))
    return "".join(out)


# --- writing and checking -------------------------------------------------------------------

def pages() -> dict[Path, str]:
    """Every generated file and the text it should hold."""
    reference = load(REFERENCE)
    ett = [load(RESULTS / name) for name in ETT_RESULTS]
    out = {
        GENERATED / "ett.md": ett_page(ett, reference),
        GENERATED / "reference.md": reference_page(reference),
        GENERATED / "windows.md": windows_page(load(RESULTS / "windows.json")),
        GENERATED / "batch_forecast.md": batch_forecast_page(load(RESULTS / "batch_forecast.json")),
        GENERATED / "serving.md": serving_page(load(RESULTS / "serving.json")),
        GENERATED / "soak.md": soak_page(load(RESULTS / "soak.json")),
        GENERATED / "intervals.md": intervals_page(load(RESULTS / "intervals.json")),
        GENERATED / "backtest.md": backtest_page(load(RESULTS / "backtest.json")),
        GENERATED / "defaults.md": defaults_page(load(RESULTS / "defaults.json")),
        GENERATED / "tracking_server.md":
            tracking_server_page(load(RESULTS / "tracking_server.json")),
        CONFIG_REFERENCE: config_page(),
    }
    if README.is_file():
        text = README.read_text()
        if HEADLINE.search(text):
            block = headline(ett, reference)
            out[README] = HEADLINE.sub(lambda m: f"{m[1]}\n{block}\n{m[2]}", text, count=1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 naming each file that is out of date")
    args = parser.parse_args(argv)
    wanted = pages()
    stale = [p for p, text in wanted.items() if not p.is_file() or p.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run python docs/render.py",
                  file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(wanted[path])
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
