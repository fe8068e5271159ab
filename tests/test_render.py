"""Tests of the pure slice rendering: window/level, flips, contour, compositing, PNG, mapping."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from iunet_nb.errors import InputError
from iunet_nb.io.volume import Geometry
from iunet_nb.widgets.render import (
    BG_COLOR,
    FG_COLOR,
    MASK_COLOR,
    WINDOW_PRESETS,
    SliceTransform,
    compose_slice,
    display_flips,
    encode_png,
    mask_contour,
    window_lut,
    window_to_uint8,
)


# ----------------------------------------------------------------------------- window
def test_window_lut_golden_values():
    # W400/L40 = [-160, 240]; grey = floor(clip((v + 160) * 255 / 400, 0, 255) + 0.5)
    lut = window_lut(400, 40, lo=-200, hi=300)
    at = {v: int(lut[v + 200]) for v in (-200, -161, -160, 0, 40, 100, 240, 241, 300)}
    assert at == {-200: 0, -161: 0, -160: 0, 0: 102, 40: 128, 100: 166, 240: 255, 241: 255,
                  300: 255}


def test_presets_include_abdomen_and_paper_window_once():
    width, level = WINDOW_PRESETS["abdomen"]
    assert (level - width / 2, level + width / 2) == (-160.0, 240.0)   # the paper's input
    windows = list(WINDOW_PRESETS.values())
    assert len(set(windows)) == len(windows), "two presets show the same window"


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.float32, np.float64])
def test_window_to_uint8_matches_the_formula_for_every_dtype(dtype):
    rng = np.random.default_rng(1)
    img = rng.integers(-1024, 2000, size=(37, 23)).astype(dtype)
    expected = np.floor(np.clip((img.astype(np.float64) - (60 - 125)) * 255 / 250, 0, 255)
                        + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(window_to_uint8(img, 250, 60), expected)


def test_window_to_uint8_positive_integer_range_and_nan():
    img = np.array([[10, 20], [30, 40]], dtype=np.uint8)     # lo > 0: LUT offset path
    np.testing.assert_array_equal(window_to_uint8(img, 20, 25), [[0, 64], [191, 255]])
    f = np.array([[np.nan, 40.0]], dtype=np.float32)
    np.testing.assert_array_equal(window_to_uint8(f, 400, 40), [[0, 128]])


@pytest.mark.parametrize("width, level", [(0, 40), (-5, 40), (float("nan"), 40),
                                          (400, float("inf"))])
def test_bad_window_raises(width, level):
    with pytest.raises(InputError, match="window width"):
        window_to_uint8(np.zeros((2, 2), np.int16), width, level)


def test_window_needs_a_2d_real_slice():
    with pytest.raises(InputError, match="2D real slice"):
        window_to_uint8(np.zeros((2, 2, 2)), 400, 40)


# ----------------------------------------------------------------------------- flips
def test_display_flips_identity_direction():
    g = Geometry(spacing_mm=(2.5, 0.8, 0.7))
    assert display_flips(g, "axial") == (False, False)
    assert display_flips(g, "coronal") == (True, False)     # z runs superior: show it upwards
    assert display_flips(g, "sagittal") == (True, False)
    assert display_flips(None, "coronal") == (True, False)


def test_display_flips_follow_the_direction_matrix():
    g = Geometry(spacing_mm=(1, 1, 1), direction=(1, 0, 0, 0, -1, 0, 0, 0, 1))  # y runs anterior
    assert display_flips(g, "axial") == (True, False)
    assert display_flips(g, "sagittal") == (True, True)
    g = Geometry(spacing_mm=(1, 1, 1), direction=(-1, 0, 0, 0, 1, 0, 0, 0, -1))  # x right, z inf.
    assert display_flips(g, "axial") == (False, True)
    assert display_flips(g, "coronal") == (False, True)


def test_display_flips_unknown_view():
    with pytest.raises(InputError, match="unknown view"):
        display_flips(None, "oblique")


# ----------------------------------------------------------------------------- contour
def test_mask_contour_of_a_square_and_at_the_edge():
    m = np.zeros((7, 7), np.uint8)
    m[1:6, 1:6] = 1
    c = mask_contour(m)
    assert c.sum() == 16 and not c[2:5, 2:5].any() and c[1, 1] and c[5, 3]
    full = np.ones((3, 4), bool)                      # touching the border: the border is edge
    assert mask_contour(full).sum() == 3 * 4 - 2


# ----------------------------------------------------------------------------- compose
def test_compose_slice_pixels():
    img = np.array([[-160, 40, 240], [0, 40, 40], [40, 40, 40]], dtype=np.int16)
    mask = np.array([[0, 1, 0], [0, 1, 0], [0, 0, 0]], np.uint8)
    scr = np.array([[0, 0, 0], [0, 0, 1], [2, 0, 0]], np.uint8)
    out = compose_slice(img, 400, 40, mask=mask, scribbles=scr, opacity=0.5,
                        scribble_opacity=1.0)
    assert out.shape == (3, 3, 4) and out.dtype == np.uint8 and (out[..., 3] == 255).all()
    assert out[0, 0, :3].tolist() == [0, 0, 0] and out[0, 2, :3].tolist() == [255] * 3
    g = 128   # grey of 40 HU; blended half-way to the mask colour, rounded half up
    assert out[0, 1, :3].tolist() == [int(np.floor(g + (c - g) * 0.5 + 0.5)) for c in MASK_COLOR]
    assert out[1, 2, :3].tolist() == list(FG_COLOR)
    assert out[2, 0, :3].tolist() == list(BG_COLOR)
    assert out[2, 2, :3].tolist() == [g] * 3


def test_compose_contour_only_keeps_the_inside_visible():
    img = np.full((7, 7), 40, np.int16)
    mask = np.zeros((7, 7), np.uint8)
    mask[1:6, 1:6] = 1
    out = compose_slice(img, 400, 40, mask=mask, contour_only=True, opacity=0.3)
    assert out[3, 3, :3].tolist() == [128] * 3           # inside: untouched CT
    assert out[1, 3, :3].tolist() == list(MASK_COLOR)    # contour: opaque colour


def test_compose_flips_are_display_flips():
    rng = np.random.default_rng(0)
    img = rng.integers(-200, 300, (5, 8)).astype(np.int16)
    mask = rng.integers(0, 2, (5, 8)).astype(np.uint8)
    plain = compose_slice(img, 400, 40, mask=mask)
    both = compose_slice(img, 400, 40, mask=mask, flip_rows=True, flip_cols=True)
    np.testing.assert_array_equal(both, plain[::-1, ::-1])
    assert both.flags.c_contiguous


def test_compose_rejects_layers_of_another_shape_and_bad_opacity():
    with pytest.raises(InputError, match="mask slice has shape"):
        compose_slice(np.zeros((4, 4)), 400, 40, mask=np.zeros((4, 5)))
    with pytest.raises(InputError, match="opacity must be"):
        compose_slice(np.zeros((4, 4)), 400, 40, opacity=1.5)


# ----------------------------------------------------------------------------- png
@pytest.mark.parametrize("channels", [3, 4])
def test_encode_png_is_lossless(channels):
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (13, 17, channels)).astype(np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(a))))
    np.testing.assert_array_equal(decoded, a)


def test_encode_png_rejects_non_images():
    with pytest.raises(InputError, match="uint8"):
        encode_png(np.zeros((4, 4, 4), np.float32))
    with pytest.raises(InputError, match="uint8"):
        encode_png(np.zeros((4, 4), np.uint8))


# ----------------------------------------------------------------------------- transform
def test_slice_transform_golden_mapping():
    # 10 rows x 20 cols, rows 2 mm, cols 1 mm: 20 x 20 mm on a 200 x 200 canvas -> 10 px/mm
    tr = SliceTransform(10, 20, 2.0, 1.0, 200, 200)
    assert tr.px_per_mm == pytest.approx(10.0)
    assert tr.scale == pytest.approx((10.0, 20.0))
    assert tr.index_to_canvas(0, 0) == pytest.approx((5.0, 10.0))
    assert tr.index_to_canvas(9, 19) == pytest.approx((195.0, 190.0))
    assert tr.canvas_to_index(100, 100) == pytest.approx((4.5, 9.5))   # the middle
    flipped = SliceTransform(10, 20, 2.0, 1.0, 200, 200, flip_rows=True)
    assert flipped.index_to_canvas(0, 0) == pytest.approx((5.0, 190.0))
    assert flipped.canvas_to_index(5.0, 190.0) == pytest.approx((0.0, 0.0))


def test_slice_transform_letterbox_zoom_pan():
    # 10 x 10 voxels of 1 mm on a 300 x 100 canvas: height limits -> 10 px/mm, centred in x
    tr = SliceTransform(10, 10, 1.0, 1.0, 300, 100)
    assert tr.origin == pytest.approx((100.0, 0.0))
    z = tr.zoomed(2.0)
    assert z.canvas_to_index(150, 50) == pytest.approx(tr.canvas_to_index(150, 50))
    assert z.px_per_mm == pytest.approx(20.0)
    p = tr.panned(30, -20)       # dragging right/up moves the image with the pointer
    x, y = tr.index_to_canvas(3, 4)
    assert p.index_to_canvas(3, 4) == pytest.approx((x + 30, y - 20))
    assert tr.canvas_matrix() == pytest.approx((10.0, 0.0, 0.0, 10.0, 100.0, 0.0))


@pytest.mark.parametrize("flip_rows, flip_cols", [(False, False), (True, False), (True, True)])
def test_slice_transform_round_trip(flip_rows, flip_cols):
    tr = SliceTransform(24, 32, 2.5, 0.7, 112, 300, flip_rows, flip_cols, zoom=1.7,
                        center=(10.3, 7.9))
    rng = np.random.default_rng(3)
    for row, col in rng.uniform(-0.5, [23.5, 31.5], size=(20, 2)):
        assert tr.canvas_to_index(*tr.index_to_canvas(row, col)) == pytest.approx((row, col))
    assert tr.inside(-0.5, 31.5) and not tr.inside(-0.6, 3) and not tr.inside(3, 31.6)


def test_slice_transform_rejects_bad_values():
    with pytest.raises(InputError, match="spacing_row_mm"):
        SliceTransform(4, 4, 0.0, 1.0, 10, 10)
    with pytest.raises(InputError, match="zoom"):
        SliceTransform(4, 4, 1.0, 1.0, 10, 10, zoom=0.0)
    with pytest.raises(InputError, match="n_rows"):
        SliceTransform(0, 4, 1.0, 1.0, 10, 10)



def test_orientation_letters_follow_the_direction_matrix():
    from iunet_nb.io.volume import Geometry
    from iunet_nb.widgets.render import orientation_letters

    lps = Geometry()
    ras = Geometry(direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))   # the same patient, stored RAS
    for g in (None, lps, ras):       # display_flips puts every storage in one picture
        assert orientation_letters(g, "axial") == {"left": "R", "right": "L", "top": "A",
                                                   "bottom": "P"}
        assert orientation_letters(g, "coronal") == {"left": "R", "right": "L", "top": "S",
                                                     "bottom": "I"}
        assert orientation_letters(g, "sagittal") == {"left": "A", "right": "P", "top": "S",
                                                      "bottom": "I"}
    # without flips an LPS axial slice runs +x (L) to the right: the letters say so
    assert orientation_letters(lps, "axial", (False, True))["right"] == "R"
    with pytest.raises(InputError, match="unknown view"):
        orientation_letters(lps, "oblique")


def test_compose_slice_colours_what_a_refinement_changed():
    from iunet_nb.widgets.render import ADDED_COLOR, REMOVED_COLOR

    img = np.full((4, 5), 40, np.int16)                       # grey 128 under W400/L40
    ch = np.zeros((4, 5), np.uint8)
    ch[1, 2], ch[3, 0] = 1, 2
    out = compose_slice(img, 400, 40, changes=ch, scribble_opacity=0.5)
    expect = lambda c: [int(np.floor(128 + (v - 128) * 0.5 + 0.5)) for v in c]  # noqa: E731
    assert out[1, 2, :3].tolist() == expect(ADDED_COLOR)
    assert out[3, 0, :3].tolist() == expect(REMOVED_COLOR)
    assert out[0, 0, :3].tolist() == [128, 128, 128]
    with pytest.raises(InputError, match="changes"):
        compose_slice(img, 400, 40, changes=np.zeros((2, 2), np.uint8))
