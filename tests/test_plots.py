"""Overview pictures: files are real PNGs and the contours land where the mask is."""

from __future__ import annotations

import numpy as np

from iunet_nb.plots import plot_loss, plot_overview


def test_overview_png_draws_both_contours(tmp_path, ellipsoid_case):
    ct, ref = ellipsoid_case
    shifted = ref.with_array(np.roll(ref.array, 3, axis=2))
    fig = plot_overview(ct, shifted, ref, tmp_path / "o.png", title="t")
    assert (tmp_path / "o.png").read_bytes()[:4] == b"\x89PNG"
    axes = fig.axes
    assert [a.get_title().split()[0] for a in axes] == ["axial", "coronal", "sagittal"]
    # one red and one green contour set per view
    for ax in axes:
        colours = {tuple(np.round(c.get_edgecolor()[0][:3], 2)) for c in ax.collections}
        assert (1.0, 0.0, 0.0) in colours and (0.0, 1.0, 0.0) in colours
    # aspect follows spacing: coronal pixels are 2.5 mm tall and 0.7 mm wide
    assert axes[1].get_aspect() == np.float64(2.5 / 0.7)


def test_overview_without_mask_goes_through_the_centre(ellipsoid_case):
    ct, _ = ellipsoid_case
    fig = plot_overview(ct)
    assert fig.axes[0].get_title() == "axial (slice 12)"


def test_loss_plot(tmp_path):
    fig = plot_loss(np.linspace(0, -1, 50), tmp_path / "loss.png", smooth=10)
    assert len(fig.axes[0].lines) == 2 and (tmp_path / "loss.png").stat().st_size > 1000
