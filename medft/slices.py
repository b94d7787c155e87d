"""Slices of RAS volumes as pictures: one implementation for the evaluation report and the review app.

Pure numpy (Pillow only to write PNG). Volumes are shaped (x, y, z) in RAS, as
``medft.data.loading`` loads them: the index grows towards the patient's Right, Anterior and
Superior along axes 0, 1 and 2.

Display convention (radiological, what clinicians expect from a PACS viewer):

=========  ===============================  ===========  ===========
plane      fixed axis (slice index along)   screen left  screen top
=========  ===============================  ===========  ===========
axial      z (index 0 = most inferior)      patient R    anterior
coronal    y (index 0 = most posterior)     patient R    superior
sagittal   x (index 0 = patient's left)     anterior     superior
=========  ===============================  ===========  ===========

Sagittal slices are seen from the patient's left side (anterior on the left, as most viewers
do). A slice index is always an index along the volume's own axis, never a screen position.

Rendering pipeline of one slice: intensities -> grey levels by a window (width, level) ->
resampled to square pixels (image: linear, labels: nearest; see ``display_shape``) -> a
colour overlay by one table lookup (filled, outlined, or both). ``SliceRenderer`` holds a case
ready (the volume as given, with no copy; label maps as small integers; best slices counted once),
windows only the slice it draws, so that making it and changing the slice or the window cost
milliseconds; see ``benchmarks/review_slice_latency.py`` and ``benchmarks/review_app_latency.py``.

Colours are the Okabe-Ito palette, distinct under the common colour-vision deficiencies.
"""
from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

PLANES = ("axial", "coronal", "sagittal")
# The volume axis that a plane's slice index runs along.
PLANE_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}
# Where slice 1 lies and where the last one: the patient direction in which the slice index grows.
SLICE_DIRECTION = {"axial": "inferior → superior", "coronal": "posterior → anterior",
                   "sagittal": "patient's left → right"}
_LETTERS = {
    "axial": {"top": "A", "bottom": "P", "left": "R", "right": "L"},
    "coronal": {"top": "S", "bottom": "I", "left": "R", "right": "L"},
    "sagittal": {"top": "S", "bottom": "I", "left": "A", "right": "P"},
}

# (width, level) in Hounsfield units.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "CT soft tissue": (400.0, 40.0),
    "CT lung": (1500.0, -600.0),
    "CT bone": (2500.0, 480.0),
    "CT brain": (80.0, 40.0),
}

# Okabe & Ito (2008), "Color Universal Design", without black. Class c >= 1 takes
# OKABE_ITO[(c - 1) % 7]: the same order as the report's plots, so a class keeps its colour.
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")

# The difference view: each voxel where prediction and ground truth disagree is one of three kinds.
AGREE, FALSE_POSITIVE, FALSE_NEGATIVE, WRONG_CLASS = 0, 1, 2, 3
DIFFERENCE_NAMES = {
    FALSE_POSITIVE: "false positive (predicted foreground, background in the ground truth)",
    FALSE_NEGATIVE: "false negative (foreground in the ground truth, predicted background)",
    WRONG_CLASS: "wrong class (foreground in both, different classes)",
}
# Vermillion vs blue (not red vs green), and reddish purple: the Okabe-Ito colours that classes 1-4
# do not use, so that a picture of a case with up to four classes never gives two meanings to one colour.
DIFFERENCE_HEX = {FALSE_POSITIVE: "#D55E00", FALSE_NEGATIVE: "#0072B2", WRONG_CLASS: "#CC79A7"}

MODES = ("filled", "contour", "both")
VIEWS = ("image", "truth", "prediction", "difference")


# --------------------------------------------------------------------------------------------
# Geometry and orientation
# --------------------------------------------------------------------------------------------
def _check_plane(plane: str) -> int:
    try:
        return PLANE_AXIS[plane]
    except (KeyError, TypeError):
        raise ValueError(f"plane must be one of {', '.join(PLANES)}; got {plane!r}") from None


def slice_count(shape: Sequence[int], plane: str) -> int:
    """How many slices a volume of ``shape`` (x, y, z) has in ``plane``."""
    return int(shape[_check_plane(plane)])


def _check_index(shape: Sequence[int], plane: str, index: int) -> int:
    count = slice_count(shape, plane)
    index = int(index)
    if not 0 <= index < count:
        raise IndexError(f"slice index {index} is outside the {plane} slices 0..{count - 1} of a {tuple(shape)} volume")
    return index


def extract_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """The 2D slice ``index`` of an (x, y, z) RAS volume, oriented for the screen (a view, no copy).

    Row 0 is the top of the screen, column 0 its left: see the table in the module docstring
    and ``orientation_letters``.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3D (x, y, z); got shape {volume.shape} (take one channel: volume[0])")
    index = _check_index(volume.shape, plane, index)
    if plane == "axial":  # rows: y from anterior down; columns: x from the patient's right
        return volume[::-1, ::-1, index].T
    if plane == "coronal":  # rows: z from superior down; columns: x from the patient's right
        return volume[::-1, index, ::-1].T
    return volume[index, ::-1, ::-1].T  # sagittal: rows: z from superior down; columns: y from anterior


def orientation_letters(plane: str) -> dict[str, str]:
    """The patient direction at each screen edge: {"top", "bottom", "left", "right"} -> R/L/A/P/S/I."""
    _check_plane(plane)
    return dict(_LETTERS[plane])


def pixel_spacing(spacing: Sequence[float], plane: str) -> tuple[float, float]:
    """(row, column) size in mm of a displayed pixel of ``plane``, from the voxel spacing (x, y, z)."""
    _check_plane(plane)
    sx, sy, sz = (float(s) for s in spacing[:3])
    return {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}[plane]


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along x, y, z from a 4x4 affine (a MetaTensor's ``.affine``)."""
    matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
    return tuple(float(s) for s in np.linalg.norm(matrix, axis=0))


def display_shape(shape: Sequence[int], spacing: Sequence[float] = (1.0, 1.0), scale: float = 1.0) -> tuple[int, int]:
    """Screen size (rows, columns) of a slice of ``shape`` whose pixels measure ``spacing`` (row, column) mm.

    Pixels become square at the finer of the two spacings (nothing is ever shrunk), then
    everything is magnified by ``scale``.
    """
    rows, cols = int(shape[0]), int(shape[1])
    sr, sc = (float(s) for s in spacing)
    if not (sr > 0 and sc > 0 and scale > 0):
        raise ValueError(f"spacing and scale must be positive; got spacing {tuple(spacing)}, scale {scale}")
    finest = min(sr, sc)
    return max(1, int(rows * sr / finest * scale + 0.5)), max(1, int(cols * sc / finest * scale + 0.5))


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.intp), n_in - 1)


def _linear_index(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    position = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    low = np.floor(position).astype(np.intp)
    high = np.minimum(low + 1, n_in - 1)
    return low, high, (position - low).astype(np.float32)


class _Resampler:
    """Index maps from a slice shape to its display shape, made once per (shape, spacing, scale)."""

    def __init__(self, shape: Sequence[int], spacing: Sequence[float], scale: float):
        self.shape = (int(shape[0]), int(shape[1]))
        self.out = display_shape(shape, spacing, scale)
        self.identity = self.out == self.shape
        self.rows = _nearest_index(self.shape[0], self.out[0])
        self.cols = _nearest_index(self.shape[1], self.out[1])
        self.rows_linear = _linear_index(self.shape[0], self.out[0])
        self.cols_linear = _linear_index(self.shape[1], self.out[1])

    def nearest(self, array: np.ndarray) -> np.ndarray:
        if self.identity:
            return array
        return array[self.rows][:, self.cols]

    def linear(self, grey: np.ndarray) -> np.ndarray:
        """Bilinear resampling of a uint8 slice (axes without magnification are left alone)."""
        if self.identity:
            return grey
        out = grey
        if self.out[0] != self.shape[0]:
            low, high, w = self.rows_linear
            a, b = out[low].astype(np.float32), out[high].astype(np.float32)
            out = a + (b - a) * w[:, None]
        if self.out[1] != self.shape[1]:
            low, high, w = self.cols_linear
            a, b = out[:, low].astype(np.float32), out[:, high].astype(np.float32)
            out = a + (b - a) * w[None, :]
        return np.rint(out).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Windowing
# --------------------------------------------------------------------------------------------
def percentile_window(volume: np.ndarray, low: float = 1, high: float = 99) -> tuple[float, float]:
    """(width, level) spanning the ``low``-th to ``high``-th percentile of a volume's finite values.

    For MR, whose intensities have no fixed scale. Compute it once on the whole volume, not per
    slice, so that grey levels mean the same on every slice. A constant volume gets width 1.
    """
    values = np.asarray(volume)
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if not finite.all():
            values = values[finite]
    if values.size == 0:
        return 1.0, 0.5
    lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    if hi <= lo:
        return 1.0, lo
    return hi - lo, (lo + hi) / 2


def _check_window(width: float, level: float) -> tuple[float, float]:
    width, level = float(width), float(level)
    if not (width > 0 and np.isfinite(width) and np.isfinite(level)):
        raise ValueError(f"window width must be a positive number and level finite; got width {width}, level {level}")
    return width, level


def apply_window(values: np.ndarray, width: float, level: float) -> np.ndarray:
    """Grey levels 0..255 (uint8) of intensities under a window (width, level), any shape.

    Linear: level - width/2 -> 0, level + width/2 -> 255, grey = round(255 * (v - lo) / width),
    values outside the window clip to 0 or 255, NaN -> 0. The level maps to mid-grey (128).
    Computed in float32 in blocks, so that a whole volume needs no float64 copy of itself.
    """
    width, level = _check_window(width, level)
    values = np.asarray(values)
    out = np.empty(values.shape, dtype=np.uint8)
    lo, width = np.float32(level - width / 2), np.float32(width)
    if values.ndim == 0:
        return _window_block(values.reshape(1), lo, width).reshape(())
    flat_in = values.reshape(values.shape[0], -1) if values.ndim > 1 else values.reshape(1, -1)
    flat_out = out.reshape(flat_in.shape)
    step = max(1, (1 << 21) // max(1, flat_in.shape[1]))
    for start in range(0, flat_in.shape[0], step):
        flat_out[start:start + step] = _window_block(flat_in[start:start + step], lo, width)
    return out


def _window_block(block: np.ndarray, lo: np.float32, width: np.float32) -> np.ndarray:
    grey = block.astype(np.float32)  # always a copy
    grey -= lo
    grey *= np.float32(255)
    grey /= width  # multiply first, divide last: the level lands exactly on 127.5, rounded up to 128
    np.clip(grey, 0, 255, out=grey)
    if block.dtype.kind == "f":
        grey[np.isnan(grey)] = 0
    grey += 0.5  # round half up, then truncate
    return grey.astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Colours
# --------------------------------------------------------------------------------------------
def hex_to_rgb(colour: str) -> tuple[int, int, int]:
    colour = colour.lstrip("#")
    return int(colour[0:2], 16), int(colour[2:4], 16), int(colour[4:6], 16)


def class_colors(n: int) -> np.ndarray:
    """(n, 3) uint8 RGB colours of classes 0..n-1; class 0 (background) is black and never drawn."""
    colours = np.zeros((max(int(n), 1), 3), dtype=np.uint8)
    for c in range(1, len(colours)):
        colours[c] = hex_to_rgb(OKABE_ITO[(c - 1) % len(OKABE_ITO)])
    return colours


def class_hex(class_index: int) -> str:
    """The colour of a foreground class as ``#RRGGBB`` (for legends and HTML)."""
    return OKABE_ITO[(int(class_index) - 1) % len(OKABE_ITO)]


_class_colors = class_colors  # render() takes a parameter of that name


def difference_colors() -> np.ndarray:
    """(4, 3) uint8 colours of the difference codes AGREE (unused), FALSE_POSITIVE, FALSE_NEGATIVE, WRONG_CLASS."""
    colours = np.zeros((4, 3), dtype=np.uint8)
    for code, colour in DIFFERENCE_HEX.items():
        colours[code] = hex_to_rgb(colour)
    return colours


def difference_map(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per voxel (uint8): AGREE where pred == truth, else FALSE_POSITIVE (truth is background),
    FALSE_NEGATIVE (prediction is background) or WRONG_CLASS (both foreground, different classes).

    A wrong-class voxel is a false positive of the predicted class and a false negative of the
    true one in the metrics; here it gets its own colour so neither reading hides the other.
    """
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"truth shape {truth.shape} differs from prediction shape {pred.shape}")
    code = (truth > 0).view(np.uint8) * np.uint8(2)
    code += (pred > 0).view(np.uint8)
    code *= (truth != pred).view(np.uint8)
    return code


# --------------------------------------------------------------------------------------------
# Overlays
# --------------------------------------------------------------------------------------------
def _blend_table(colours: np.ndarray, opacity: float) -> np.ndarray:
    """(n * 256, 3) uint8: row label * 256 + grey is the pixel's colour (label 0: the grey itself).

    Filled pixels: round(grey + opacity * (colour - grey)), round half up.
    """
    colours = np.asarray(colours, dtype=np.float64).reshape(-1, 3)
    grey = np.arange(256, dtype=np.float64)[None, :, None]
    table = np.floor(grey + opacity * (colours[:, None, :] - grey) + 0.5)
    table[0] = grey[0]
    return np.clip(table, 0, 255).astype(np.uint8).reshape(-1, 3)


def boundary(labels: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-neighbour of another label, or on the edge of the slice.

    The inner morphological boundary of every class at once (a pixel minus its erosion).
    """
    labels = np.asarray(labels)
    edge = np.zeros(labels.shape, dtype=bool)
    if labels.size == 0:
        return edge
    vertical = labels[1:] != labels[:-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    horizontal = labels[:, 1:] != labels[:, :-1]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[0] = True
    edge[-1] = True
    edge[:, 0] = True
    edge[:, -1] = True
    edge &= labels > 0
    return edge


def _check_opacity_mode(opacity: float, mode: str) -> float:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    opacity = float(opacity)
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must lie in 0..1; got {opacity}")
    return opacity


def _labels(array: np.ndarray, n_colours: int, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind == "f":
        array = np.rint(np.nan_to_num(array, nan=0.0))
    if array.size and (array.min() < 0 or array.max() >= n_colours):
        raise ValueError(f"{what} holds labels {int(array.min())}..{int(array.max())} but only {n_colours} colours "
                         f"were given: pass class_colors=class_colors(n) with n above the largest label")
    return array.astype(np.uint16 if n_colours > 255 else np.uint8, copy=False)


def _compose(grey: np.ndarray, labels: np.ndarray | None, table: np.ndarray | None, outline: np.ndarray | None,
             mode: str) -> np.ndarray:
    """RGB of display-sized grey levels and labels; ``table`` from _blend_table, ``outline`` the opaque colours."""
    if labels is None:
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "contour":
        shown = labels * boundary(labels).view(np.uint8)
        index = shown.astype(np.intp) << 8
        index |= grey
        return outline.take(index, axis=0)
    index = labels.astype(np.intp) << 8
    index |= grey
    rgb = table.take(index, axis=0)
    if mode == "both":
        edge = boundary(labels)
        rgb[edge] = outline[labels[edge].astype(np.intp) << 8]
    return rgb


def render(image_slice: np.ndarray, label_slice: np.ndarray | None = None, *,
           window: tuple[float, float] | None = None, class_colors: np.ndarray | None = None,
           opacity: float = 0.4, mode: str = "filled", spacing: Sequence[float] = (1.0, 1.0),
           scale: float = 1.0, smooth: bool = True) -> np.ndarray:
    """An oriented slice (from ``extract_slice``) as an (rows, columns, 3) uint8 RGB picture.

    ``window`` (width, level) turns intensities into grey; without it the slice must already be
    uint8 grey levels (``apply_window``). ``label_slice`` (same shape, integer classes) is drawn
    over it in ``class_colors`` (default ``class_colors(largest label + 1)``; row c colours class
    c, class 0 is never drawn): ``mode="filled"`` blends each labelled pixel with its class colour
    at ``opacity`` (round(grey + opacity * (colour - grey))); ``"contour"`` draws only the outline
    of each class (``boundary``), fully opaque, ``opacity`` unused; ``"both"`` fills and outlines.
    ``spacing`` (row, column) mm of a pixel (``pixel_spacing``): the picture is resampled to square
    pixels and magnified by ``scale``, the image bilinearly (``smooth=False``: nearest), labels nearest.
    """
    opacity = _check_opacity_mode(opacity, mode)
    image_slice = np.asarray(image_slice)
    if image_slice.ndim != 2:
        raise ValueError(f"image_slice must be 2D; got shape {image_slice.shape}")
    if window is not None:
        grey = apply_window(image_slice, *window)
    elif image_slice.dtype == np.uint8:
        grey = image_slice
    else:
        raise ValueError(f"image_slice is {image_slice.dtype}: give window=(width, level), or uint8 grey levels "
                         "from apply_window")
    resampler = _Resampler(grey.shape, spacing, scale)
    grey = resampler.linear(grey) if smooth else resampler.nearest(grey)
    if label_slice is None:
        return _compose(grey, None, None, None, mode)
    label_slice = np.asarray(label_slice)
    if label_slice.shape != image_slice.shape:
        raise ValueError(f"label_slice shape {label_slice.shape} differs from image_slice shape {image_slice.shape}")
    if class_colors is None:
        top = int(np.nanmax(label_slice)) if label_slice.size else 0
        class_colors = _class_colors(max(top, 0) + 1)
    colours = np.asarray(class_colors, dtype=np.uint8).reshape(-1, 3)
    labels = resampler.nearest(_labels(label_slice, len(colours), "label_slice"))
    return _compose(grey, labels, _blend_table(colours, opacity), _blend_table(colours, 1.0), mode)


def render_difference(image_slice: np.ndarray, truth_slice: np.ndarray, pred_slice: np.ndarray, *,
                      window: tuple[float, float] | None = None, opacity: float = 0.4, mode: str = "filled",
                      spacing: Sequence[float] = (1.0, 1.0), scale: float = 1.0, smooth: bool = True) -> np.ndarray:
    """Where prediction and ground truth disagree, over the image: false positives vermillion (orange-red),
    false negatives blue, wrong class reddish purple (``difference_map``, ``DIFFERENCE_HEX``).
    Agreeing voxels, foreground or not, show the bare image. Other arguments as in ``render``."""
    return render(image_slice, difference_map(truth_slice, pred_slice), window=window,
                  class_colors=difference_colors(), opacity=opacity, mode=mode, spacing=spacing, scale=scale,
                  smooth=smooth)


# --------------------------------------------------------------------------------------------
# Which slice to show
# --------------------------------------------------------------------------------------------
def best_slice(truth: np.ndarray | None, pred: np.ndarray | None, plane: str, by: str = "error") -> int:
    """The slice index of ``plane`` with the most voxels that matter, the first of equals.

    ``by="error"``: voxels where prediction and ground truth differ (both needed).
    ``by="label"``: voxels labelled in the ground truth or the prediction (either may be None).
    With nothing to count, the middle slice.
    """
    axis = _check_plane(plane)
    if by not in ("error", "label"):
        raise ValueError(f"by must be 'error' or 'label'; got {by!r}")
    given = [np.asarray(a) for a in (truth, pred) if a is not None]
    if not given:
        raise ValueError("best_slice needs a ground truth or a prediction; both are None")
    shape = given[0].shape
    if len(shape) != 3 or any(a.shape != shape for a in given):
        raise ValueError(f"truth and prediction must be 3D volumes of one shape; got {[a.shape for a in given]}")
    if by == "error":
        if len(given) != 2:
            raise ValueError("best_slice(by='error') needs both the ground truth and the prediction")
        mask = given[0] != given[1]
    else:
        mask = given[0] > 0
        if len(given) == 2:
            mask |= given[1] > 0
    other = tuple(a for a in range(3) if a != axis)
    counts = np.count_nonzero(mask, axis=other)
    if not counts.any():
        return shape[axis] // 2
    return int(np.argmax(counts))


# --------------------------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------------------------
def to_png(rgb: np.ndarray, compress_level: int = 1) -> bytes:
    """Lossless PNG bytes of an (h, w, 3) RGB or (h, w) grey uint8 picture (fast, light compression)."""
    rgb = np.ascontiguousarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim not in (2, 3) or (rgb.ndim == 3 and rgb.shape[2] not in (3, 4)):
        raise ValueError(f"to_png takes uint8 (h, w), (h, w, 3) or (h, w, 4); got {rgb.dtype} {rgb.shape}")
    buffer = io.BytesIO()
    try:
        from PIL import Image
    except ImportError:  # matplotlib writes PNG without Pillow's speed settings
        import matplotlib.image

        matplotlib.image.imsave(buffer, rgb, format="png", cmap="gray" if rgb.ndim == 2 else None, vmin=0, vmax=255)
        return buffer.getvalue()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# A prepared volume for fast slice changes
# --------------------------------------------------------------------------------------------
def _volume(array: object, what: str) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensors and MONAI MetaTensors
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"{what} must be a 3D (x, y, z) volume, or (1, x, y, z); got shape {array.shape}")
    return array


class SliceRenderer:
    """One case held ready for slice after slice: the image as given (any data type and memory
    order, not copied), ground truth and prediction as small integer maps.

    Per slice there is a strided copy of the slice, its windowing (``apply_window``: a slice
    windowed alone has the grey levels it has in the windowed volume), an optional resample to
    square pixels and one table lookup. Changing the window (``set_window``) costs nothing until
    the next slice is drawn; the colour tables are cached per opacity and the best slices per
    plane. The window is state: give each viewer (each app session) its own renderer, or share
    one only among viewers of one window.
    ``class_colors`` (rows per class) overrides the palette; ``n_classes`` asks for at least that
    many palette colours. Label values without a colour raise ValueError.

    >>> renderer = SliceRenderer(image, truth, pred, spacing=(0.7, 0.7, 2.5), window=WINDOW_PRESETS["CT soft tissue"])
    >>> rgb = renderer.render("axial", renderer.best_slice("axial"), view="difference")
    >>> png = renderer.png("coronal", 100, view="truth", mode="contour")
    """

    def __init__(self, image: object, truth: object | None = None, prediction: object | None = None, *,
                 spacing: Sequence[float] = (1.0, 1.0, 1.0), window: tuple[float, float] | None = None,
                 n_classes: int | None = None, class_colors: np.ndarray | None = None, scale: float = 1.0,
                 smooth: bool = True, best_slices: Mapping[tuple[str, str], int] | None = None):
        self._source = _volume(image, "image")
        self.shape = self._source.shape
        self.spacing = tuple(float(s) for s in spacing[:3])
        self.scale = float(scale)
        self.smooth = smooth
        maps = {}
        for name, volume in (("truth", truth), ("prediction", prediction)):
            if volume is None:
                continue
            volume = _volume(volume, name)
            if volume.shape != self.shape:
                raise ValueError(f"{name} shape {volume.shape} differs from image shape {self.shape}")
            maps[name] = volume
        if class_colors is None:  # at least n_classes colours, and one for every label present
            top = max([int(np.nanmax(v)) for v in maps.values() if v.size] + [0])
            colours = _class_colors(max(n_classes or 0, top + 1))
        else:
            colours = np.asarray(class_colors, dtype=np.uint8).reshape(-1, 3)
        self.class_colors = colours
        self.labels = {name: _labels(v, len(colours), name) for name, v in maps.items()}
        self._view_colours = {"truth": colours, "prediction": colours, "difference": difference_colors()}
        self._tables: dict[tuple[str, float], np.ndarray] = {}
        self._resamplers: dict[str, _Resampler] = {}
        self._best: dict[tuple[str, str], int] = dict(best_slices or {})  # (plane, by): counted already, or when asked
        self._last_grey: tuple[tuple, np.ndarray] | None = None
        self.window: tuple[float, float] = _check_window(*(window if window is not None
                                                           else percentile_window(self._source)))

    # ---- state -------------------------------------------------------------------------------
    def set_window(self, width: float, level: float) -> None:
        """The window of the slices drawn from now on (each is windowed as it is drawn)."""
        self.window = _check_window(width, level)

    @property
    def views(self) -> tuple[str, ...]:
        """The views this case can show: the image always; truth, prediction, difference when given."""
        views = ["image", *self.labels]
        if len(self.labels) == 2:
            views.append("difference")
        return tuple(views)

    def slice_count(self, plane: str) -> int:
        return slice_count(self.shape, plane)

    def best_slice(self, plane: str, by: str = "error") -> int:
        """``best_slice`` of the case's labels (counted over the whole volume once per plane and ``by``)."""
        if by == "error" and len(self.labels) < 2:
            by = "label"
        if not self.labels:
            return self.slice_count(plane) // 2
        key = (plane, by)
        if key not in self._best:
            self._best[key] = best_slice(self.labels.get("truth"), self.labels.get("prediction"), plane, by)
        return self._best[key]

    def display_shape(self, plane: str) -> tuple[int, int]:
        return self._resampler(plane).out

    @staticmethod
    def letters(plane: str) -> dict[str, str]:
        return orientation_letters(plane)

    # ---- drawing -----------------------------------------------------------------------------
    def _resampler(self, plane: str) -> _Resampler:
        if plane not in self._resamplers:
            axis = _check_plane(plane)
            rows, cols = {0: (2, 1), 1: (2, 0), 2: (1, 0)}[axis]
            self._resamplers[plane] = _Resampler((self.shape[rows], self.shape[cols]),
                                                 pixel_spacing(self.spacing, plane), self.scale)
        return self._resamplers[plane]

    def _table(self, view: str, opacity: float) -> np.ndarray:
        key = (view, opacity)
        if key not in self._tables:
            if len(self._tables) > 64:
                self._tables.clear()
            self._tables[key] = _blend_table(self._view_colours[view], opacity)
        return self._tables[key]

    def render(self, plane: str, index: int, view: str = "truth", opacity: float = 0.4,
               mode: str = "filled") -> np.ndarray:
        """(rows, columns, 3) uint8 RGB of one slice; ``view``: image, truth, prediction or difference."""
        opacity = _check_opacity_mode(opacity, mode)
        if view not in VIEWS:
            raise ValueError(f"view must be one of {', '.join(VIEWS)}; got {view!r}")
        if view not in self.views:
            raise ValueError(f"view {view!r} needs {'both labels' if view == 'difference' else 'the ' + view}, "
                             f"which this case lacks; its views are {', '.join(self.views)}")
        resampler = self._resampler(plane)
        grey = self._grey(plane, index, resampler)
        if view == "image":
            return _compose(grey, None, None, None, mode)
        if view == "difference":
            labels = difference_map(extract_slice(self.labels["truth"], plane, index),
                                    extract_slice(self.labels["prediction"], plane, index))
        else:
            labels = np.ascontiguousarray(extract_slice(self.labels[view], plane, index))
        labels = resampler.nearest(labels)
        return _compose(grey, labels, self._table(view, opacity), self._table(view, 1.0), mode)

    def _grey(self, plane: str, index: int, resampler: _Resampler) -> np.ndarray:
        """The slice's grey levels on the screen's pixels (read-only); the last one is kept, as the views of
        one slice (ground truth, prediction, difference) are drawn one after the other."""
        key = (plane, index, self.window)
        last = self._last_grey
        if last is not None and last[0] == key:
            return last[1]
        grey = apply_window(extract_slice(self._source, plane, index), *self.window)
        grey = resampler.linear(grey) if self.smooth else resampler.nearest(grey)
        grey.flags.writeable = False
        self._last_grey = (key, grey)
        return grey

    def png(self, plane: str, index: int, view: str = "truth", opacity: float = 0.4, mode: str = "filled") -> bytes:
        return to_png(self.render(plane, index, view, opacity, mode))
