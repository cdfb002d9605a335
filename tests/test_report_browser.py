"""The HTML report in a real headless Chromium (Debian's `chromium`, driven by Playwright).

WebGL in headless Chromium without a GPU comes from SwiftShader (software Vulkan under ANGLE); the flags in
WEBGL_ARGS turn it on. Checks: no console errors, the 3D view draws, the slider and Play change what it
draws, the page requests nothing from the network, and without WebGL (or JavaScript) the table fallback
shows. Skipped when playwright or chromium is missing; CI (.ci/run) installs chromium.

SPHERE_SAVE_SCREENSHOT=1 writes the screenshot of the 3D view to docs/img/report-3d.png (else tmp_path).
"""

import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from sphere_rl.report.html import Geometry, Heading, Table, Text, write_report
from test_report_html import STAGES, synthetic_runs  # the same synthetic spectra as the unit tests

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no `chromium` on PATH (Debian: apt-get install chromium)")

WEBGL_ARGS = ["--headless=new", "--no-sandbox", "--enable-unsafe-swiftshader", "--use-angle=swiftshader"]
NO_WEBGL_ARGS = ["--headless=new", "--no-sandbox", "--disable-webgl", "--disable-3d-apis"]
VIEWPORT = {"width": 1280, "height": 1000}
DIV = "sphere-geometry"
REPO = Path(__file__).resolve().parents[1]

HAS_WEBGL = """() => { try { const c = document.createElement('canvas');
  return !!(c.getContext('webgl2') || c.getContext('webgl')); } catch (e) { return false; } }"""
PLOT_READY = f"() => {{ const g = document.getElementById('{DIV}'); return !!(g && g._fullLayout && g._fullLayout.sliders); }}"
# Pixel box (relative to the plot div) of the bottom-left scene: the baseline's ellipsoid.
BASELINE_SCENE_BOX = f"""() => {{
  const fl = document.getElementById('{DIV}')._fullLayout, s = fl._size;
  const keys = Object.keys(fl).filter(k => /^scene\\d*$/.test(k));
  keys.sort((a, b) => (fl[a].domain.y[0] - fl[b].domain.y[0]) || (fl[a].domain.x[0] - fl[b].domain.x[0]));
  const d = fl[keys[0]].domain;
  return [s.l + d.x[0] * s.w, s.t + (1 - d.y[1]) * s.h, s.l + d.x[1] * s.w, s.t + (1 - d.y[0]) * s.h];
}}"""


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def _coloured(rgb: np.ndarray) -> np.ndarray:
    """Pixels of the drawn surfaces and points: saturated colours. Background, scene panes, grid lines and text
    are all near-grey (max - min channel below 40)."""
    return (rgb.max(axis=2) - rgb.min(axis=2)) > 60


# What the view shows now: the frame on screen (plotly's current animation frame), the slider's active step,
# and whether anything is still moving (an animation loop, a redraw, a slider drag or a queued slider command).
VIEW_STATE = f"""() => {{
  const g = document.getElementById('{DIV}'), fl = g._fullLayout, t = g._transitionData || {{}}, s = fl.sliders[0];
  return {{frame: fl._currentFrame || null, active: s.active, animating: !!t._animationRaf,
           queued: (t._frameQueue || []).length, transitioning: !!g._transitioning,
           dragging: !!s._dragging, slider_pending: !!s._nextMethod}};
}}"""
SETTLED = f"""() => {{ const v = ({VIEW_STATE})();
  return !v.animating && !v.queued && !v.transitioning && !v.dragging && !v.slider_pending; }}"""


class Session:
    """One loaded report page shared by the tests (loading the 3D view costs seconds under SwiftShader).

    Every interaction waits for the view to settle (no animation, redraw, drag or queued slider command) before
    and after it, so one test's animation never overlaps the next action."""

    def __init__(self, page, errors, requests, load_s):
        self.page, self.errors, self.requests, self.load_s = page, errors, requests, load_s

    @property
    def plot(self):
        return self.page.locator(f"#{DIV}")

    def state(self) -> dict:
        return self.page.evaluate(VIEW_STATE)

    def _wait(self, condition: str, what: str, timeout_ms: int = 60_000) -> None:
        try:
            self.page.wait_for_function(condition, timeout=timeout_ms)
        except sync_api.TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; view state {self.state()}, errors {self.errors}") from None

    def settle(self) -> None:
        self._wait(SETTLED, "the view to settle")

    def wait_for_stage(self, i: int) -> None:
        self._wait(f"() => {{ const v = ({VIEW_STATE})(); return v.frame === 'stage-{i}' && v.active === {i}; }}",
                   f"stage {i} on screen and on the slider")
        self.settle()

    def shot(self) -> bytes:
        self.page.mouse.move(0, 0)  # away from the plot: no hover labels, the mode bar fades out
        self.page.wait_for_timeout(400)  # let the last WebGL frame reach the compositor
        return self.plot.screenshot()

    def click_button(self, label: str) -> None:
        self.settle()
        self.plot.locator(".updatemenu-button", has_text=label).click()

    def click_slider_step(self, label: str) -> None:
        """Press and release the mouse on the slider rail above the step's tick label; plotly's slider handler picks
        the nearest step. Both events are dispatched in one task: with real input events, a slow redraw that runs
        between press and release can leave plotly's slider stuck in its drag state (seen under heavy CPU load)."""
        self.settle()
        self.plot.locator(".slider-labels .slider-label", has_text=label).scroll_into_view_if_needed()
        self.page.evaluate(
            """([div, label]) => {
              const g = document.getElementById(div);
              const tick = Array.from(g.querySelectorAll('.slider-labels .slider-label')).find(e => e.textContent === label);
              const rail = g.querySelector('.slider-rail-touch-rect');
              const t = tick.getBoundingClientRect(), r = rail.getBoundingClientRect();
              const at = {clientX: t.left + t.width / 2, clientY: r.top + r.height / 2, bubbles: true, view: window};
              rail.dispatchEvent(new MouseEvent('mousedown', {...at, button: 0, buttons: 1}));
              rail.dispatchEvent(new MouseEvent('mouseup', {...at, button: 0, buttons: 0}));
            }""", [DIV, label])

    def reset(self) -> None:
        self.click_button("Reset")
        self.wait_for_stage(0)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    import pandas as pd

    runs = synthetic_runs()
    table = pd.DataFrame({"stage": STAGES, **{r.label: r.effective_rank for r in runs}})
    path = tmp_path_factory.mktemp("report") / "report.html"
    write_report(path, title="Browser test report", sections=[
        Heading("Effective rank"), Text("Synthetic r_e(K): the baseline **collapses**, SPHERE does not."),
        Table(table), Heading("Update geometry"), Geometry(runs, options={"frame_ms": 500}),
    ])
    return path


@pytest.fixture(scope="module")
def playwright():
    with sync_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def session(playwright, report):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=WEBGL_ARGS)
    context = browser.new_context(viewport=VIEWPORT)
    errors, requests = [], []

    def route(r):
        url = r.request.url
        if url.startswith(("file:", "data:", "blob:")):
            r.continue_()
        else:
            requests.append(url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.set_default_timeout(120_000)  # generous: other jobs may share the CPU; the load time is recorded
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.on("request", lambda r: None if r.url.startswith(("file:", "data:", "blob:")) else requests.append(r.url))
    start = time.perf_counter()
    page.goto(report.as_uri(), wait_until="load")
    page.wait_for_function(PLOT_READY)
    load_s = time.perf_counter() - start
    print(f"\nreport {report.stat().st_size / 2**20:.2f} MiB, loaded and drawn in {load_s:.1f} s")
    yield Session(page, errors, requests, load_s)
    context.close()
    browser.close()


def test_page_loads_without_errors_with_webgl(session, record_property):
    record_property("load_seconds", round(session.load_s, 2))  # recorded, not asserted: not a benchmark
    assert session.page.evaluate(HAS_WEBGL), "WebGL is not available: the SwiftShader flags did not work"
    assert session.page.locator(f"#{DIV}-fallback").is_hidden()
    assert session.plot.is_visible()
    assert session.page.locator(".plotly .main-svg").count() > 0
    assert session.page.locator(f"#{DIV} canvas").count() > 0
    assert session.page.title() == "Browser test report"
    assert session.errors == []


def test_3d_view_draws_non_blank_pixels(session):
    rgb = _pixels(session.shot())
    coloured = _coloured(rgb).mean()
    print(f"coloured pixels {coloured:.2%}")
    assert coloured > 0.03, f"only {coloured:.2%} of the 3D view is drawn in colour"
    # Both rows: unit spheres at the top, ellipsoids at the bottom (at stage 0, both still round).
    h = rgb.shape[0]
    assert _coloured(rgb[: h // 2]).mean() > 0.015 and _coloured(rgb[h // 2:]).mean() > 0.015
    assert session.errors == []


def test_slider_changes_the_rendered_ellipsoid(session, tmp_path):
    session.reset()
    x0, y0, x1, y1 = (int(v) for v in session.page.evaluate(BASELINE_SCENE_BOX))
    before = _pixels(session.shot())
    session.click_slider_step("Run")
    session.wait_for_stage(len(STAGES) - 1)
    assert session.plot.locator(".slider-group > .slider-label").first.text_content() == "Stage: Run"
    after_png = session.shot()
    after = _pixels(after_png)
    changed = np.abs(after - before).max(axis=2) > 40
    # the baseline's ellipsoid collapses to a needle: its scene changes, with far fewer coloured pixels
    scene_changed = changed[y0:y1, x0:x1].mean()
    area_before = _coloured(before[y0:y1, x0:x1]).sum()
    area_after = _coloured(after[y0:y1, x0:x1]).sum()
    print(f"changed {changed.mean():.3f}, in the baseline scene {scene_changed:.3f}; coloured {area_before} -> {area_after}")
    assert changed.mean() > 0.01 and scene_changed > 0.05, f"the slider changed {changed.mean():.2%} of the pixels"
    assert area_after < 0.5 * area_before, (area_before, area_after)
    target = REPO / "docs" / "img" / "report-3d.png" if os.environ.get("SPHERE_SAVE_SCREENSHOT") == "1" \
        else tmp_path / "report-3d.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(after_png)
    assert session.errors == []


def test_play_advances_through_the_tasks(session):
    session.reset()
    # every frame Play puts on screen, in order, as plotly announces it
    session.page.evaluate(f"""() => {{ window.__frames = [];
      document.getElementById('{DIV}').on('plotly_animatingframe', e => window.__frames.push(e.name)); }}""")
    session.click_button("Play")
    session.wait_for_stage(len(STAGES) - 1)
    shown = session.page.evaluate("() => window.__frames")
    print(f"Play showed {shown}")
    assert shown == [f"stage-{i}" for i in range(len(STAGES))], shown
    assert session.plot.locator(".slider-group > .slider-label").first.text_content() == f"Stage: {STAGES[-1]}"
    assert session.errors == []


def test_mesh_toggle_hides_surfaces_and_keeps_points(session):
    session.reset()
    with_mesh = _coloured(_pixels(session.shot())).sum()
    session.click_button("Mesh on/off")
    session.page.wait_for_function(f"() => document.getElementById('{DIV}')._fullData"
                                   ".filter(t => t.type === 'surface').every(t => t.visible === false)")
    without = _coloured(_pixels(session.shot())).sum()
    print(f"coloured pixels with mesh {with_mesh}, without {without}")
    assert 0 < without < 0.5 * with_mesh  # the points remain
    session.click_button("Mesh on/off")
    session.page.wait_for_function(f"() => document.getElementById('{DIV}')._fullData"
                                   ".filter(t => t.type === 'surface').every(t => t.visible === true)")
    assert session.errors == []


def test_no_network_requests(session):
    assert session.requests == []


def test_fallback_table_without_webgl_or_javascript(playwright, report):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=NO_WEBGL_ARGS)
    try:
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(120_000)
        page.goto(report.as_uri(), wait_until="load")
        assert not page.evaluate(HAS_WEBGL)
        fallback = page.locator(f"#{DIV}-fallback")
        assert fallback.is_visible() and page.locator(f"#{DIV}-view").is_hidden()
        table = fallback.locator("table")
        assert table.locator("tbody tr").count() == len(STAGES) * 2
        assert "Top-K MoE" in table.inner_text() and "Slide" in table.inner_text()
        # and with JavaScript off, the <noscript> copy
        context = browser.new_context(java_script_enabled=False, viewport=VIEWPORT)
        page = context.new_page()
        page.set_default_timeout(120_000)
        page.goto(report.as_uri(), wait_until="load")
        assert page.locator("noscript table").first.is_visible()
        assert page.locator(f"#{DIV}-fallback").is_hidden()
        context.close()
    finally:
        browser.close()
