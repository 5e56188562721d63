"""The demo's figure: integer layer ticks, the verdict's stable band, causes and cures
told apart in a colour-blind-safe palette, readable text, a second panel for a curve that
would flatten the rest, and a vector copy beside the PNG, all written atomically.

Built from synthetic results (straight lines with known slopes), so each test is fast and
knows exactly what the figure must show.
"""

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from jgrad.experiments import DEMO_NETS, plot_demo, write_demo  # noqa: E402
from jgrad.experiments._demo import (  # noqa: E402
    CAUSE_COLORS,
    CURE_COLORS,
    STABLE_BAND,
    split_panels,
)

# Okabe & Ito (2008), "Color Universal Design": the eight colours, as published.
OKABE_ITO = {
    "#000000", "#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#cc79a7",
}  # fmt: skip

# log10 ratio first/last per network at any depth: sigmoid -42 decades, as the real demo.
SLOPES = {
    "sigmoid+standard": -42.0,
    "tanh+glorot": -0.7,
    "relu+glorot": -7.5,
    "relu+he": 0.6,
    "tanh+orthogonal": -0.8,
    "tanh+gauss(wv=4)": 3.2,
}


def _result(depth, slopes=SLOPES, last=0.3, underflow=(1, 2)):
    """A result shaped like run_demo's: log10 norms on a straight line from
    ``last + slope`` at layer 1 to ``last`` at layer ``depth``."""
    nets = []
    for spec in DEMO_NETS:
        s = slopes[spec.label]
        g = last + s * (depth - np.arange(1, depth + 1)) / max(depth - 1, 1)
        nets.append(
            {
                "label": spec.label,
                "activation": spec.activation,
                "init": spec.init,
                "weight_var": spec.weight_var,
                "expect": spec.expect,
                "log10_norm": g,
                "log10_ratio": s,
                "verdict": spec.expect,
                "underflow_layers": list(underflow) if s < -30 else [],
                "nonfinite_layers": [],
                "loss": 1.0,
                "seconds": 0.0,
            }
        )
    return {
        "config": {"depth": depth, "width": 8, "batch": 2, "seed": 5},
        "stable_band": STABLE_BAND,
        "provenance": {},
        "nets": nets,
    }


@pytest.fixture
def figure():
    figs = []

    def make(result):
        fig = plot_demo(result)
        fig.canvas.draw()  # ticks and layout exist only after a draw
        figs.append(fig)
        return fig

    yield make
    for fig in figs:
        plt.close(fig)


def _data_lines(ax):
    return [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]


def test_layer_ticks_are_integers(figure):
    """matplotlib's default locator puts ticks at 0.5 steps for a few layers."""
    for depth, ax in [(d, ax) for d in (3, 7, 50) for ax in figure(_result(d)).axes]:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert len(ticks) >= 2
        assert all(float(t).is_integer() for t in ticks), (depth, ticks)
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert labels and all(lab.lstrip("\u2212-").isdigit() for lab in labels), labels


def test_stable_band_is_drawn_in_every_panel(figure):
    fig = figure(_result(50))
    lo, hi = np.log10(STABLE_BAND)
    for ax in fig.axes:
        bands = [
            p
            for p in ax.patches
            if isinstance(p, Rectangle)
            and p.get_data_transform()
            == ax.get_yaxis_transform()  # full width, y: data
            and (p.get_x(), p.get_width()) == (0, 1)
            and np.allclose([p.get_y(), p.get_y() + p.get_height()], [lo, hi])
        ]
        assert len(bands) == 1 and bands[0].get_label() == "stable band"
        assert any(t.get_text().strip() == "stable band" for t in ax.texts)
    legend_texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "stable band: first/last in [0.05, 20]" in legend_texts


def test_curves_are_relative_to_the_last_layer(figure):
    """Layer 1 reads off the verdict's ratio (log10 first/last); every curve ends at 0."""
    result = _result(20)
    fig = figure(result)
    lines = {ln.get_label(): ln for ax in fig.axes for ln in _data_lines(ax)}
    for n in result["nets"]:
        y = np.asarray(lines[n["label"]].get_ydata())
        np.testing.assert_allclose(y, n["log10_norm"] - n["log10_norm"][-1], atol=1e-12)
        assert y[0] == pytest.approx(n["log10_ratio"]) and y[-1] == 0.0


def test_causes_dashed_cures_solid_colour_blind_safe(figure):
    fig = figure(_result(50))
    lines = {ln.get_label(): ln for ax in fig.axes for ln in _data_lines(ax)}
    assert set(lines) == {spec.label for spec in DEMO_NETS}
    colors = set()
    for spec in DEMO_NETS:
        line = lines[spec.label]
        assert line.get_linestyle() == ("-" if spec.expect == "stable" else "--")
        color = to_hex(line.get_color())
        assert color in OKABE_ITO and color != "#f0e442"  # yellow is too faint on white
        assert color in (CURE_COLORS if spec.expect == "stable" else CAUSE_COLORS)
        colors.add(color)
    assert len(colors) == len(DEMO_NETS)
    # Markers differ too, for a greyscale print.
    assert len({lines[s.label].get_marker() for s in DEMO_NETS}) == len(DEMO_NETS)


def test_text_is_at_least_10_points(figure):
    fig = figure(_result(50))
    texts = [t for t in fig.findobj(Text) if t.get_text() and t.get_visible()]
    assert len(texts) > 20
    small = [(t.get_text(), t.get_fontsize()) for t in texts if t.get_fontsize() < 10]
    assert not small


def test_a_curve_that_flattens_the_rest_gets_its_own_panel(figure):
    fig = figure(_result(50))
    assert len(fig.axes) == 2
    main, wide = fig.axes
    assert [ln.get_label() for ln in _data_lines(wide)] == ["sigmoid+standard"]
    assert "sigmoid+standard" not in [ln.get_label() for ln in _data_lines(main)]
    # The main panel spans the other curves (-7.5 .. 3.2 decades), not the sigmoid's 42.
    y0, y1 = main.get_ylim()
    assert -9 < y0 < -7.5 and 3.2 < y1 < 4.5
    assert wide.get_ylim()[0] < -42
    # The float32-underflow marks sit on the sigmoid curve, in its panel.
    marks = [ln for ln in wide.get_lines() if ln.get_marker() == "x"]
    assert len(marks) == 1 and list(marks[0].get_xdata()) == [1, 2]
    # Without such a curve, one panel holds all six.
    fig = figure(_result(50, dict(SLOPES, **{"sigmoid+standard": -6.0})))
    assert len(fig.axes) == 1
    assert len(_data_lines(fig.axes[0])) == len(DEMO_NETS)


def test_split_rule():
    """A curve moves out when its extent exceeds SPLIT_FACTOR (3) times every other's and
    the stable band's half-width (log10 20 = 1.30)."""
    band = (0.05, 20.0)

    def curves(*ext):
        return [np.array([-e, 0.0]) for e in ext]

    assert split_panels(curves(42, 7.5, 3.2, 0.8), band) == [0]
    assert split_panels(curves(7.5, 42, 3.2), band) == [1]
    assert split_panels(curves(22, 7.5, 3.2), band) == []  # 22 < 3 * 7.5
    assert split_panels(curves(40, 35, 3.2), band) == [0, 1]
    assert split_panels(curves(3.8, 0.5, 0.1), band) == []  # 3.8 < 3 * 1.30
    assert split_panels(curves(4.0, 0.5, 0.1), band) == [0]
    assert split_panels([np.array([np.nan, np.nan]), *curves(1, 0.5)], band) == []


def test_write_demo_writes_json_png_and_pdf_atomically(tmp_path, monkeypatch):
    from jgrad.experiments import _demo

    result = _result(12)
    written = []
    real = _demo.save_figure

    def spy(fig, path, **kw):
        written.append(path)
        return real(fig, path, **kw)

    monkeypatch.setattr(_demo, "save_figure", spy)
    paths = write_demo(result, tmp_path / "out")
    assert set(paths) == {"json", "png", "pdf"}
    assert sorted(p.name for p in written) == ["demo.pdf", "demo.png"]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pdf = paths["pdf"].read_bytes()
    assert pdf[:5] == b"%PDF-" and b"/Subtype /Image" not in pdf  # vector, no raster
    assert b"/CreationDate" not in pdf  # same figure, same bytes
    assert json.loads(paths["json"].read_text())["config"]["depth"] == 12
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "demo.json",
        "demo.pdf",
        "demo.png",
    ]
    # A failure while drawing the PDF leaves the earlier PDF in place, no temp files.
    before = paths["pdf"].read_bytes()

    def crash(fig, path, **kw):
        if str(path).endswith(".pdf"):
            raise KeyboardInterrupt
        return real(fig, path, **kw)

    monkeypatch.setattr(
        _demo, "save_figure", lambda fig, path, **kw: crash(fig, path, **kw)
    )
    with pytest.raises(KeyboardInterrupt):
        write_demo(result, tmp_path / "out")
    assert paths["pdf"].read_bytes() == before
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
