"""The HTML report writer and the 3D update-geometry view, without a browser (see test_report_browser.py for that)."""

import datetime as dt
import io
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

from sphere_rl import __version__
from sphere_rl.report.geometry import (
    GeometryRun, ellipsoid_mesh, geometry_figure, geometry_html, geometry_table_html, normalised_semi_axes,
    sample_directions,
)
from sphere_rl.report.html import (
    Figure, Geometry, Heading, Table, Text, format_number, render_report, text_to_html, write_report,
)

STAGES = ["Initialise", "Stand", "Walk", "Pole", "Slide", "Run"]


def synthetic_runs():
    """A baseline whose top-3 spectrum collapses over the stages and a SPHERE run that stays round."""
    t = np.arange(len(STAGES))
    base = GeometryRun("Top-K MoE", STAGES, [(50.0 * 0.8**k, 45.0 * 0.5**k, 40.0 * 0.35**k) for k in t],
                       [60.0 * 0.6**k for k in t])
    sphere = GeometryRun("+ SPHERE", STAGES, [(50.0, 45.0 * 0.97**k, 40.0 * 0.95**k) for k in t],
                         [60.0 - 2.0 * k for k in t])
    return [base, sphere]


def _png_bytes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [1, 0])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=50)
    plt.close(fig)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------- geometry
def test_ellipsoid_mesh_lies_on_the_normalised_ellipsoid():
    lam = (8.0, 2.0, 0.5)
    a, b, c = normalised_semi_axes(lam)
    assert (a, b, c) == pytest.approx((1.0, 0.25, 0.0625))
    x, y, z = ellipsoid_mesh((a, b, c), resolution=12)
    assert x.shape == (13, 25)
    np.testing.assert_allclose((x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2, 1.0, rtol=1e-12)
    # the poles and the equator reach the semi-axes
    assert np.abs(x).max() == pytest.approx(a) and np.abs(z).max() == pytest.approx(c)
    assert np.abs(y).max() == pytest.approx(b, rel=1e-3)


def test_normalised_semi_axes_sorts_and_handles_zero():
    assert normalised_semi_axes((1.0, 4.0, 2.0)) == pytest.approx((1.0, 0.5, 0.25))
    assert list(normalised_semi_axes((0.0, 0.0, 0.0))) == [0.0, 0.0, 0.0]


def test_sample_directions_are_unit_and_deterministic():
    d = sample_directions(50, seed=3)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)
    np.testing.assert_array_equal(d, sample_directions(50, seed=3))
    assert not np.allclose(d, sample_directions(50, seed=4))


def _bottom_traces(fig, n_runs, run):
    """(ellipsoid surface, mapped points, semi-axes) indices of run ``run`` (5 traces per run)."""
    first = 5 * run + 2
    return first, first + 1, first + 2


def test_figure_frames_map_the_sample_points_and_the_mesh():
    runs = synthetic_runs()
    fig = geometry_figure(runs, n_points=40, seed=1, resolution=10)
    directions = sample_directions(40, seed=1)
    assert len(fig.data) == 5 * len(runs)
    assert len(fig.frames) == len(STAGES)
    for r, run in enumerate(runs):
        top_points = fig.data[5 * r + 1]
        np.testing.assert_allclose(np.c_[top_points.x, top_points.y, top_points.z], directions, atol=1e-6)
        assert isinstance(fig.data[5 * r], go.Surface)
    for i, frame in enumerate(fig.frames):
        assert frame.name == f"stage-{i}"
        assert list(frame.traces) == [k for r in range(len(runs)) for k in _bottom_traces(fig, len(runs), r)]
        for r, run in enumerate(runs):
            surface, points, axes = frame.data[3 * r: 3 * r + 3]
            a, b, c = np.array(run.eigenvalues[i]) / run.eigenvalues[i][0]
            x, y, z = (np.asarray(v, dtype=np.float64) for v in (surface.x, surface.y, surface.z))
            np.testing.assert_allclose((x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2, 1.0, rtol=1e-4)
            mapped = np.c_[points.x, points.y, points.z]
            np.testing.assert_allclose(mapped, directions * np.array([a, b, c]), rtol=1e-5, atol=1e-6)
            assert max(v for v in axes.x if v is not None) == pytest.approx(a)
            assert max(v for v in axes.z if v is not None) == pytest.approx(c)
    # the first frame is what the figure shows before any interaction
    for r in range(len(runs)):
        s, p, _ = _bottom_traces(fig, len(runs), r)
        np.testing.assert_array_equal(fig.data[s].z, fig.frames[0].data[3 * r].z)
        np.testing.assert_array_equal(fig.data[p].x, fig.frames[0].data[3 * r + 1].x)


def test_baseline_collapses_and_sphere_stays_round_in_the_frames():
    runs = synthetic_runs()
    fig = geometry_figure(runs, resolution=8)
    last = fig.frames[-1]
    base_z = np.abs(np.asarray(last.data[0].z)).max()
    sphere_z = np.abs(np.asarray(last.data[3].z)).max()
    assert base_z < 0.05 < 0.5 < sphere_z


def test_slider_buttons_and_layout():
    runs = synthetic_runs()
    fig = geometry_figure(runs)
    (slider,) = fig.layout.sliders
    assert [s.label for s in slider.steps] == STAGES
    assert [list(s.args[0]) for s in slider.steps] == [[f.name] for f in fig.frames]
    assert all(s.method == "animate" for s in slider.steps)
    buttons = {b.label: b for b in fig.layout.updatemenus[0].buttons}
    assert set(buttons) == {"▶ Play", "❚❚ Pause", "⟲ Reset", "Mesh on/off"}
    assert buttons["▶ Play"].args[0] is None and buttons["▶ Play"].args[1]["frame"]["redraw"] is True
    assert list(buttons["⟲ Reset"].args[0]) == ["stage-0"]
    mesh = buttons["Mesh on/off"]
    surfaces = [k for k, t in enumerate(fig.data) if isinstance(t, go.Surface)]
    assert mesh.method == "restyle" and sorted(mesh.args[1]) == surfaces and sorted(mesh.args2[1]) == surfaces
    assert mesh.args[0] == {"visible": False} and mesh.args2[0] == {"visible": True}
    # fixed, equal axis ranges and a cube aspect in every scene (else plotly rescales every ellipsoid)
    scenes = [fig.layout[k] for k in fig.layout if k.startswith("scene")]
    assert len(scenes) == 2 * len(runs)
    for scene in scenes:
        assert scene.aspectmode == "cube"
        for axis in (scene.xaxis, scene.yaxis, scene.zaxis):
            assert tuple(axis.range) == (-1.15, 1.15)
    # stage titles and r_e(K) in the frame annotations
    texts = [a.text for a in fig.frames[3].layout.annotations]
    assert any("Pole" in t and "r_e(K) = " in t for t in texts)


def test_figure_is_deterministic():
    runs = synthetic_runs()
    assert geometry_figure(runs).to_json() == geometry_figure(runs).to_json()


def test_geometry_run_validation():
    with pytest.raises(ValueError, match="2 stages but 1"):
        GeometryRun("x", ["a", "b"], [(1.0, 1.0, 1.0)])
    with pytest.raises(ValueError, match="expected 3"):
        GeometryRun("x", ["a"], [(1.0, 1.0)])
    with pytest.raises(ValueError, match=">= 0"):
        GeometryRun("x", ["a"], [(1.0, -1.0, 0.0)])
    with pytest.raises(ValueError, match="effective ranks"):
        GeometryRun("x", ["a"], [(1.0, 1.0, 1.0)], [1.0, 2.0])
    assert GeometryRun("x", ["a"], [(2.0, 1.0, -1e-12)]).eigenvalues == ((2.0, 1.0, 0.0),)  # round-off
    run = GeometryRun("x", ["a"], [[0.5, 2.0, 1.0]])
    assert run.eigenvalues == ((2.0, 1.0, 0.5),) and run.stages == ("a",)
    with pytest.raises(ValueError, match="share their stages"):
        geometry_figure([run, GeometryRun("y", ["b"], [(1.0, 1.0, 1.0)])])


class _Cells(HTMLParser):
    """Rows of the first <table> found: each row a list of (text, data-value or None)."""

    def __init__(self):
        super().__init__()
        self.rows, self._row, self._cell, self._done = [], None, None, False

    def handle_starttag(self, tag, attrs):
        if self._done:
            return
        if tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ["", dict(attrs).get("data-value")]

    def handle_endtag(self, tag):
        if self._done:
            return
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(tuple(self._cell))
            self._cell = None
        elif tag == "tr":
            self.rows.append(self._row)
            self._row = None
        elif tag == "table":
            self._done = True

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data


def test_fallback_table_numbers_equal_the_inputs():
    runs = synthetic_runs()
    parser = _Cells()
    parser.feed(geometry_table_html(runs))
    header, *rows = parser.rows
    assert [h for h, _ in header] == ["stage", "run", "λ1", "λ2", "λ3", "λ2/λ1", "λ3/λ1", "r_e(K)"]
    assert len(rows) == len(STAGES) * len(runs)
    for k, row in enumerate(rows):
        i, run = divmod(k, len(runs))
        run = runs[run]
        assert row[0][0] == STAGES[i] and row[1][0] == run.label
        values = [float(v) for _, v in row[2:]]
        lam = run.eigenvalues[i]
        assert values == [*lam, lam[1] / lam[0], lam[2] / lam[0], run.effective_rank[i]]
        shown = [float(t) for t, _ in row[2:]]
        np.testing.assert_allclose(shown, values, rtol=5e-3)


def test_geometry_fragment_has_fallbacks_and_no_plotlyjs():
    fragment = geometry_html(synthetic_runs(), div_id="geo")
    assert '<div id="geo"' in fragment and 'id="geo-fallback" hidden' in fragment
    assert fragment.count("<table") == 2  # <noscript> and the WebGL fallback
    assert re.search(r"<noscript>.*<table", fragment, re.S)
    assert "getContext('webgl2')" in fragment and "getContext('webgl')" in fragment
    assert "Plotly.newPlot" in fragment and get_plotlyjs()[:300] not in fragment


# ------------------------------------------------------------------------------------------- report
def _report(**kw):
    df = pd.DataFrame({"task": ["stand", "walk<1>"], "success": [0.5412, np.nan], "env_steps": [10_000_000, 20]})
    sections = [
        Heading("Results"), Text("Average success, **5 seeds**."), Table(df, caption="final success"),
        Figure(_png_bytes(), caption="a figure"), Heading("Update geometry"), Geometry(synthetic_runs()),
    ]
    return render_report(title="Sweep <demo>", sections=sections,
                         generated=dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.timezone.utc), **kw)


def test_report_is_self_contained():
    page = _report()
    tags = re.findall(r"<(?:script|link|img|iframe|source|embed|object)\b[^>]*>", page, re.I)
    for tag in tags:
        assert not re.search(r"""(?:src|href|data)\s*=\s*["']?\s*(?:https?:)?//""", tag, re.I), tag
    assert not re.search(r"<link\b", page, re.I)
    assert not re.search(r"@import|url\(\s*['\"]?(?:https?:)?//", page, re.I)
    assert page.count(get_plotlyjs()[:2000]) == 1
    assert page.count(get_plotlyjs()[-2000:]) == 1
    assert "Content-Security-Policy" in page
    assert f"sphere-rl {__version__}" in page and "2026-01-02 03:04 UTC" in page
    assert '<a href="#results">Results</a>' in page and 'id="update-geometry"' in page


def test_plotlyjs_only_with_a_geometry_view_and_unique_ids():
    page = render_report(title="t", sections=[Text("no 3D here")])
    assert get_plotlyjs()[:2000] not in page and len(page) < 20_000
    two = render_report(title="t", sections=[Geometry(synthetic_runs()), Geometry(synthetic_runs())])
    assert two.count(get_plotlyjs()[:2000]) == 1
    assert '<div id="sphere-geometry"' in two and '<div id="sphere-geometry-2"' in two


def test_text_is_escaped():
    out = text_to_html("<script>alert('x')</script> & **bold** *it* `a<b>` 2 * 3 * 4\n\n- one\n- two & <i>")
    assert "<script>" not in out and "<i>" not in out
    assert "&lt;script&gt;" in out and "&amp;" in out
    assert "<strong>bold</strong>" in out and "<em>it</em>" in out and "<code>a&lt;b&gt;</code>" in out
    assert "2 * 3 * 4" in out
    assert "<ul><li>one</li><li>two &amp; &lt;i&gt;</li></ul>" in out
    page = _report()
    assert "<title>Sweep &lt;demo&gt;</title>" in page and "walk&lt;1&gt;" in page and "walk<1>" not in page


def test_table_renders_formatted_numbers():
    page = _report()
    assert "<caption>final success</caption>" in page
    assert "<th>task</th><th>success</th><th>env_steps</th>" in page
    assert '<td class="num">0.541</td>' in page and '<td class="num">10,000,000</td>' in page
    assert '<td class="num">–</td>' in page  # NaN


def test_table_index_and_multiindex_columns():
    df = pd.DataFrame([[1.0, 2.0]], columns=pd.MultiIndex.from_tuples([("success", "mean"), ("success", "std")]),
                      index=pd.Index(["Top-K MoE"], name="arch"))
    page = render_report(title="t", sections=[Table(df)])
    assert "<th>arch</th><th>success / mean</th><th>success / std</th>" in page
    assert "<th>Top-K MoE</th>" in page


@pytest.mark.parametrize("value, text", [
    (0.5412, "0.541"), (12.345, "12.3"), (1.0, "1.00"), (0.0, "0"), (123456.7, "123,457"), (3, "3"),
    (np.int64(1234567), "1,234,567"), (0.00012, "1.20e-04"), (float("nan"), "–"), (None, "–"), (-2.5, "-2.50"),
    (float("inf"), "∞"), ("a", "a"), (np.float32(0.25), "0.250"),
])
def test_format_number(value, text):
    assert format_number(value) == text


def test_figures_from_bytes_and_paths(tmp_path):
    png = _png_bytes()
    path = tmp_path / "f.png"
    path.write_bytes(png)
    import base64

    encoded = base64.b64encode(png).decode()
    for image in (png, path, str(path)):
        page = render_report(title="t", sections=[Figure(image, caption="c <x>")])
        assert f'src="data:image/png;base64,{encoded}"' in page and "<figcaption>c &lt;x&gt;</figcaption>" in page
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5))
    page = render_report(title="t", sections=[Figure(fig)])
    plt.close(fig)
    assert page.count('src="data:image/png;base64,iVBORw0KGgo') == 1  # a matplotlib figure, saved as PNG
    with pytest.raises(ValueError, match="not a PNG"):
        render_report(title="t", sections=[Figure(b"GIF89a...")])
    with pytest.raises(FileNotFoundError):
        render_report(title="t", sections=[Figure(tmp_path / "missing.png")])


def test_write_report_is_atomic_and_small(tmp_path):
    # ~100 runs: a 100-row table, a few figures and one geometry view stay far below 15 MB
    df = pd.DataFrame({"run": [f"run-{k}" for k in range(100)], **{f"task{j}": np.random.default_rng(j).random(100)
                                                                   for j in range(10)}})
    png = _png_bytes()
    sections = [Heading("Runs"), Table(df), *(Figure(png) for _ in range(20)), Geometry(synthetic_runs())]
    path = write_report(tmp_path / "out" / "report.html", title="t", sections=sections)
    assert path.exists() and [p.name for p in path.parent.iterdir()] == ["report.html"]
    assert path.stat().st_size < 15 * 2**20
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_unknown_item_is_rejected():
    with pytest.raises(TypeError, match="unknown report item"):
        render_report(title="t", sections=["just a string"])
