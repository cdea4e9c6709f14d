"""The report's figures, written as PNG files.

``radar.png`` (:func:`radar_plot`)
    One polygon per family (the main table's rows) on the three dimensions, one small panel per
    group (oracle, specialists, data mixture, model merging) with the base in grey as the
    reference in each, the series of a panel in distinct colors, the legends below the panels.
``pareto.png`` (:func:`pareto_plot`)
    One panel per pair of dimensions (helpful-harmless, helpful-honest, honest-harmless): every
    evaluated model (every row, every seed) as a small marker by kind, the non-dominated front
    of the compared models as a dotted line, the main table's rows at their means as numbered
    markers (numbers placed so that none overlaps another) and a key beside: number → name.
``conflict.png`` (:func:`conflict_plot`)
    A 3x3 heatmap: row i, column j is how training on dimension i alone (the specialists) moved
    dimension j relative to the base (mean over seeds): the collaboration / conflict matrix.
``diag_<statistic>.png`` (:func:`diagnostics_heatmaps`)
    Task-vector diagnostics (:mod:`hhh_bench.merging.diagnostics`): per statistic, one heatmap
    per diagnosed set of specialists side by side (rows: layer index, columns: layer type).

The numbers come from :mod:`hhh_bench.tracking.entries`. Plots use Matplotlib's object-oriented
API on the Agg canvas, so no display or global backend state is involved.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hhh_bench.core.scoring import DIMENSIONS
from hhh_bench.tracking.diagnostics_view import layer_axes
from hhh_bench.tracking.entries import GROUPS, Entry, pareto_front
from hhh_bench.tracking.markdown import number_ranges

_MARKERS = {"base": "s", "oracle": "*", "specialist": "^", "mixture": "D", "merge": "o",
            "external": "X"}  # fmt: skip

_COLORS = {
    "base": "#444444",
    "oracle": "#b8860b",
    "specialist": "#2ca02c",
    "mixture": "#1f77b4",
    "merge": "#d62728",
    "external": "#7f7f7f",
}


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110)
    FigureCanvasAgg(fig)
    return fig


SERIES_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
    "#17becf", "#000075", "#800000", "#f032e6", "#469990", "#e6b800", "#000000",
)  # fmt: skip
"""Line colours of the radar's series within a panel, most distinct first: tab10 without its grey
(the base's reference colour), then navy, maroon, magenta, teal, gold and black (from Sasha
Trubetskoy's 20 distinct colours). A panel with more series repeats them with another dash."""

_DASHES = ("-", "--", ":", "-.")

_BASE_GREY = "#888888"


def radar_figure(entries: Sequence[Entry], title: str = "") -> Any:
    """The radar as a Figure: one small polar panel per group of the main table (oracle,
    specialists, data mixture, model merging), the base drawn in grey in each as the
    reference, each panel's series in distinct colours (:data:`SERIES_COLORS`), its legend below
    it, outside the plot area."""
    base = next((e for e in entries if e.kind == "base"), None)
    facets = [(t, [e for e in entries if e.kind == k]) for k, t in GROUPS if k != "base"]
    facets = [f for f in facets if f[1]] or [("Base", [])]
    # Fixed geometry in inches (the legend's height is known before drawing): panels side by
    # side, each legend below its panel, one line per series (plus the base) and wrapped name.
    width_in, panel_in, gap_in, top_in = 2.7, 2.2, 0.55, 0.75
    labels = [[textwrap.fill(e.name, 30) for e in members] for _, members in facets]
    lines = max(sum(s.count("\n") + 1 for s in f) for f in labels) + (base is not None)
    legend_in = 0.3 + 0.13 * lines
    fig_w, fig_h = width_in * len(facets) + 0.4, top_in + panel_in + gap_in + legend_in
    fig = _figure((fig_w, fig_h))
    angles = [2 * math.pi * i / len(DIMENSIONS) for i in range(len(DIMENSIONS))]
    ring = [*angles, angles[0]]
    for i, ((group, members), names) in enumerate(zip(facets, labels, strict=True)):
        left = 0.2 + i * width_in + (width_in - panel_in) / 2
        rect = (left / fig_w, (legend_in + gap_in) / fig_h, panel_in / fig_w, panel_in / fig_h)
        ax = fig.add_axes(rect, projection="polar")
        if base is not None:
            vals = [base.mean[d] for d in DIMENSIONS]
            ax.plot(ring, [*vals, vals[0]], color=_BASE_GREY, lw=1.6, label=f"{base.name} "
                    "(reference)", zorder=1)  # fmt: skip
        for j, (e, name) in enumerate(zip(members, names, strict=True)):
            vals = [e.mean[d] for d in DIMENSIONS]
            color = SERIES_COLORS[j % len(SERIES_COLORS)]
            dash = _DASHES[(j // len(SERIES_COLORS)) % len(_DASHES)]
            ax.plot(ring, [*vals, vals[0]], color=color, ls=dash, lw=1.3, label=name, zorder=2)
            ax.fill(ring, [*vals, vals[0]], color=color, alpha=0.05)
        ax.set_xticks(angles, [d.capitalize() for d in DIMENSIONS], fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_yticks([0.25, 0.5, 0.75, 1.0], ["", "0.5", "", "1"], fontsize=6)
        ax.set_rlabel_position(60)  # radial ticks between the Helpful and Honest axes
        ax.set_title(f"{group} ({len(members)})" if members else group, fontsize=8, pad=10)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=6,
                      frameon=False, handlelength=2.2, borderaxespad=0)  # fmt: skip
    fig.suptitle(title or "3H profile per method family", fontsize=9)
    return fig


def radar_plot(entries: Sequence[Entry], path: str | Path, title: str = "") -> Path:
    """Save :func:`radar_figure` of the main table's rows to ``path``."""
    radar_figure(entries, title).savefig(path, bbox_inches="tight")
    return Path(path)


PARETO_PAIRS: tuple[tuple[str, str], ...] = (
    ("helpful", "harmless"),
    ("helpful", "honest"),
    ("honest", "harmless"),
)
"""The Pareto figure's panels: (x, y) dimension pairs."""


def pareto_figure(rows: Sequence[Mapping[str, Any]], highlight: Sequence[Entry] = ()) -> Any:
    """The Pareto figure: one panel per pair of dimensions (:data:`PARETO_PAIRS`), every row as
    a small marker by kind, the compared (non-oracle) rows' non-dominated front as a dotted line,
    each ``highlight`` entry (the main table's rows) at its mean as a larger marker with its
    number, and a key beside the panels: number → name. Numbers are placed so that no two
    overlap (:func:`_place_labels`)."""
    from matplotlib.lines import Line2D

    panel_in, gap_in, left_in, bottom_in, top_in = 2.6, 0.55, 0.55, 0.95, 0.55
    line_in = 0.15  # one key line at 6.5 pt
    per_col = max(1, int(panel_in / line_in))
    short = [textwrap.shorten(e.name, 32, placeholder="…") for e in highlight]
    wide = max((len(n) for n in short), default=0)
    names = [f"{k + 1:>2}  {n:<{wide}}  " + " ".join(f"{e.mean[d]:.2f}" for d in DIMENSIONS)
             for k, (n, e) in enumerate(zip(short, highlight, strict=True))]  # fmt: skip
    if names:  # a header line, then number, name and the three means
        names.insert(0, f"{'#':>2}  {'model':<{wide}}  " + "help hon  harm")
    n_cols = math.ceil(len(names) / per_col) if names else 0
    col_in = 0.3 + 0.054 * max((len(n) for n in names), default=0)
    key_in = n_cols * col_in + (0.25 if n_cols else 0)
    n = len(PARETO_PAIRS)
    fig_w = left_in + n * panel_in + (n - 1) * gap_in + key_in + 0.2
    fig_h = bottom_in + panel_in + top_in
    fig = _figure((fig_w, fig_h))
    renderer = fig.canvas.get_renderer()
    placed: list[Any] = []  # window extents of the key and of the numbers placed so far
    key_x = (left_in + n * panel_in + (n - 1) * gap_in + 0.25) / fig_w
    for k, name in enumerate(names):
        col, line = divmod(k, per_col)
        text = fig.text(key_x + col * col_in / fig_w,
                        (bottom_in + panel_in - line * line_in) / fig_h, name,
                        fontsize=6.5, va="top", ha="left", family="monospace",
                        color=_COLORS[highlight[k - 1].kind] if k else "black",
                        gid="pareto-key")  # fmt: skip
        placed.append(text.get_window_extent(renderer))
    for i, (dx, dy) in enumerate(PARETO_PAIRS):
        x0 = left_in + i * (panel_in + gap_in)
        ax = fig.add_axes((x0 / fig_w, bottom_in / fig_h, panel_in / fig_w, panel_in / fig_h))
        for kind, _ in GROUPS:
            pts = [(float(r[dx]), float(r[dy])) for r in rows if r["kind"] == kind]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=_MARKERS[kind],
                           color=_COLORS[kind], s=14, alpha=0.35, lw=0)  # fmt: skip
        front = pareto_front([(float(r[dx]), float(r[dy])) for r in rows if r["kind"] != "oracle"])
        if len(front) > 1:
            ax.plot([p[0] for p in front], [p[1] for p in front], color="#888888", lw=1, ls=":")
        for e in highlight:
            ax.scatter([e.mean[dx]], [e.mean[dy]], marker=_MARKERS[e.kind], s=42, zorder=3,
                       color=_COLORS[e.kind], edgecolors="black", linewidths=0.5)  # fmt: skip
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(dx.capitalize(), fontsize=8)
        ax.set_ylabel(dy.capitalize(), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.set_title(f"{dx.capitalize()} vs {dy.capitalize()}", fontsize=8)
        points = [(k + 1, e.mean[dx], e.mean[dy], _COLORS[e.kind]) for k, e in enumerate(highlight)]
        _place_labels(ax, points, placed, renderer)
    kinds = [(k, t) for k, t in GROUPS if any(r["kind"] == k for r in rows)]
    handles = [Line2D([], [], ls="", marker=_MARKERS[k], color=_COLORS[k], label=t)
               for k, t in kinds]  # fmt: skip
    if handles:
        fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(left_in / fig_w, 0.0),
                   ncol=len(handles), fontsize=7, frameon=False)  # fmt: skip
    fig.suptitle("Every evaluated model on each pair of dimensions (numbers: main-table rows; "
                 "dotted: the non-dominated front)", fontsize=8)  # fmt: skip
    return fig


def pareto_plot(
    rows: Sequence[Mapping[str, Any]], path: str | Path, highlight: Sequence[Entry] = ()
) -> Path:
    """Save :func:`pareto_figure` to ``path``."""
    pareto_figure(rows, highlight).savefig(path)
    return Path(path)


_RINGS = tuple(
    (r * cx, r * cy) for r in (5, 11, 19, 30)
    for cx, cy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
)  # fmt: skip
"""Where a number's box may sit relative to its point (corner or side nearest the point, in
points): the four diagonals, then the four sides, at growing distance (a thin leader line
from 11 pt on)."""

_CLUSTER_PX = 6.0
"""Points closer than this on the canvas (pixels) share one number label ("6–8,11")."""


def _place_labels(
    ax: Any, points: Sequence[tuple[int, float, float, str]], placed: list[Any], renderer: Any
) -> None:
    """Number each point (``(number, x, y, color)``) so that no two numbers' boxes overlap,
    with each other or with ``placed`` (extended with the new boxes).

    Deterministic: points closer than :data:`_CLUSTER_PX` share one label (their numbers,
    consecutive ones as a range). Each label, in order, goes to the first place of
    :data:`_RINGS` whose box is inside the axes and clear of every label and of the other
    points' markers; else clear of the labels inside the axes; else clear of the labels
    anywhere; else to the free place of a grid over the axes nearest its point (with a leader
    line). Boxes are computed from the label's size, so one text is drawn per label."""
    from matplotlib.transforms import Bbox, ScaledTranslation

    to_px = renderer.points_to_pixels(1.0)
    disp = [tuple(ax.transData.transform((x, y))) for _, x, y, _ in points]
    clusters: list[list[int]] = []
    for i, (px, py) in enumerate(disp):
        near = [c for c in clusters if any(math.dist((px, py), disp[j]) < _CLUSTER_PX for j in c)]
        merged = [i, *(j for c in near for j in c)]
        clusters = [c for c in clusters if c not in near] + [sorted(merged)]
    clusters.sort(key=lambda c: points[c[0]][0])
    markers = [Bbox.from_bounds(px - 4, py - 4, 8, 8) for px, py in disp]
    frame = ax.get_window_extent(renderer)
    pad = 1.5
    for members in clusters:
        nums = sorted(points[i][0] for i in members)
        colors = {points[i][3] for i in members}
        color = colors.pop() if len(colors) == 1 else "#333333"
        px, py = disp[members[0]]
        style = {"fontsize": 6.5, "fontweight": "bold", "color": color, "gid": "pareto-label"}
        probe = ax.text(0, 0, number_ranges(nums), **style)
        size = probe.get_window_extent(renderer)
        w, h = size.width, size.height
        probe.remove()
        others = [m for i, m in enumerate(markers) if i not in members]

        def box_at(
            dx: float, dy: float, at: tuple[float, float, float, float] = (px, py, w, h)
        ) -> Any:
            return _label_box(*at, dx, dy, pad)

        def free(b: Any, inside: bool = True, clear: Sequence[Any] = ()) -> bool:
            return (not inside or _contains(frame, b)) and not any(
                b.overlaps(o) for o in (*placed, *clear)
            )

        rings = [(dx * to_px, dy * to_px) for dx, dy in _RINGS]
        spots = [o for o in rings if free(box_at(*o), clear=others)]
        spots = spots or [o for o in rings if free(box_at(*o))]
        spots = spots or [o for o in rings if free(box_at(*o), inside=False)]
        if not spots:  # a grid over the axes, nearest first
            step = max(w, h) / 2
            grid = [
                (frame.x0 + step * a - px, frame.y0 + step * b - py)
                for a in range(1, int(frame.width / step))
                for b in range(1, int(frame.height / step))
            ]
            grid.sort(key=lambda o: (math.hypot(*o), o))
            spots = [o for o in grid if free(box_at(*o))] or [rings[0]]
        dx, dy = spots[0]
        b = box_at(dx, dy)
        x0, y0 = b.x0 + pad, b.y0 + pad  # the text's lower-left corner, on the canvas
        shift = ScaledTranslation((x0 - px) / renderer.dpi, (y0 - py) / renderer.dpi,
                                  ax.figure.dpi_scale_trans)  # fmt: skip
        ax.text(*ax.transData.inverted().transform((px, py)), number_ranges(nums), ha="left",
                va="bottom", transform=ax.transData + shift, **style)  # fmt: skip
        if math.hypot(dx, dy) > 8 * to_px:  # a leader line to the box's nearest corner
            ax.annotate("", ax.transData.inverted().transform((px, py)),
                        xytext=ax.transData.inverted().transform((px + dx, py + dy)),
                        arrowprops={"arrowstyle": "-", "color": color, "lw": 0.5,
                                    "shrinkA": 0, "shrinkB": 3})  # fmt: skip
        placed.append(b)


def _label_box(px: float, py: float, w: float, h: float, dx: float, dy: float, pad: float) -> Any:
    """The box (padded) of a ``w`` x ``h`` label whose corner, or side, nearest the point
    ``(px, py)`` sits at the offset ``(dx, dy)`` from it (pixels)."""
    from matplotlib.transforms import Bbox

    x0 = px + dx - (w if dx < 0 else w / 2 if dx == 0 else 0)
    y0 = py + dy - (h if dy < 0 else h / 2 if dy == 0 else 0)
    return Bbox.from_bounds(x0 - pad, y0 - pad, w + 2 * pad, h + 2 * pad)


def _contains(outer: Any, inner: Any) -> bool:
    return bool(
        outer.x0 <= inner.x0 and inner.x1 <= outer.x1 and outer.y0 <= inner.y0
        and inner.y1 <= outer.y1
    )  # fmt: skip


def _cmap(name: str) -> Any:
    from matplotlib import colormaps

    return colormaps[name]


def conflict_plot(matrix: Sequence[Sequence[float | None]], path: str | Path) -> Path:
    """The 3x3 collaboration / conflict heatmap of :func:`conflict_matrix` (blue: helped,
    red: hurt; grey: no specialist or no base)."""
    fig = _figure((5.2, 4.4))
    ax = fig.add_subplot()
    vals = [[float("nan") if v is None else float(v) for v in row] for row in matrix]
    finite = [abs(v) for row in vals for v in row if v == v]
    vmax = max(finite) if finite and max(finite) > 0 else 1.0
    cmap = _cmap("RdBu").with_extremes(bad="#dddddd")
    im = ax.imshow(vals, cmap=cmap, vmin=-vmax, vmax=vmax)
    labels = [d.capitalize() for d in DIMENSIONS]
    ax.set_xticks(range(3), labels)
    ax.set_yticks(range(3), labels)
    ax.set_xlabel("Score on dimension (change from base)")
    ax.set_ylabel("Specialist trained on")
    for i, row in enumerate(vals):
        for j, v in enumerate(row):
            dark = v == v and abs(v) > 0.6 * vmax
            text = "n/a" if v != v else f"{v:+.3f}"
            ax.text(
                j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black"
            )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title("Training on i moves j (specialists vs base)")
    fig.savefig(path, bbox_inches="tight")
    return Path(path)


DIAG_HEATMAP_STATS = (
    "norm",
    "kurtosis",
    "tail_share_3",
    "tail_share_5",
    "reweight_change",
    "sign_conflict",
    "subspace_overlap",
    "sti_normalized",
    "resm_density",
    "resm_rank_ratio",
)
"""Statistics drawn as per-layer heatmaps (other ``tail_share_<c>`` columns are added when the
rows have them); the full set is in each row's tables and ``diagnostics.json``."""


def diagnostics_stats(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The statistics drawn as heatmaps: those of :data:`DIAG_HEATMAP_STATS` the rows' parameters
    have a value of, then any other ``tail_share_<c>`` by ``c``."""
    present = {
        k for r in rows for p in r.get("params") or [] for k, v in p.items() if v is not None
    }
    extra = sorted(
        (k for k in present if k.startswith("tail_share_") and k not in DIAG_HEATMAP_STATS),
        key=lambda k: float(k.removeprefix("tail_share_")),
    )
    return [s for s in (*DIAG_HEATMAP_STATS, *extra) if s in present]


def diagnostics_grid(
    row: Mapping[str, Any], stat: str, layers: Sequence[int], types: Sequence[str]
) -> list[list[float]]:
    """The (layer x type) grid of one diagnostics row's per-parameter values of ``stat``; NaN
    where a layer has no such parameter or the statistic is undefined there."""
    grid = [[float("nan")] * len(types) for _ in layers]
    li = {layer: i for i, layer in enumerate(layers)}
    ti = {t: j for j, t in enumerate(types)}
    for p in row.get("params") or []:
        v = p.get(stat)
        if p.get("layer") is None or v is None or p["type"] not in ti:
            continue
        grid[li[int(p["layer"])]][ti[p["type"]]] = float(v)
    return grid


DIAG_UNIT_STATS = ("sign_conflict", "subspace_overlap", "subspace_overlap_right",
                   "reweight_change", "resm_density")  # fmt: skip
"""Statistics that are shares, in [0, 1] by definition (so are ``tail_share_<c>``): their
heatmaps always span 0–1, so one color means the same share in every figure."""


def diag_color_range(stat: str, values: Sequence[float]) -> tuple[float, float]:
    """A heatmap's color scale: 0–1 for a share (:data:`DIAG_UNIT_STATS`, ``tail_share_<c>``);
    else the finite values' range, and for constant values the range from 0 (or the value,
    when negative) to at least 1, so an all-zero map gets 0–1, never a scale around 0."""
    if stat in DIAG_UNIT_STATS or stat.startswith("tail_share_"):
        return 0.0, 1.0
    finite = [float(v) for v in values if v == v and math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    if hi <= lo:
        return min(0.0, lo), max(1.0, hi)
    return lo, hi


def diagnostics_heatmap(rows: Sequence[Mapping[str, Any]], stat: str, path: str | Path) -> Path:
    """One heatmap per diagnostics row, side by side, on one color scale: rows = layer index,
    columns = layer type, color = the statistic (per-task statistics averaged over tasks); grey:
    undefined (e.g. no SVD statistic on a norm vector). Parameters outside the layers
    (embeddings, final norm, LM head) are in the tables, not here."""
    layers, types = layer_axes(rows)
    grids = [diagnostics_grid(r, stat, layers, types) for r in rows]
    vmin, vmax = diag_color_range(stat, [v for g in grids for line in g for v in line])
    # Fixed margins in inches (no tight bounding box: one draw per figure): room for the
    # rotated type names below, the titles above, the colorbar on the right.
    label_in = 0.055 * max((len(t) for t in types), default=4) + 0.35
    panel_w, panel_h = max(2.4, 0.42 * len(types)), max(1.2, 0.32 * len(layers))
    width, height = panel_w * len(rows) + 0.55 * len(rows) + 1.0, panel_h + label_in + 0.75
    fig = _figure((width, height))
    fig.subplots_adjust(
        left=0.5 / width,
        right=1 - 0.9 / width,
        bottom=label_in / height,
        top=1 - 0.6 / height,
        wspace=0.55 / panel_w,
    )
    cmap = _cmap("viridis").with_extremes(bad="#dddddd")
    axes = []
    im = None
    for i, (row, grid) in enumerate(zip(rows, grids, strict=True)):
        ax = fig.add_subplot(1, len(rows), i + 1)
        axes.append(ax)
        im = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(types)), types, rotation=60, ha="right", fontsize=6)
        ax.set_yticks(range(len(layers)), [str(x) for x in layers], fontsize=6)
        ax.set_ylabel("layer" if i == 0 else "", fontsize=7)
        ax.set_title(str(row.get("label", row.get("row_key"))), fontsize=7)
        if len(layers) * len(types) <= 120:
            for a, line in enumerate(grid):
                for b, v in enumerate(line):
                    if v == v:
                        dark = (v - vmin) / (vmax - vmin) < 0.5
                        ax.text(b, a, f"{v:.2g}", ha="center", va="center", fontsize=5,
                                color="white" if dark else "black")  # fmt: skip
    if im is not None:
        cax = fig.add_axes((1 - 0.75 / width, label_in / height, 0.12 / width, panel_h / height))
        fig.colorbar(im, cax=cax)
        cax.tick_params(labelsize=6)
    helps = [r.get("statistics", {}).get(stat) for r in rows]
    fig.suptitle(f"{stat}: {next((h for h in helps if h), stat)}", fontsize=8)
    fig.savefig(path)
    return Path(path)


def diagnostics_heatmaps(rows: Sequence[Mapping[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    """Write :func:`diagnostics_heatmap` of each statistic the diagnostics rows have
    (:func:`diagnostics_stats`) as ``<out_dir>/diag_<stat>.png``; none when no parameter has a
    layer. Returns ``{statistic: path}``, in :func:`diagnostics_stats`' order."""
    out = Path(out_dir)
    layers, _ = layer_axes(rows)
    if not layers:
        return {}
    return {s: diagnostics_heatmap(rows, s, out / f"diag_{s}.png") for s in diagnostics_stats(rows)}
