"""The update-geometry view: how the empirical NTK K reshapes the unit sphere of gradient directions.

In function space one gradient step moves the outputs by ``Δf = -η K ∇_f L``. Restricted to the span of
K's top-3 eigenvectors (its eigenbasis, where K acts as ``diag(λ1, λ2, λ3)``), the unit sphere of
gradient directions ``∇_f L`` is mapped to an ellipsoid with semi-axes ``(λ1, λ2, λ3)``. A collapsed
spectrum (λ2, λ3 ≪ λ1) gives a flat, needle-like ellipsoid: whatever the gradient, the update moves the
function along few directions. SPHERE should keep the ellipsoid rounder.

Each ellipsoid is divided by its own λ1, so the view compares *shapes* across stages and runs; the
absolute eigenvalues are printed in the titles and in the table.

Layout of the figure: one column per run (baseline, SPHERE, ...), top row the unit sphere of gradient
directions with ``n_points`` sample directions, bottom row its image ``K ∇_f L / λ1``; one animation
frame per stage, a slider over the stages, Play / Pause / Reset buttons and a mesh on/off toggle.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = [
    "GeometryRun",
    "sample_directions",
    "normalised_semi_axes",
    "ellipsoid_mesh",
    "geometry_figure",
    "geometry_table_html",
    "geometry_html",
    "DEFAULT_DIV_ID",
    "READING_GUIDE",
]

DEFAULT_DIV_ID = "sphere-geometry"
AXIS_LIMIT = 1.15
"""Every scene shows [-AXIS_LIMIT, AXIS_LIMIT]³ (a normalised ellipsoid fits in [-1, 1]³) with a cube aspect."""

READING_GUIDE = (
    "Top row: sample gradient directions ∇_f L on the unit sphere (restricted to the top-3 eigenspace of the "
    "empirical NTK K). Bottom row: their images K ∇_f L, an ellipsoid with semi-axes (λ1, λ2, λ3), each stage "
    "divided by its own λ1 so that shapes compare; points keep their colour (their component along e1). "
    "A flat or needle-like ellipsoid means a collapsed spectrum: updates move the policy along few directions. "
    "Use the slider or Play to step through the stages; drag a scene to rotate it."
)
"""The default caption under the view (``sphere_rl.report.html.Geometry``)."""

_SURFACE_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
_POINT_SCALE = "RdBu"


@dataclass(frozen=True)
class GeometryRun:
    """One run (one column of the view): the top-3 eigenvalues of K at every stage.

    ``stages`` are the stage names (e.g. ``["Initialise", "Stand", "Walk"]``), ``eigenvalues[i]`` the
    top-3 eigenvalues of K at stage i (any order; they are sorted in decreasing order; round-off negatives
    down to -1e-9 of the largest become 0), and
    ``effective_rank[i]`` (optional) r_e(K) at stage i, shown in the titles and the table.
    Lists are stored as tuples.
    """

    label: str
    stages: Sequence[str]
    eigenvalues: Sequence[tuple[float, float, float]]
    effective_rank: Sequence[float] | None = None

    def __post_init__(self) -> None:
        stages = tuple(str(s) for s in self.stages)
        if not stages:
            raise ValueError(f"GeometryRun {self.label!r}: no stages")
        eigs = []
        for i, triple in enumerate(self.eigenvalues):
            values = tuple(float(v) for v in triple)
            if len(values) != 3:
                raise ValueError(f"GeometryRun {self.label!r}: stage {i} has {len(values)} eigenvalues, expected 3")
            # K is positive semi-definite: a tiny negative eigenvalue is round-off and counts as 0
            tolerance = 1e-9 * max((abs(v) for v in values if math.isfinite(v)), default=0.0)
            if not all(math.isfinite(v) and v >= -tolerance for v in values):
                raise ValueError(f"GeometryRun {self.label!r}: stage {i} eigenvalues must be finite and >= 0, got {values}")
            values = tuple(max(v, 0.0) for v in values)
            eigs.append(tuple(sorted(values, reverse=True)))
        if len(eigs) != len(stages):
            raise ValueError(f"GeometryRun {self.label!r}: {len(stages)} stages but {len(eigs)} eigenvalue triples")
        ranks = None
        if self.effective_rank is not None:
            ranks = tuple(float(r) for r in self.effective_rank)
            if len(ranks) != len(stages):
                raise ValueError(f"GeometryRun {self.label!r}: {len(stages)} stages but {len(ranks)} effective ranks")
        object.__setattr__(self, "label", str(self.label))
        object.__setattr__(self, "stages", stages)
        object.__setattr__(self, "eigenvalues", tuple(eigs))
        object.__setattr__(self, "effective_rank", ranks)


def sample_directions(n: int, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors in R³ (rows), uniform on the sphere, deterministic for a given seed."""
    if n < 1:
        raise ValueError(f"need at least one sample direction, got {n}")
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, 3))
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(norms, 1e-12)


def normalised_semi_axes(eigenvalues: Sequence[float]) -> np.ndarray:
    """``(λ1, λ2, λ3) / λ1`` (decreasing order); all zeros when K is zero."""
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64))[::-1]
    return lam / lam[0] if lam[0] > 0 else np.zeros(3)


def ellipsoid_mesh(semi_axes: Sequence[float], resolution: int = 24) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid (x, y, z) of the ellipsoid ``(x/a)² + (y/b)² + (z/c)² = 1`` for ``Surface`` traces.

    ``resolution + 1`` latitudes × ``2 * resolution + 1`` longitudes (the seam repeated so the surface
    closes). ``semi_axes = (1, 1, 1)`` gives the unit sphere.
    """
    a, b, c = (float(s) for s in semi_axes)
    theta = np.linspace(0.0, np.pi, resolution + 1)  # polar angle
    phi = np.linspace(0.0, 2.0 * np.pi, 2 * resolution + 1)  # azimuth
    sin_t, cos_t = np.sin(theta)[:, None], np.cos(theta)[:, None]
    x = a * sin_t * np.cos(phi)[None, :]
    y = b * sin_t * np.sin(phi)[None, :]
    z = c * np.broadcast_to(cos_t, x.shape)
    return x, y, z


def _check_runs(runs: Sequence[GeometryRun]) -> tuple[str, ...]:
    if not runs:
        raise ValueError("the geometry view needs at least one run")
    stages = runs[0].stages
    for run in runs[1:]:
        if run.stages != stages:
            raise ValueError(f"all runs must share their stages: {runs[0].label!r} has {list(stages)}, "
                             f"{run.label!r} has {list(run.stages)}")
    return stages


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _stage_title(run: GeometryRun, i: int) -> str:
    lam = run.eigenvalues[i]
    ax = normalised_semi_axes(lam)
    parts = [f"λ2/λ1 = {ax[1]:.2f}", f"λ3/λ1 = {ax[2]:.2f}"]
    if run.effective_rank is not None:
        parts.append(f"r_e(K) = {run.effective_rank[i]:.3g}")
    return (f"<b>{html.escape(run.label)}</b>: K∇<sub>f</sub>L ÷ λ1 at {html.escape(run.stages[i])} "
            f"(λ1 = {_fmt(lam[0])})<br>" + ", ".join(parts))


def _sphere_title(run: GeometryRun) -> str:
    return f"<b>{html.escape(run.label)}</b>: unit sphere of gradient directions ∇<sub>f</sub>L"


def _axes_trace(semi_axes: np.ndarray, colour: str) -> go.Scatter3d:
    """The three semi-axes as line segments from the origin (None breaks between them)."""
    xs, ys, zs = [], [], []
    for k in range(3):
        end = np.zeros(3)
        end[k] = semi_axes[k]
        xs += [0.0, float(end[0]), None]
        ys += [0.0, float(end[1]), None]
        zs += [0.0, float(end[2]), None]
    return go.Scatter3d(x=xs, y=ys, z=zs, mode="lines", line={"color": colour, "width": 6},
                        hoverinfo="skip", showlegend=False, name="semi-axes")


def _surface(x: np.ndarray, y: np.ndarray, z: np.ndarray, colour: str, name: str) -> go.Surface:
    return go.Surface(x=x.astype(np.float32), y=y.astype(np.float32), z=z.astype(np.float32),
                      colorscale=[[0.0, colour], [1.0, colour]], showscale=False, opacity=0.35,
                      hoverinfo="skip", name=name, showlegend=False)


def _points(p: np.ndarray, colour_values: np.ndarray, name: str) -> go.Scatter3d:
    return go.Scatter3d(x=p[:, 0].astype(np.float32), y=p[:, 1].astype(np.float32), z=p[:, 2].astype(np.float32),
                        mode="markers", name=name, showlegend=False,
                        marker={"size": 3.5, "color": colour_values.astype(np.float32), "colorscale": _POINT_SCALE,
                                "cmin": -1.0, "cmax": 1.0},
                        hovertemplate="(%{x:.2f}, %{y:.2f}, %{z:.2f})<extra>" + html.escape(name) + "</extra>")


def geometry_figure(runs: Sequence[GeometryRun], *, n_points: int = 64, seed: int = 0, resolution: int = 20,
                    frame_ms: int = 1000, height: int = 900) -> go.Figure:
    """The animated update-geometry figure (see the module docstring).

    Traces, per run (column ``c``, in this order): unit-sphere surface, sphere sample points (top row),
    ellipsoid surface, mapped points, semi-axes (bottom row); frames update only the bottom-row traces.
    Sample points are coloured by their component along K's first eigenvector, identically in both rows.
    """
    runs = list(runs)
    stages = _check_runs(runs)
    n_runs = len(runs)
    directions = sample_directions(n_points, seed)
    colour_values = directions[:, 0]
    fig = make_subplots(
        rows=2, cols=n_runs, specs=[[{"type": "scene"}] * n_runs] * 2,
        subplot_titles=[_sphere_title(r) for r in runs] + [_stage_title(r, 0) for r in runs],
        vertical_spacing=0.07, horizontal_spacing=0.02,
    )
    sphere = ellipsoid_mesh((1.0, 1.0, 1.0), resolution)
    surface_idx, animated_idx = [], []
    for c, run in enumerate(runs, start=1):
        colour = _SURFACE_COLOURS[(c - 1) % len(_SURFACE_COLOURS)]
        ax0 = normalised_semi_axes(run.eigenvalues[0])
        surface_idx.append(len(fig.data))
        fig.add_trace(_surface(*sphere, colour, f"{run.label}: sphere"), row=1, col=c)
        fig.add_trace(_points(directions, colour_values, f"{run.label}: ∇_f L"), row=1, col=c)
        surface_idx.append(len(fig.data))
        animated_idx += [len(fig.data), len(fig.data) + 1, len(fig.data) + 2]
        fig.add_trace(_surface(*ellipsoid_mesh(ax0, resolution), colour, f"{run.label}: ellipsoid"), row=2, col=c)
        fig.add_trace(_points(directions * ax0, colour_values, f"{run.label}: K∇_f L / λ1"), row=2, col=c)
        fig.add_trace(_axes_trace(ax0, colour), row=2, col=c)

    # Titles: make_subplots puts the subplot titles first among the layout annotations, row-major.
    base_annotations = [a.to_plotly_json() for a in fig.layout.annotations]

    frames = []
    for i, stage in enumerate(stages):
        data = []
        annotations = [dict(a) for a in base_annotations]
        for c, run in enumerate(runs):
            ax = normalised_semi_axes(run.eigenvalues[i])
            colour = _SURFACE_COLOURS[c % len(_SURFACE_COLOURS)]
            data += [_surface(*ellipsoid_mesh(ax, resolution), colour, f"{run.label}: ellipsoid"),
                     _points(directions * ax, colour_values, f"{run.label}: K∇_f L / λ1"),
                     _axes_trace(ax, colour)]
            annotations[n_runs + c]["text"] = _stage_title(run, i)
        frames.append(go.Frame(name=_frame_name(i), data=data, traces=animated_idx,
                               layout={"annotations": annotations,
                                       "title": {"text": _figure_title(stages, i)}}))
    fig.frames = frames

    still = {"mode": "immediate", "frame": {"duration": 0, "redraw": True}, "transition": {"duration": 0}}
    fig.update_layout(
        title={"text": _figure_title(stages, 0), "x": 0.5, "xanchor": "center", "y": 0.99, "yanchor": "top"},
        height=height, margin={"l": 10, "r": 10, "t": 120, "b": 10}, showlegend=False,
        sliders=[{
            "active": 0, "pad": {"t": 10, "b": 10}, "len": 0.9, "x": 0.05,
            "currentvalue": {"prefix": "Stage: ", "visible": True},
            "steps": [{"label": s, "method": "animate", "args": [[_frame_name(i)], still]}
                      for i, s in enumerate(stages)],
        }],
        updatemenus=[{
            "type": "buttons", "direction": "left", "showactive": False,
            "x": 0.0, "y": 1.065, "xanchor": "left", "yanchor": "bottom", "pad": {"t": 0, "r": 10},
            "buttons": [
                {"label": "▶ Play", "method": "animate",
                 "args": [None, {"mode": "immediate", "fromcurrent": True,
                                 "frame": {"duration": frame_ms, "redraw": True}, "transition": {"duration": 0}}]},
                {"label": "❚❚ Pause", "method": "animate", "args": [[None], still]},
                {"label": "⟲ Reset", "method": "animate", "args": [[_frame_name(0)], still]},
                {"label": "Mesh on/off", "method": "restyle",
                 "args": [{"visible": False}, surface_idx], "args2": [{"visible": True}, surface_idx]},
            ],
        }],
    )
    axis = {"range": [-AXIS_LIMIT, AXIS_LIMIT], "autorange": False, "showspikes": False,
            "tickvals": [-1, 0, 1], "zeroline": True}
    camera = {"eye": {"x": 1.5, "y": 1.35, "z": 0.9}}
    for c in range(1, n_runs + 1):
        for row, names in ((1, ("∇L·e1", "∇L·e2", "∇L·e3")), (2, ("e1 (÷λ1)", "e2 (÷λ1)", "e3 (÷λ1)"))):
            fig.update_scenes(
                row=row, col=c, aspectmode="cube", camera=camera,
                xaxis={**axis, "title": {"text": names[0]}}, yaxis={**axis, "title": {"text": names[1]}},
                zaxis={**axis, "title": {"text": names[2]}},
            )
    return fig


def _frame_name(i: int) -> str:
    return f"stage-{i}"


def _figure_title(stages: Sequence[str], i: int) -> str:
    return (f"Update geometry at stage {i + 1}/{len(stages)}: {html.escape(stages[i])} "
            "<span style='font-size:12px'>(top-3 eigenspace of K, each ellipsoid ÷ its λ1)</span>")


def geometry_table_html(runs: Sequence[GeometryRun]) -> str:
    """A plain HTML table, stage × run: λ1..λ3, λ2/λ1, λ3/λ1, r_e(K) (the numbers behind the 3D view).

    Each number cell carries its full-precision value in ``data-value``.
    """
    runs = list(runs)
    stages = _check_runs(runs)
    head = "".join(f"<th>{h}</th>" for h in ("stage", "run", "λ1", "λ2", "λ3", "λ2/λ1", "λ3/λ1", "r_e(K)"))
    rows = []
    for i, stage in enumerate(stages):
        for run in runs:
            lam = run.eigenvalues[i]
            ax = normalised_semi_axes(lam)
            values = [*lam, ax[1], ax[2], run.effective_rank[i] if run.effective_rank is not None else None]
            cells = "".join("<td>–</td>" if v is None else f'<td data-value="{float(v)!r}">{_fmt(float(v))}</td>'
                            for v in values)
            rows.append(f"<tr><td>{html.escape(stage)}</td><td>{html.escape(run.label)}</td>{cells}</tr>")
    return (f'<table class="geometry-table"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _defer_until_loaded(plot_html: str) -> str:
    """Run plotly's drawing script after the page's ``load`` event instead of while the page is parsed.

    Drawing the WebGL scenes takes seconds under a software renderer; deferred, the report opens
    (text, tables, figures) at once and the 3D view appears a moment later."""
    start = plot_html.find("<script")
    body_start = plot_html.find(">", start) + 1
    end = plot_html.rfind("</script>")
    if start < 0 or end < body_start:
        return plot_html
    body = plot_html[body_start:end]
    deferred = ("(function(){function draw(){" + body + "}"
                "if(document.readyState==='complete'){setTimeout(draw,0);}"
                "else{window.addEventListener('load',function(){setTimeout(draw,0);});}})();")
    return plot_html[:body_start] + deferred + plot_html[end:]


def geometry_html(runs: Sequence[GeometryRun], *, div_id: str = DEFAULT_DIV_ID, defer: bool = True,
                  **figure_kwargs) -> str:
    """The view as an HTML fragment for a page that already loads plotly.js (not included here).

    Contains the plotly ``<div id=div_id>`` and its script, a ``<noscript>`` copy of
    :func:`geometry_table_html`, and a hidden ``<div id="{div_id}-fallback">`` with the same table that a
    small inline script shows (hiding the plot) when the browser offers no WebGL.
    ``figure_kwargs`` go to :func:`geometry_figure`. With ``defer`` (default) the view is drawn after
    the page's ``load`` event (:func:`_defer_until_loaded`).
    """
    fig = geometry_figure(runs, **figure_kwargs)
    plot = fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, auto_play=False,
                       config={"displaylogo": False, "responsive": True})
    if defer:
        plot = _defer_until_loaded(plot)
    table = geometry_table_html(runs)
    note = ("<p>The 3D view needs WebGL, which this browser does not provide; "
            "these are the numbers it shows (top-3 eigenvalues of K per stage).</p>")
    check = (
        "<script>(function(){var ok=false;try{var c=document.createElement('canvas');"
        "ok=!!(window.WebGLRenderingContext&&(c.getContext('webgl2')||c.getContext('webgl')));}catch(e){}"
        f"if(!ok){{document.getElementById('{div_id}-fallback').hidden=false;"
        f"document.getElementById('{div_id}-view').style.display='none';}}}})();</script>"
    )
    return (f'<div class="geometry" id="{div_id}-view">{plot}</div>\n'
            f"<noscript>{note}{table}</noscript>\n"
            f'<div class="geometry-fallback" id="{div_id}-fallback" hidden>{note}{table}</div>\n{check}\n')
