"""Slice rendering: orientation on asymmetric volumes, windowing, overlays, best slice, PNG."""
from __future__ import annotations

import io

import nibabel as nib
import numpy as np
import pytest

from medft import slices
from medft.slices import (
    PLANES,
    WINDOW_PRESETS,
    SliceRenderer,
    apply_window,
    best_slice,
    class_colors,
    difference_colors,
    extract_slice,
    orientation_letters,
    percentile_window,
    pixel_spacing,
    render,
    render_difference,
    slice_count,
    to_png,
)
from tests.conftest import sample_case

SHAPE = (10, 12, 14)  # x (towards R), y (towards A), z (towards S): all sizes differ
# Where each patient direction lies in RAS voxel indices: (axis, at the high end?)
DIRECTIONS = {"R": (0, True), "L": (0, False), "A": (1, True), "P": (1, False), "S": (2, True), "I": (2, False)}


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array(slices.hex_to_rgb(hex_colour), dtype=np.int64)


def _half(direction: str, shape=SHAPE) -> np.ndarray:
    """1 in the half of the volume towards ``direction``, 0 elsewhere."""
    axis, high = DIRECTIONS[direction]
    volume = np.zeros(shape, dtype=np.uint8)
    index = [slice(None)] * 3
    index[axis] = slice(shape[axis] // 2, None) if high else slice(0, shape[axis] // 2)
    volume[tuple(index)] = 1
    return volume


# --------------------------------------------------------------------------------------------
# Orientation
# --------------------------------------------------------------------------------------------
def test_a_right_anterior_superior_marker_is_drawn_top_left_in_every_plane():
    volume = np.zeros(SHAPE, dtype=np.float32)
    volume[7:, 9:, 11:] = 1  # the patient's right-anterior-superior corner: high x, y, z
    volume[0, 0, 0] = 2  # and one voxel at the left-posterior-inferior corner
    expected = {  # the screen shape (rows, columns) and a slice through the marker
        "axial": ((12, 10), 12),  # rows along y (A at the top), columns along x (R on the left)
        "coronal": ((14, 10), 10),  # rows along z (S at the top), columns along x
        "sagittal": ((14, 12), 8),  # rows along z, columns along y (A on the left)
    }
    for plane, (shape, through) in expected.items():
        shown = extract_slice(volume, plane, through)
        assert shown.shape == shape, plane
        rows, cols = np.nonzero(shown == 1)
        assert rows.min() == 0 and cols.min() == 0, plane  # touches the top-left corner
        assert rows.max() < shape[0] // 2 and cols.max() < shape[1] // 2, plane  # and stays in that quadrant
        letters = orientation_letters(plane)
        assert letters["top"] in "AS" and letters["left"] in "RA", (plane, letters)
    # Slice 0 of each plane holds the opposite corner, drawn bottom-right.
    for plane in PLANES:
        shown = extract_slice(volume, plane, 0)
        assert shown[-1, -1] == 2, plane
    assert orientation_letters("axial") == {"top": "A", "bottom": "P", "left": "R", "right": "L"}
    assert orientation_letters("coronal") == {"top": "S", "bottom": "I", "left": "R", "right": "L"}
    assert orientation_letters("sagittal") == {"top": "S", "bottom": "I", "left": "A", "right": "P"}


@pytest.mark.parametrize("plane", PLANES)
def test_orientation_letters_name_the_half_drawn_at_each_edge(plane):
    letters = orientation_letters(plane)
    opposite = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
    assert opposite[letters["top"]] == letters["bottom"] and opposite[letters["left"]] == letters["right"]
    assert DIRECTIONS[letters["top"]][0] != slices.PLANE_AXIS[plane] != DIRECTIONS[letters["left"]][0]
    for edge, direction in letters.items():
        shown = extract_slice(_half(direction), plane, 5)
        rows, cols = shown.shape
        region = {"top": shown[: rows // 2], "bottom": shown[rows - rows // 2:],
                  "left": shown[:, : cols // 2], "right": shown[:, cols - cols // 2:]}[edge]
        assert region.all() and shown.sum() == region.size, (plane, edge, direction)


def test_slice_count_and_pixel_spacing_follow_the_plane():
    assert [slice_count(SHAPE, p) for p in PLANES] == [14, 12, 10]
    spacing = (0.7, 0.8, 2.5)
    assert pixel_spacing(spacing, "axial") == (0.8, 0.7)  # (row, column): rows run along y
    assert pixel_spacing(spacing, "coronal") == (2.5, 0.7)
    assert pixel_spacing(spacing, "sagittal") == (2.5, 0.8)
    with pytest.raises(ValueError, match="plane must be one of axial, coronal, sagittal; got 'transverse'"):
        slice_count(SHAPE, "transverse")
    with pytest.raises(IndexError, match="slice index 14 is outside the axial slices 0..13"):
        extract_slice(np.zeros(SHAPE), "axial", 14)


def test_a_sample_case_stored_lps_renders_like_its_ras_original(tmp_path):
    from medft.data.loading import load_image, load_label

    image_path, label_path = sample_case()
    original = nib.load(image_path)
    nx, ny, _ = original.shape
    flip = np.array([[-1, 0, 0, nx - 1], [0, -1, 0, ny - 1], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    for source, name in ((image_path, "lps.nii.gz"), (label_path, "lps_label.nii.gz")):
        stored = nib.load(source)
        data = np.asanyarray(stored.dataobj)[::-1, ::-1, :]
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data), stored.affine @ flip), tmp_path / name)
    assert nib.aff2axcodes(nib.load(tmp_path / "lps.nii.gz").affine) == ("L", "P", "S")

    ras, lps = load_image([image_path]), load_image([tmp_path / "lps.nii.gz"])
    ras_label, lps_label = (load_label(p) for p in (label_path, tmp_path / "lps_label.nii.gz"))
    spacing = slices.voxel_spacing(ras.affine)
    window = percentile_window(np.asarray(ras[0]))
    a = SliceRenderer(ras, ras_label, spacing=spacing, window=window)
    b = SliceRenderer(lps, lps_label, spacing=slices.voxel_spacing(lps.affine), window=window)
    for plane in PLANES:
        index = a.best_slice(plane, by="label")
        assert index == b.best_slice(plane, by="label")
        for mode in ("filled", "contour"):
            np.testing.assert_array_equal(a.render(plane, index, "truth", 0.5, mode),
                                          b.render(plane, index, "truth", 0.5, mode))
        # What is drawn is what the loader holds, flipped for the screen; not what the file stores.
        np.testing.assert_array_equal(extract_slice(np.asarray(lps[0]), plane, index),
                                      extract_slice(np.asarray(ras[0]), plane, index))


def test_a_marker_stored_lps_is_drawn_at_the_patients_right_anterior(tmp_path):
    """End to end from a file: world geometry in the header, not array order, decides the screen side."""
    from medft.data.loading import load_image

    stored = np.zeros(SHAPE, dtype=np.float32)
    stored[0, 0, -1] = 1  # LPS storage: i runs to the left, j to the back: voxel (0, 0, top) is R, A, S
    nib.save(nib.Nifti1Image(stored, np.diag([-1.0, -1.0, 2.0, 1.0])), tmp_path / "marker.nii.gz")
    volume = np.asarray(load_image([tmp_path / "marker.nii.gz"]))[0]
    top = slice_count(volume.shape, "axial") - 1
    assert best_slice(volume, None, "axial", by="label") == top
    for plane in PLANES:
        index = best_slice(volume, None, plane, by="label")
        shown = extract_slice(volume, plane, index)
        assert shown[0, 0] == 1 and shown.sum() == 1, plane  # top-left: A or S at the top, R or A on the left


# --------------------------------------------------------------------------------------------
# Windowing
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(WINDOW_PRESETS))
def test_presets_map_the_level_to_mid_grey_and_clip_outside(name):
    width, level = WINDOW_PRESETS[name]
    values = np.array([level, level - width / 2, level + width / 2, level - 5 * width, level + 5 * width,
                       level - width / 4, np.nan], dtype=np.float32)
    grey = apply_window(values, width, level)
    assert grey.dtype == np.uint8
    assert grey.tolist() == [128, 0, 255, 0, 255, 64, 0]
    ramp = apply_window(np.linspace(level - width, level + width, 101), width, level)
    assert (np.diff(ramp.astype(int)) >= 0).all()


def test_presets_are_width_level_pairs():
    assert WINDOW_PRESETS == {"CT soft tissue": (400, 40), "CT lung": (1500, -600), "CT bone": (2500, 480),
                              "CT brain": (80, 40)}
    with pytest.raises(ValueError, match="width must be a positive number"):
        apply_window(np.zeros(3), 0, 40)


def test_percentile_window_on_a_known_distribution():
    values = np.arange(1001, dtype=np.float32)  # 1st percentile 10, 99th 990
    width, level = percentile_window(values)
    assert (width, level) == pytest.approx((980.0, 500.0))
    shuffled = np.random.default_rng(0).permutation(np.concatenate([values, [np.nan, np.inf]]))
    assert percentile_window(shuffled) == pytest.approx((980.0, 500.0))  # NaN and inf left out
    assert percentile_window(values, low=0, high=100) == pytest.approx((1000.0, 500.0))
    assert percentile_window(np.full((4, 4, 4), 7.0)) == (1.0, 7.0)  # constant: still a valid window


def test_the_renderer_windows_each_slice_to_the_grey_levels_of_the_whole_volume_windowed():
    """Slices are windowed as they are drawn: the same pictures as from the whole volume windowed at once
    (as the renderer did before), whatever the volume's data type and memory order."""
    rng = np.random.default_rng(1)
    values = rng.normal(100, 300, SHAPE)
    volumes = {"float32": values.astype(np.float32), "int16, x fastest": np.asfortranarray(values.astype(np.int16)),
               "float64, a flipped view": values[::-1, :, ::-1]}
    for name, image in volumes.items():
        renderer = SliceRenderer(image, window=(400, 40))
        for window in ((400, 40), WINDOW_PRESETS["CT lung"], (400, 40)):
            renderer.set_window(*window)
            grey = apply_window(image, *window)
            for plane in PLANES:
                for index in (0, 4, slice_count(SHAPE, plane) - 1):
                    drawn = renderer.render(plane, index, "image")
                    np.testing.assert_array_equal(drawn, render(extract_slice(grey, plane, index)), err_msg=name)
                    np.testing.assert_array_equal(drawn, render(extract_slice(image, plane, index), window=window))
        assert renderer.window == (400.0, 40.0)
    default = SliceRenderer(values)
    assert default.window == pytest.approx(percentile_window(values))
    with pytest.raises(ValueError, match="window width must be a positive number"):
        default.set_window(0, 40)


# --------------------------------------------------------------------------------------------
# Overlays
# --------------------------------------------------------------------------------------------
def test_filled_overlay_blends_the_class_colour_at_the_given_opacity():
    grey = np.full((6, 8), 100, dtype=np.uint8)
    labels = np.zeros((6, 8), dtype=np.uint8)
    labels[1:3, 2:5] = 1
    labels[4, 6] = 2
    colours = class_colors(3)
    assert colours[1].tolist() == [0xE6, 0x9F, 0x00] and colours[2].tolist() == [0x56, 0xB4, 0xE9]
    for opacity in (0.0, 0.4, 1.0):
        rgb = render(grey, labels, class_colors=colours, opacity=opacity)
        assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8
        for c in (1, 2):
            expected = np.floor(100 + opacity * (colours[c].astype(float) - 100) + 0.5)
            assert (rgb[labels == c] == expected).all(), (opacity, c)
        assert (rgb[labels == 0] == 100).all()
    rgb = render(grey, labels, opacity=0.4)  # the default colours: the same palette
    assert rgb[1, 2].tolist() == [152, 124, 60]  # 100 + 0.4 * (230 - 100), 100 + 0.4 * 59, 100 - 40
    with pytest.raises(ValueError, match="only 2 colours"):
        render(grey, labels, class_colors=class_colors(2))


def test_windowing_and_overlay_in_one_call():
    image = np.array([[-1000.0, 40.0], [240.0, 5000.0]])
    labels = np.array([[0, 0], [0, 1]])
    rgb = render(image, labels, window=WINDOW_PRESETS["CT soft tissue"], opacity=0.5)
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 1].tolist() == [128, 128, 128]
    assert rgb[1, 0].tolist() == [255, 255, 255]
    assert rgb[1, 1].tolist() == [243, 207, 128]  # (255 + 230) / 2, (255 + 159) / 2, 255 / 2, half up


def test_contour_draws_only_the_outline_of_each_class():
    grey = np.full((10, 12), 50, dtype=np.uint8)
    labels = np.zeros((10, 12), dtype=np.uint8)
    labels[2:7, 3:8] = 1  # a 5 x 5 square
    labels[0:3, 9:12] = 2  # a 3 x 3 square in the top-right corner of the slice
    colours = class_colors(3)
    rgb = render(grey, labels, class_colors=colours, mode="contour", opacity=0.3)
    ring = np.zeros_like(labels, dtype=bool)
    ring[2:7, 3:8] = True
    ring[3:6, 4:7] = False  # 16 pixels
    coloured = (rgb != 50).any(axis=2)
    square2 = labels == 2
    centre2 = np.zeros_like(square2)
    centre2[1, 10] = True  # the only pixel of class 2 not on its outline (the slice edge counts as outline)
    np.testing.assert_array_equal(coloured, ring | (square2 & ~centre2))
    assert (rgb[ring] == colours[1]).all()  # outlines are opaque
    assert (rgb[square2 & ~centre2] == colours[2]).all()
    assert (rgb[3:6, 4:7] == 50).all()
    both = render(grey, labels, class_colors=colours, mode="both", opacity=0.5)
    assert (both[ring] == colours[1]).all()
    assert (both[3:6, 4:7] == np.floor(50 + 0.5 * (colours[1].astype(float) - 50) + 0.5)).all()
    np.testing.assert_array_equal(slices.boundary(labels), ring | (square2 & ~centre2))


def test_difference_colours_false_positives_false_negatives_and_wrong_class():
    grey = np.full((4, 5), 80, dtype=np.uint8)
    truth = np.array([[0, 1, 1, 0, 2],
                      [0, 1, 1, 0, 2],
                      [0, 0, 0, 0, 0],
                      [2, 2, 0, 0, 0]])
    pred = np.array([[1, 1, 0, 0, 1],
                     [0, 1, 1, 0, 2],
                     [0, 0, 0, 2, 0],
                     [2, 0, 0, 0, 0]])
    code = slices.difference_map(truth, pred)
    assert code.tolist() == [[1, 0, 2, 0, 3], [0, 0, 0, 0, 0], [0, 0, 0, 1, 0], [0, 2, 0, 0, 0]]
    rgb = render_difference(grey, truth, pred, opacity=1.0)
    fp, fn, wrong = (_rgb(slices.DIFFERENCE_HEX[k]) for k in (slices.FALSE_POSITIVE, slices.FALSE_NEGATIVE,
                                                              slices.WRONG_CLASS))
    assert (rgb[code == 1] == fp).all() and (rgb[code == 2] == fn).all() and (rgb[code == 3] == wrong).all()
    assert (rgb[code == 0] == 80).all()  # agreement, foreground included, shows the bare image
    assert len({tuple(c) for c in difference_colors()[1:]}) == 3
    # vermillion vs blue, not red vs green: the false-positive colour is warm, the false-negative one is blue
    assert fp[0] > fp[2] and fn[2] > fn[0]
    # and none is the colour of classes 1 to 4, so that one picture never gives a colour two meanings
    assert not {tuple(c) for c in difference_colors()[1:]} & {tuple(c) for c in class_colors(5)[1:]}
    half = render_difference(grey, truth, pred, opacity=0.5)
    assert half[0, 0].tolist() == np.floor(80 + 0.5 * (fp - 80) + 0.5).tolist()


def test_anisotropic_pixels_are_made_square_labels_by_nearest_neighbour():
    grey = np.arange(12, dtype=np.uint8).reshape(4, 3) * 20
    labels = np.array([[0, 1, 0], [0, 1, 0], [2, 2, 0], [0, 0, 0]])
    rgb = render(grey, labels, spacing=(2.0, 1.0), opacity=1.0)  # pixels twice as tall as wide
    assert rgb.shape == (8, 3, 3)
    plain = render(grey, labels, opacity=1.0)
    shown = render(grey, labels, spacing=(2.0, 1.0), opacity=1.0, smooth=False)
    np.testing.assert_array_equal(shown, np.repeat(plain, 2, axis=0))
    labelled = (rgb != render(grey, spacing=(2.0, 1.0))).any(axis=2)
    np.testing.assert_array_equal(labelled, np.repeat(labels > 0, 2, axis=0))
    assert render(grey, spacing=(1.0, 1.5)).shape == (4, 5, 3)  # round(3 * 1.5)
    assert render(grey, scale=3).shape == (12, 9, 3)


# --------------------------------------------------------------------------------------------
# The prepared renderer
# --------------------------------------------------------------------------------------------
def test_the_renderer_draws_what_the_functions_draw():
    rng = np.random.default_rng(2)
    image = rng.normal(0, 1, SHAPE).astype(np.float32)
    truth = np.zeros(SHAPE, dtype=np.int16)
    truth[3:8, 4:9, 5:10] = 1
    truth[4:6, 5:7, 6:8] = 2
    pred = np.roll(truth, 1, axis=1)
    spacing = (0.8, 0.8, 2.0)
    window = (3.0, 0.0)
    renderer = SliceRenderer(image[None], truth.astype(np.float32), pred, spacing=spacing, window=window)
    assert renderer.views == ("image", "truth", "prediction", "difference")
    for plane in PLANES:
        index = renderer.best_slice(plane)
        image_slice = extract_slice(image, plane, index)
        truth_slice, pred_slice = extract_slice(truth, plane, index), extract_slice(pred, plane, index)
        kw = {"window": window, "spacing": pixel_spacing(spacing, plane), "opacity": 0.6}
        for mode in ("filled", "contour", "both"):
            np.testing.assert_array_equal(renderer.render(plane, index, "truth", 0.6, mode),
                                          render(image_slice, truth_slice, mode=mode, **kw))
            np.testing.assert_array_equal(renderer.render(plane, index, "prediction", 0.6, mode),
                                          render(image_slice, pred_slice, class_colors=class_colors(3), mode=mode,
                                                 **kw))
            np.testing.assert_array_equal(renderer.render(plane, index, "difference", 0.6, mode),
                                          render_difference(image_slice, truth_slice, pred_slice, mode=mode, **kw))
        assert renderer.render(plane, index, "image").shape[:2] == renderer.display_shape(plane)
    only_truth = SliceRenderer(image, truth, window=window)
    assert only_truth.views == ("image", "truth")
    with pytest.raises(ValueError, match="view 'difference' needs both labels"):
        only_truth.render("axial", 0, "difference")
    with pytest.raises(ValueError, match="prediction shape"):
        SliceRenderer(image, truth, pred[:-1])


# --------------------------------------------------------------------------------------------
# Which slice
# --------------------------------------------------------------------------------------------
def test_best_slice_by_error_and_by_label():
    truth = np.zeros(SHAPE, dtype=np.uint8)
    pred = np.zeros(SHAPE, dtype=np.uint8)
    truth[2:5, 2:5, 3] = 1  # 9 voxels at z = 3, predicted right
    pred[2:5, 2:5, 3] = 1
    truth[0:2, 0:2, 8] = 1  # z = 8: 4 voxels missed ...
    pred[6:9, 6:9, 8] = 2  # ... and 9 false positives: 13 errors, 13 labelled
    truth[5, 5, 11] = 1  # z = 11: 1 voxel of the wrong class
    pred[5, 5, 11] = 2
    assert best_slice(truth, pred, "axial", by="error") == 8
    assert best_slice(truth, pred, "axial", by="label") == 8
    truth[0:4, 0:4, 3] = 1  # z = 3 now has 16 + 5 labelled voxels, still few errors
    assert best_slice(truth, pred, "axial", by="label") == 3
    assert best_slice(truth, pred, "axial", by="error") == 8
    assert best_slice(truth, None, "axial", by="label") == 3
    assert best_slice(None, pred, "axial", by="label") == 3  # 9 voxels at z = 3 and z = 8: the first
    assert best_slice(truth, pred, "sagittal", by="error") in range(10)
    errors = truth != pred
    for plane, axis in slices.PLANE_AXIS.items():
        counts = errors.sum(axis=tuple(a for a in range(3) if a != axis))
        assert best_slice(truth, pred, plane, by="error") == int(np.argmax(counts))
    empty = np.zeros(SHAPE, dtype=np.uint8)
    assert best_slice(empty, empty, "coronal") == 6  # nothing to show: the middle slice
    with pytest.raises(ValueError, match="needs both"):
        best_slice(truth, None, "axial", by="error")


# --------------------------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------------------------
def test_png_round_trip_is_lossless():
    from PIL import Image

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    data = to_png(rgb)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), rgb)
    grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(to_png(grey)))), grey)
    renderer = SliceRenderer(rng.normal(size=SHAPE), np.ones(SHAPE, dtype=np.uint8), window=(2, 0))
    picture = np.asarray(Image.open(io.BytesIO(renderer.png("coronal", 3, "truth"))))
    np.testing.assert_array_equal(picture, renderer.render("coronal", 3, "truth"))
    with pytest.raises(ValueError, match="uint8"):
        to_png(rgb.astype(np.float32))
