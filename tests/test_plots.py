"""Overview pictures: real PNGs, contours where the mask is, the patient's orientation."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_ellipsoid

from iunet_nb.errors import InputError
from iunet_nb.io.images import read_image, read_mask, write_image
from iunet_nb.io.volume import Geometry, Volume
from iunet_nb.plots import display_slice, plot_loss, plot_overview


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


# ------------------------------------------------------------------ patient orientation
def _asymmetric_ct() -> tuple[Volume, Volume]:
    """An LPS-stored CT (identity direction) whose organ and markers have no mirror symmetry."""
    g = Geometry(spacing_mm=(2.5, 0.8, 0.7), origin_mm=(-40.0, 12.0, 300.0))
    mask = make_ellipsoid((21, 27, 31), center=(10.0, 13.0, 15.0), radii=(5.0, 7.0, 9.0))
    mask[9:12, 10:13, 22:25] = 1                        # a knob towards the patient's left
    rng = np.random.default_rng(5)
    ct = np.where(mask > 0, 110.0, -60.0) + rng.normal(0, 15, mask.shape)
    ct += np.linspace(-40, 40, mask.shape[1])[None, :, None]   # brighter towards posterior
    ct[:4, :, :] -= 100.0                                        # darker at the feet
    return Volume(ct.astype(np.float32), g), Volume(mask, g)


def _rendered(fig) -> np.ndarray:
    """RGBA pixels of a figure with the slice-number titles blanked (indices differ by storage)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    for ax in fig.axes:
        ax.set_title("")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def test_display_slice_puts_anterior_up_and_the_patients_left_on_the_right():
    # identity direction (LPS): y runs anterior -> posterior, x right -> left, z feet -> head
    arr = np.zeros((3, 4, 5), np.uint8)
    arr[2, 0, 4] = 1                           # head end, most anterior, patient's far left
    ras = Geometry(direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    assert display_slice(arr, None, "axial", 2)[0, -1] == 1                 # top right
    assert display_slice(arr, None, "coronal", 0)[0, -1] == 1               # head at the top
    assert display_slice(arr, None, "sagittal", 4)[0, 0] == 1               # anterior on the left
    stored_ras = arr[:, ::-1, ::-1]            # the same voxels stored RAS
    assert display_slice(stored_ras, ras, "axial", 2)[0, -1] == 1
    assert display_slice(stored_ras, ras, "sagittal", 0)[0, 0] == 1


def test_display_slice_refuses_bad_views_and_indices():
    arr = np.zeros((3, 4, 5))
    with pytest.raises(InputError, match="unknown view"):
        display_slice(arr, None, "oblique", 0)
    with pytest.raises(InputError, match="outside the image"):
        display_slice(arr, None, "sagittal", 5)
    with pytest.raises(InputError, match="3D"):
        display_slice(arr[0], None, "axial", 0)


@pytest.mark.parametrize("storage, direction", [
    ("RAS", (-1, 0, 0, 0, -1, 0, 0, 0, 1)),   # most NIfTI converters (dcm2niix)
    ("NIH", (1, 0, 0, 0, -1, 0, 0, 0, -1)),   # NIH PANCREAS_0002: rows anterior, slices feet first
])
def test_overview_is_the_same_picture_for_an_lps_and_an_otherwise_stored_copy(
        tmp_path, storage, direction):
    ct, mask = _asymmetric_ct()
    flips = [d < 0 for d in (direction[0], direction[4], direction[8])]   # x, y, z
    for name, v in (("ct", ct), ("mask", mask)):
        write_image(v, tmp_path / f"{name}_lps.nii.gz")
        sitk.WriteImage(sitk.Flip(v.to_sitk(), flips), str(tmp_path / f"{name}_{storage}.nii.gz"))
    lps_ct = read_image(tmp_path / "ct_lps.nii.gz")
    lps_mask = read_mask(tmp_path / "mask_lps.nii.gz")
    ct2 = read_image(tmp_path / f"ct_{storage}.nii.gz")
    mask2 = read_mask(tmp_path / f"mask_{storage}.nii.gz")
    np.testing.assert_allclose(ct2.geometry.direction, direction, atol=1e-6)  # stored otherwise
    assert not np.array_equal(ct2.array, lps_ct.array)

    a = plot_overview(lps_ct, reference=lps_mask)
    b = plot_overview(ct2, reference=mask2)
    for ax_a, ax_b in zip(a.axes, b.axes):
        np.testing.assert_array_equal(ax_a.images[0].get_array(), ax_b.images[0].get_array())
    np.testing.assert_array_equal(_rendered(a), _rendered(b))
