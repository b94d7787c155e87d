"""What the report's figures draw, read from the matplotlib figure before it becomes a PNG."""
from __future__ import annotations

from matplotlib.colors import to_rgba

from medft.evaluate import plots

CLASSES = [(1, "anterior"), (2, "posterior")]


def _figure(monkeypatch, draw):
    figures = []
    monkeypatch.setattr(plots, "to_data_uri", lambda fig: figures.append(fig) or "data:image/png;base64,")
    draw()
    return figures[0]


def _hollow_points(ax) -> list[tuple[float, float]]:
    white = to_rgba("white")
    return sorted((float(x), float(y)) for line in ax.get_lines() if to_rgba(line.get_markerfacecolor()) == white
                  for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True))


def _stats(mean: float, ci: list | None, n: int) -> dict:
    return {"dice": {"mean": mean, "ci95": ci or [None, None], "n": n}}


def test_a_site_mean_without_an_interval_is_drawn_hollow_not_as_a_precise_point(monkeypatch):
    per_site = {
        "north": {"anterior": _stats(0.8, [0.75, 0.85], 3), "posterior": _stats(0.7, [0.6, 0.8], 3),
                  "mean_foreground": _stats(0.75, [0.7, 0.8], 3)},
        "south": {"anterior": _stats(0.5, None, 1), "posterior": _stats(0.6, None, 1),
                  "mean_foreground": _stats(0.55, None, 1)},
    }
    fig = _figure(monkeypatch, lambda: plots.site_dice(per_site, CLASSES, "mean of classes"))
    ax = fig.axes[0]
    assert [y for _, y in _hollow_points(ax)] == [0.5, 0.6, 0.55]  # south's three means, north's none
    assert plots.NO_CI_LABEL in [t.get_text() for t in ax.get_legend().get_texts()]

    del per_site["south"]
    ax = _figure(monkeypatch, lambda: plots.site_dice(per_site, CLASSES, "mean of classes")).axes[0]
    assert _hollow_points(ax) == []
    assert plots.NO_CI_LABEL not in [t.get_text() for t in ax.get_legend().get_texts()]


def test_a_compared_mean_without_an_interval_is_drawn_hollow(monkeypatch):
    a = [{"mean": 0.8, "ci95": [0.7, 0.9], "n": 5}, {"mean": 0.7, "ci95": [0.6, 0.8], "n": 5}]
    b = [{"mean": 0.6, "ci95": [None, None], "n": 1}, {"mean": 0.65, "ci95": [None, None], "n": 1}]
    fig = _figure(monkeypatch, lambda: plots.compare_means(["anterior", "posterior"], a, b, [{}, {}], ("A", "B")))
    left = fig.axes[0]
    assert [y for _, y in _hollow_points(left)] == [0.6, 0.65]
    assert plots.NO_CI_LABEL in [t.get_text() for t in left.get_legend().get_texts()]
