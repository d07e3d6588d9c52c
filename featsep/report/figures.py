"""The report's figures: one function per figure, listed in the FIGURES registry.

Each draw function takes the records and a `Style` (one colour per method, the same in
every figure) and returns a matplotlib Figure, or None when none of its inputs exist; the
page then says what was skipped and why. Figures use matplotlib's object API (no pyplot),
so building a report changes no global plotting state and needs no display.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Callable, Optional

import matplotlib
import matplotlib.colors
import matplotlib.patches
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from featsep.report.collect import (
    SECTION_BY_NAME,
    RunRecord,
    baseline_methods,
    iter_details,
    methods_of,
    penalty_stat_keys,
)
from featsep.report.metrics import metric, probing_datasets, probing_top_k_key, scr_key, tpp_key, value_caveats
from featsep.report.seeds import SPREAD_NOTE, has_spreads
from featsep.report.tables import MISSING
from featsep.rundir import METRICS_FILE

RC = {
    "font.size": 13,
    "axes.titlesize": 14,
    "axes.labelsize": 13,
    "xtick.labelsize": 12,
    "ytick.labelsize": 12,
    "legend.fontsize": 12,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.dpi": 110,
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">")
MARKER_NAMES = {"o": "circle", "s": "square", "^": "triangle up", "D": "diamond", "v": "triangle down",
                "P": "plus", "X": "cross", "*": "star", "h": "hexagon", "<": "triangle left", ">": "triangle right"}
LINESTYLES = ("-", "--", ":", "-.")
PANEL_SIZE = (5.6, 4.2)
LOG_SPAN = 10.0  # log-scale an axis when its values span more than this factor
MAX_PENALTY_PANELS = 12
MIB = 2.0**20
BASELINE_LINE = "--"  # a baseline's frontier (a released SAE family) is dashed


@dataclass
class Style:
    """Colours per method and markers per run, fixed once for every figure."""

    colors: dict[str, str]
    markers: dict[str, str]  # per run
    linestyles: dict[str, str]  # per run (distinguishes runs of one method in curves)

    @classmethod
    def for_records(cls, records: list[RunRecord]) -> "Style":
        methods = methods_of(records)
        palette = matplotlib.colormaps["tab10" if len(methods) <= 10 else "tab20"]
        colors = {m: matplotlib.colors.to_hex(palette(i % palette.N)) for i, m in enumerate(methods)}
        markers, linestyles = {}, {}
        for method in methods:
            runs = [r.run for r in records if r.method == method]
            for i, run in enumerate(runs):
                markers[run] = MARKERS[i % len(MARKERS)]
                linestyles[run] = LINESTYLES[i % len(LINESTYLES)]
        return cls(colors, markers, linestyles)


@dataclass(frozen=True)
class FigureSpec:
    name: str  # file stem: figures/<name>.png
    title: str
    caption: str
    needs: str  # the inputs it reads, shown when the figure is skipped
    draw: Callable[[list[RunRecord], Style], Optional[Figure]]
    # what the caption must add for these records: datasets, statuses, omitted panels, markers
    describe: Callable[[list[RunRecord], Style], list[str]] = lambda records, style: []
    per_point: bool = False  # drawn from the seed-merged records (means with error bars)


@dataclass
class RenderedFigure:
    spec: FigureSpec
    png: Optional[bytes]
    note: str = ""
    caption: str = ""  # the spec's caption and what `describe` added


# ----------------------------------------------------------------------------- helpers


def _panels(n: int, ncols: int = 2) -> tuple[Figure, list]:
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(PANEL_SIZE[0] * ncols, PANEL_SIZE[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _log_x_plain(ax) -> None:
    """Log x axis labelled with plain numbers (1, 2, 5, 10, 20, ...) and no crowded minor labels."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    ax.xaxis.set_major_formatter(formatter)
    ax.xaxis.set_minor_formatter(NullFormatter())


def _wants_log(values: list[float]) -> bool:
    positive = [v for v in values if v > 0]
    return len(positive) >= 2 and max(positive) / min(positive) > LOG_SPAN


def _method_legend(fig: Figure, style: Style, methods: list[str], baselines: frozenset[str] = frozenset()) -> None:
    """baselines: methods drawn dashed (released SAEs, not trained here)."""
    handles = [Line2D([], [], color=style.colors[m], marker="o", lw=2.5, label=m,
                      ls=BASELINE_LINE if m in baselines else "-") for m in methods]
    fig.legend(handles=handles, title="method", loc="outside right upper", frameon=False)


def _run_legend(fig: Figure, style: Style, records: list[RunRecord]) -> None:
    handles = [Line2D([], [], color=style.colors[r.method], marker=style.markers[r.run],
                      ls=style.linestyles[r.run], lw=2, label=r.label) for r in records]
    fig.legend(handles=handles, title="run", loc="outside right upper", frameon=False)


def _short(label: str, width: int = 22) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def _marker_legend(fig: Figure, style: Style, records: list[RunRecord]) -> None:
    """Which run each marker shape is (colour = method, shape = run within its method)."""
    handles = [Line2D([], [], color=style.colors[r.method], marker=style.markers[r.run], ls="none", ms=9,
                      mec="black", mew=0.6, label=_short(r.label, 30)) for r in records]
    fig.legend(handles=handles, title="marker: run", loc="outside right lower", frameon=False)


def _marker_text(style: Style, records: list[RunRecord]) -> str:
    by_method: dict[str, list[str]] = {}
    for r in records:
        by_method.setdefault(r.method, []).append(f"{MARKER_NAMES[style.markers[r.run]]} = {r.label}")
    return ("Markers (colour = method, shape = run): "
            + "; ".join(f"{m}: {', '.join(runs)}" for m, runs in by_method.items()) + ".")


def _caveat_notes(records: list[RunRecord], keys: list[str]) -> list[str]:
    notes: dict[str, None] = {}
    for r in records:
        for key in keys:
            if key in r.metrics:
                for c in value_caveats(r, key):
                    notes.setdefault(c.note, None)
    return list(notes)


def _mark(rec: RunRecord, key: str) -> str:
    return "; ".join(dict.fromkeys(c.mark for c in value_caveats(rec, key)))


# ----------------------------------------------------------------------------- metric vs L0


def _plotted(records: list[RunRecord], keys: list[Optional[str]]) -> tuple[list[str], list[RunRecord]]:
    """The keys some run has with an L0, and the runs plotted for them."""
    keys = [k for k in keys if k and any(k in r.metrics and r.l0 for r in records)]
    return keys, [r for r in records if r.l0 and any(k in r.metrics for k in keys)]


def metric_vs_l0(records: list[RunRecord], style: Style, keys: list[Optional[str]], title: str) -> Optional[Figure]:
    """One panel per metric: each method's runs joined in L0 order (its frontier); a value with
    a caveat (an eval's status) is labelled with its mark; a mean over seeds has an error bar
    of their sample standard deviation."""
    keys, plotted = _plotted(records, keys)
    if not keys:
        return None
    fig, axes = _panels(len(keys), ncols=len(keys) if len(keys) <= 3 else 2)
    l0s = [r.l0 for r in records if r.l0]
    methods = []
    baselines = baseline_methods(records)
    for ax, key in zip(axes, keys):
        for method in methods_of(records):
            runs = sorted((r for r in records if r.method == method and r.l0 and key in r.metrics), key=lambda r: r.l0)
            if not runs:
                continue
            if method not in methods:
                methods.append(method)
            color = style.colors[method]
            ax.plot([r.l0 for r in runs], [r.metrics[key] for r in runs], color=color, lw=2, alpha=0.8,
                    ls=BASELINE_LINE if method in baselines else "-")
            for r in runs:
                ax.plot(r.l0, r.metrics[key], marker=style.markers[r.run], color=color, ms=9, ls="none",
                        mec="black", mew=0.6)
                if key in r.spreads:
                    ax.errorbar(r.l0, r.metrics[key], yerr=r.spreads[key], color=color, capsize=4, ls="none")
                if mark := _mark(r, key):
                    ax.annotate(mark, (r.l0, r.metrics[key]), xytext=(6, 6), textcoords="offset points",
                                fontsize=9, color="firebrick")
        baseline = _baseline(records, key)
        if baseline is not None:
            ax.axhline(baseline, color="grey", ls="--", lw=1.5)
            ax.annotate("LLM probe", (1.0, baseline), xycoords=("axes fraction", "data"), ha="right",
                        va="bottom", color="grey", fontsize=11)
        if _wants_log(l0s):
            _log_x_plain(ax)
        ax.set_xlabel(metric("core.l0").axis)
        ax.set_ylabel(metric(key).axis)
        ax.set_title(metric(key).name[0].upper() + metric(key).name[1:])
    fig.suptitle(title, fontsize=16)
    _method_legend(fig, style, methods, baselines)
    _marker_legend(fig, style, plotted)
    return fig


def _baseline(records: list[RunRecord], key: str) -> Optional[float]:
    """The LLM-probe accuracy matching an SAE probing key, as a reference line."""
    if not key.startswith("sparse_probing.sae_"):
        return None
    llm_key = key.replace("sparse_probing.sae_", "sparse_probing.llm_")
    values = [r.metrics[llm_key] for r in records if llm_key in r.metrics]
    return sum(values) / len(values) if values else None


def _frontier_keys(records):
    return ["core.ce_loss_score", "core.explained_variance"]


def _absorption_keys(records):
    return ["absorption.mean_absorption_fraction_score", "absorption.mean_full_absorption_score"]


def _probing_keys(records):
    return ["sparse_probing.sae_top_1_test_accuracy", probing_top_k_key(records), "sparse_probing.sae_test_accuracy"]


def _scr_tpp_keys(records):
    return [scr_key(records), tpp_key(records)]


def _unlearning_keys(records):
    return ["unlearning.unlearning_score"]


def _l0_figure(keys: Callable[[list[RunRecord]], list[Optional[str]]], title: str):
    """draw and describe of a metric-vs-L0 figure: the caption names the markers, the probing
    datasets where probing is plotted, and every caveat of a plotted value."""
    def draw(records, style):
        return metric_vs_l0(records, style, keys(records), title)

    def describe(records, style):
        shown, plotted = _plotted(records, keys(records))
        if not shown:
            return []
        probing = probing_datasets(records) if any(k.startswith("sparse_probing.") for k in shown) else None
        seeds = [f"Points with seeds are their mean; {SPREAD_NOTE.replace('±', 'error bars')}"] \
            if has_spreads(plotted) else []
        dashed = sorted(baseline_methods(plotted))
        baselines = [f"Dashed: baselines (released SAEs evaluated here, not trained here): {', '.join(dashed)}."] \
            if dashed else []
        return ([_marker_text(style, plotted)] + baselines + seeds + ([probing] if probing else [])
                + _caveat_notes(plotted, shown))

    return draw, describe


# ----------------------------------------------------------------------------- per-run bars


def _bars(ax, records: list[RunRecord], style: Style, keys: list[str], ylabel: str, title: str) -> bool:
    """Grouped bars: one group per run (method colour), one hatch per metric."""
    keys = [k for k in keys if any(k in r.metrics for r in records)]
    if not keys:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_title(title)
        return False
    width = 0.8 / len(keys)
    hatches = ("", "//", "..", "xx")
    for j, key in enumerate(keys):
        for i, rec in enumerate(records):
            x = i + (j - (len(keys) - 1) / 2) * width
            if key in rec.metrics:
                ax.bar(x, rec.metrics[key], width, color=style.colors[rec.method], hatch=hatches[j % len(hatches)],
                       edgecolor="black", lw=0.6)
            else:
                ax.text(x, 0, MISSING, ha="center", va="bottom", color="grey", fontsize=12)
            if key in rec.metrics and (mark := _mark(rec, key)):
                ax.annotate(mark, (x, rec.metrics[key]), xytext=(0, 3), textcoords="offset points", ha="center",
                            va="bottom", rotation=90, fontsize=9, color="firebrick")
    ax.set_xticks(range(len(records)), [_short(r.label) for r in records], rotation=35, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(keys) > 1:
        handles = [matplotlib.patches.Patch(facecolor="white", edgecolor="black", hatch=hatches[j % len(hatches)],
                                            label=metric(k).name) for j, k in enumerate(keys)]
        ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.08), ncols=len(keys), frameon=False,
                  fontsize=10)
    return True


RUN_BAR_PANELS = (
    (["absorption.mean_absorption_fraction_score"], "Mean absorption fraction", "Absorption", "absorption"),
    (["core.explained_variance", "core.ce_loss_score"], "Score (fraction)", "Reconstruction", "core"),
    (["core.l0"], "L0 (active latents per token)", "Sparsity", "core"),
    (["sparse_probing.sae_top_1_test_accuracy", "sparse_probing.sae_test_accuracy"], "Test accuracy",
     "Sparse probing", "sparse_probing"),
)


def _run_bar_panels(records: list[RunRecord]) -> tuple[list[tuple], list[str]]:
    """The panels some run has data for, and why each other panel is left out (no empty panels)."""
    kept, dropped = [], []
    for keys, ylabel, title, section in RUN_BAR_PANELS:
        if any(k in r.metrics for k in keys for r in records):
            kept.append((keys, ylabel, title))
        else:
            dropped.append(f"{title} panel omitted: no run has {SECTION_BY_NAME[section].title.lower()} results.")
    return kept, dropped


def draw_run_bars(records, style):
    """The reference plot script's per-run comparison, with labels from the mapping."""
    panels, _ = _run_bar_panels(records)
    if not panels:
        return None
    fig, axes = _panels(len(panels), ncols=2)
    fig.set_size_inches(max(12, 1.1 * len(records) * 2), 5.5 * math.ceil(len(panels) / 2))
    for ax, (keys, ylabel, title) in zip(axes, panels):
        _bars(ax, records, style, keys, ylabel, title)
    fig.suptitle("Per-run comparison", fontsize=16)
    _method_legend(fig, style, methods_of(records))
    return fig


# ----------------------------------------------------------------------------- over training


def describe_run_bars(records, style):
    panels, dropped = _run_bar_panels(records)
    keys = [k for p in panels for k in p[0]]
    probing = probing_datasets(records) if any(k.startswith("sparse_probing.") for k in keys) else None
    return dropped + ([probing] if probing else []) + _caveat_notes(records, keys)


def _curve_panels(records, style, keys: list[str], xkey_order: tuple[str, ...], title: str,
                  scale: Callable[[str], tuple[float, str]] = lambda k: (1.0, "")) -> Optional[Figure]:
    """One panel per history key, one line per run that logged it."""
    keys = [k for k in keys if any(k in row for r in records for row in r.history)]
    if not keys:
        return None
    fig, axes = _panels(len(keys), ncols=2 if len(keys) <= 4 else 3)
    shown = []
    for ax, key in zip(axes, keys):
        factor, unit = scale(key)
        values_all = []
        xlabel = "step"
        for rec in records:
            rows = [row for row in rec.history if isinstance(row.get(key), (int, float))]
            if not rows:
                continue
            xkey = next((x for x in xkey_order if all(isinstance(row.get(x), (int, float)) for row in rows)), None)
            xs = [row[xkey] for row in rows] if xkey else list(range(len(rows)))
            xlabel = xkey or "log row"
            ys = [row[key] / factor for row in rows]
            values_all += ys
            ax.plot(xs, ys, color=style.colors[rec.method], ls=style.linestyles[rec.run], lw=2,
                    marker=style.markers[rec.run], markevery=max(1, len(xs) // 6), ms=7)
            if rec not in shown:
                shown.append(rec)
        if _wants_log(values_all) and min(values_all) > 0:
            ax.set_yscale("log")
        ax.set_xlabel({"tokens": "training tokens", "step": "training step"}.get(xlabel, xlabel))
        group, _, stat = key.rpartition("/")
        ax.set_ylabel(stat.replace("_", " ") + (f" ({unit})" if unit else ""))
        ax.set_title(f"{group}: {stat.replace('_', ' ')}" if group else stat.replace("_", " "))
    fig.suptitle(title, fontsize=16)
    _run_legend(fig, style, shown)
    return fig


def draw_training_curves(records, style):
    return _curve_panels(records, style, ["loss", "l0", "fvu", "dead_fraction"], ("tokens", "step"),
                         "Training curves")


def _memory_scale(key: str) -> tuple[float, str]:
    return (MIB, "MiB") if "bytes" in key or "memory" in key else (1.0, "")


def draw_penalty_stats(records, style):
    """Penalty statistics logged during training ("<penalty>/<stat>"), e.g. momentum share
    over tau, tracked pairs and their memory, mean |c - cavg|."""
    keys: dict[str, None] = {}
    for rec in records:
        for key in penalty_stat_keys(rec.history):
            keys.setdefault(key, None)
    ordered = sorted(keys, key=lambda k: (k.split("/")[0], k))[:MAX_PENALTY_PANELS]
    return _curve_panels(records, style, ordered, ("step", "tokens"), "Feature-separation penalties over training",
                         scale=_memory_scale)


# ----------------------------------------------------------------------------- competition eval


def _distributions(records: list[RunRecord]) -> list[tuple[RunRecord, str, list[float]]]:
    """Per-latent competition values found anywhere in a run's competition eval details."""
    out = []
    for rec in records:
        for name, value in iter_details(rec.details.get("competition")):
            if (isinstance(value, list) and len(value) >= 5
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
                out.append((rec, name, [float(v) for v in value if math.isfinite(v)]))
                break
    return out


def draw_competition_eval(records, style):
    """Competition eval: its summary metrics per run, and per-latent distributions if given."""
    keys: dict[str, None] = {}
    for rec in records:
        for key in rec.metrics:
            if key.startswith("competition."):
                keys.setdefault(key, None)
    dists = _distributions(records)
    keys_list = list(keys)[:6]
    if not keys_list and not dists:
        return None
    fig, axes = _panels(len(keys_list) + (1 if dists else 0), ncols=3)
    with_data = [r for r in records if any(k in r.metrics for k in keys_list)]
    for ax, key in zip(axes, keys_list):
        _bars(ax, with_data, style, [key], metric(key).axis, metric(key).name)
    if dists:
        ax = axes[-1]
        for rec, name, values in dists:
            ax.hist(values, bins=40, histtype="step", lw=2, color=style.colors[rec.method],
                    ls=style.linestyles[rec.run], label=_short(rec.label))
        ax.set_xlabel(dists[0][1].replace("_", " "))
        ax.set_ylabel("latents")
        ax.set_title("Per-latent distribution")
        ax.legend(frameon=False, fontsize=10, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    fig.suptitle("Competition evaluation", fontsize=16)
    _method_legend(fig, style, methods_of(with_data + [rec for rec, _, _ in dists]))
    return fig


# ----------------------------------------------------------------------------- cost


def draw_cost(records, style):
    """Throughput, wall time and state memory: mean per method (bars) and each run (markers)."""
    def largest(key):
        return max((r.metrics[key] for r in records if key in r.metrics), default=0.0)

    seconds = largest("cost.wall_time_s")
    time_unit = (1.0, "seconds") if seconds < 120 else (60.0, "minutes") if seconds < 7200 else (3600.0, "hours")
    panels = [("cost.tokens_per_s", 1.0, "tokens / s", "Throughput"),
              ("cost.wall_time_s", *time_unit, "Wall time"),
              ("cost.state_memory_bytes", MIB, "MiB", "Training state (params + Adam + penalty)")]
    panels = [p for p in panels if any(p[0] in r.metrics for r in records)]
    if not panels:
        return None
    methods = methods_of(records)
    fig, axes = _panels(len(panels), ncols=3)
    for ax, (key, factor, unit, title) in zip(axes, panels):
        for i, method in enumerate(methods):
            runs = [r for r in records if r.method == method and key in r.metrics]
            if not runs:
                continue
            values = [r.metrics[key] / factor for r in runs]
            ax.bar(i, sum(values) / len(values), 0.7, color=style.colors[method], alpha=0.8, edgecolor="black")
            for r, v in zip(runs, values):
                ax.plot(i, v, marker=style.markers[r.run], color="black", ms=7, ls="none")
        ax.set_xticks(range(len(methods)), [_short(m) for m in methods], rotation=30, ha="right")
        ax.set_ylabel(unit)
        ax.set_title(title)
    fig.suptitle("Time and memory per method (bar: mean, marker: run)", fontsize=16)
    _method_legend(fig, style, methods)
    return fig


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("frontier", "Sparsity-fidelity frontier",
               "CE loss score and explained variance against L0, one line per method (runs sorted by L0).",
               "core eval results (ce_loss_score, explained_variance) and an L0",
               *_l0_figure(_frontier_keys, "Sparsity-fidelity frontier"), per_point=True),
    FigureSpec("absorption_vs_l0", "Absorption vs L0", "Mean absorption fraction and full-absorption rate.",
               "absorption eval results", *_l0_figure(_absorption_keys, "Feature absorption vs L0"), per_point=True),
    FigureSpec("probing_vs_l0", "Sparse probing vs L0",
               "Probe accuracy on the top-1 / top-k latents and on all latents; dashed: LLM residual probe.",
               "sparse probing eval results", *_l0_figure(_probing_keys, "Sparse probing vs L0"), per_point=True),
    FigureSpec("scr_tpp_vs_l0", "SCR and TPP vs L0", "SCR and TPP scores at the chosen number of ablated latents.",
               "SCR or TPP eval results", *_l0_figure(_scr_tpp_keys, "SCR and TPP vs L0"), per_point=True),
    FigureSpec("unlearning_vs_l0", "Unlearning vs L0", "SAEBench unlearning score.", "unlearning eval results",
               *_l0_figure(_unlearning_keys, "Unlearning vs L0"), per_point=True),
    FigureSpec("run_bars", "Per-run comparison",
               "Absorption, reconstruction, sparsity and probing for every run, with the labels mapping.",
               "any of the core, absorption or sparse probing results", draw_run_bars, describe_run_bars),
    FigureSpec("penalty_stats", "Penalties over training",
               f"Penalty statistics logged in {METRICS_FILE} (momentum share over tau, tracked pairs and memory, "
               "stability |c - cavg|, ...).", f"penalty statistics (\"<penalty>/<stat>\") in {METRICS_FILE}",
               draw_penalty_stats),
    FigureSpec("competition_eval", "Competition evaluation",
               "Summary metrics of the competition eval per run, and the per-latent distribution when given.",
               "competition eval results", draw_competition_eval),
    FigureSpec("training_curves", "Training curves", "Loss, L0, FVU and dead fraction against training tokens.",
               f"{METRICS_FILE} training logs", draw_training_curves),
    FigureSpec("cost", "Time and memory", "Throughput, wall time and training-state memory per method.",
               f"tokens_per_s / state_memory_bytes in {METRICS_FILE}, or the training's wall time", draw_cost),
)


def render_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def render_figures(records: list[RunRecord], specs: tuple[FigureSpec, ...] = FIGURES,
                   points: Optional[list[RunRecord]] = None) -> list[RenderedFigure]:
    """Draw every registered figure; absent inputs (or a failing figure) become a note.
    points: the records with seeds merged (seeds.group_seeds), for the per_point figures."""
    runs = records
    styles = {False: Style.for_records(runs), True: Style.for_records(points if points is not None else runs)}
    out = []
    for spec in specs:
        records = points if spec.per_point and points is not None else runs
        style = styles[spec.per_point]
        with matplotlib.rc_context(RC):
            caption = spec.caption
            try:
                fig = spec.draw(records, style) if records else None
                png = render_png(fig) if fig is not None else None
                note = "" if png else f"skipped: no run has {spec.needs}"
                if png:
                    caption = " ".join([spec.caption, *spec.describe(records, style)])
            except Exception as e:  # a report must survive odd data; say what failed
                png, note = None, f"failed: {type(e).__name__}: {e}"
        out.append(RenderedFigure(spec, png, note, caption))
    return out
