"""tools.plot: legends beside the data, never over it (tests/test_tools.py runs the command on a real run)."""
from __future__ import annotations

import pytest

from tools import plot


def _legends_clear_of_every_axes(figure) -> None:
    """Each legend lies outside every panel's data area (the axes' rectangle) and inside the figure."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    legends = [ax.get_legend() for ax in figure.axes if ax.get_legend() is not None]
    assert legends
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in figure.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), (legend.get_texts()[0].get_text(), ax.get_title())
        assert figure.bbox.contains(box.x0, box.y0) and figure.bbox.contains(box.x1, box.y1)


def test_curve_legends_stay_off_the_data():
    plt = plot.pyplot()  # skips below where matplotlib is absent
    records = [{"epoch": e, "train_loss": 5 / e, "train_ce": 3 / e, "train_rot": 2 / e, "train_acc": 9.0 * e,
                "val_acc": 8.0 * e, "lr": 0.05, "images_per_s": 100.0 + e} for e in range(1, 11)]
    # Two runs with long names: the widest legends a comparison draws.
    logs = [(f"resnet12_ssl_narrow_folder_lr_0.05_trial_{t}", records) for t in (1, 2)]
    figure = plot.curves_figure(plt, logs)
    try:
        _legends_clear_of_every_axes(figure)
    finally:
        plt.close(figure)


def test_table_legend_stays_off_the_bars():
    plt = plot.pyplot()
    # Bars near the top of the axes in every corner: where an inside legend would sit on them.
    cells = [{"label": f"skd_gen{g} CIFAR-FS {s}-shot", "mean": 95.0, "ci95": 0.5, "paper": 96.0}
             for g in (0, 1) for s in (1, 5)]
    figure = plot.table_figure(plt, cells, "results_table.csv")
    try:
        _legends_clear_of_every_axes(figure)
    finally:
        plt.close(figure)


@pytest.fixture(autouse=True)
def _needs_matplotlib():
    pytest.importorskip("matplotlib")
