"""Pictures of one case, its prediction against its ground truth: the evaluation report's case figure and the
review app's views are drawn here, from the same arrays, renderer and colours, so that a case looks the same in
the report and in the app.

The arrays are made from what ``medft.data.loading`` loads (RAS, (channels, x, y, z)): the image's first
channel (``image_values``) and label volumes as class indices through the run's ``data.label_map``
(``class_values``). Slice choice, orientation, windowing and overlay colours come from ``medft.slices``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medft import slices

# The difference view's colours as the legends name them.
DIFFERENCE_LEGEND = ((slices.FALSE_POSITIVE, "false positive"), (slices.FALSE_NEGATIVE, "false negative"),
                     (slices.WRONG_CLASS, "wrong class"))
REPORT_PLANE = "axial"
REPORT_PANEL_PIXELS = 300  # about the width of one panel in the report's figure
# The report's panels: (title, view, overlay opacity, overlay mode).
REPORT_PANELS = (("Image", "image", 0.35, "filled"), ("Ground truth", "truth", 0.35, "both"),
                 ("Prediction", "prediction", 0.35, "both"), ("Difference", "difference", 0.6, "filled"))


# --------------------------------------------------------------------------------------------
# Arrays and the renderer
# --------------------------------------------------------------------------------------------
def image_values(image) -> np.ndarray:
    """The first channel of a loaded (channels, x, y, z) image: contiguous float32 (x, y, z)."""
    return np.ascontiguousarray(np.asarray(image.detach().cpu()[0], dtype=np.float32))


def class_values(volume, label_map: dict[int, int]) -> np.ndarray:
    """A loaded (1, x, y, z) label volume as classes: its values rounded, then mapped through ``label_map``
    (the run's data.label_map: label file value -> class; empty for a prediction), float32 (x, y, z)."""
    from medft.data.transforms import map_label_values

    return map_label_values(np.rint(np.asarray(volume.detach().cpu()[0], dtype=np.float32)), label_map)


def case_renderer(image: np.ndarray, truth: np.ndarray | None, prediction: np.ndarray | None, affine: np.ndarray,
                  n_classes: int, window: tuple[float, float], scale: float,
                  best_slices: dict[tuple[str, str], int] | None = None) -> slices.SliceRenderer:
    """A SliceRenderer of one case's arrays (x, y, z) on the voxel grid of ``affine``, classes in the palette
    (``best_slices``: those already counted, by (plane, by))."""
    return slices.SliceRenderer(image, truth, prediction, spacing=slices.voxel_spacing(affine), window=window,
                                class_colors=slices.class_colors(n_classes), scale=scale, best_slices=best_slices)


# --------------------------------------------------------------------------------------------
# Legends
# --------------------------------------------------------------------------------------------
def class_legend(class_names: Sequence[str], n_classes: int | None = None) -> list[tuple[str, str]]:
    """(colour, name) of the foreground classes 1 .. n_classes - 1 (default: the named ones); a class
    without a name is "class c"."""
    n = len(class_names) if n_classes is None else n_classes
    return [(slices.class_hex(c), class_names[c] if c < len(class_names) else f"class {c}") for c in range(1, n)]


def difference_legend() -> list[tuple[str, str]]:
    """(colour, name) of the three kinds of disagreement in the difference view."""
    return [(slices.DIFFERENCE_HEX[kind], name) for kind, name in DIFFERENCE_LEGEND]


# --------------------------------------------------------------------------------------------
# The report's figure
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportSlice:
    """What the report's picture of a case is drawn from: the axial slice with the most voxels labelled in
    the ground truth or the prediction, as (x, y, 1) arrays, where it lies, and the image's window."""

    image: np.ndarray  # float32
    truth: np.ndarray  # int16 classes
    prediction: np.ndarray  # int16 classes
    affine: np.ndarray  # of the whole volume's grid
    index: int
    count: int  # axial slices of the volume
    window: tuple[float, float]  # (width, level) of the whole image

    @property
    def n_classes(self) -> int:
        return int(max(self.truth.max(), self.prediction.max())) + 1


def report_slice(image: np.ndarray, affine: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> ReportSlice:
    """The report's slice of a case, from its whole arrays (x, y, z): a few hundred kilobytes to keep
    instead of the volumes."""
    plane = REPORT_PLANE
    index = slices.best_slice(truth, prediction, plane, by="label")
    keep = [slice(None)] * 3
    keep[slices.PLANE_AXIS[plane]] = slice(index, index + 1)
    part = tuple(keep)
    return ReportSlice(np.ascontiguousarray(image[part]), np.ascontiguousarray(truth[part]),
                       np.ascontiguousarray(prediction[part]), np.asarray(affine, dtype=np.float64), index,
                       slices.slice_count(image.shape, plane), slices.percentile_window(image))


def report_figure(picture: ReportSlice, class_names: Sequence[str], title: str) -> tuple[str, str]:
    """The report's picture of a case as a PNG data URI, and where its slice lies.

    Image, ground truth, prediction and their difference, side by side, on the slice of ``report_slice``;
    one legend below.
    """
    plane = REPORT_PLANE
    n_classes = max(len(class_names), picture.n_classes)
    renderer = case_renderer(picture.image, picture.truth, picture.prediction, picture.affine, n_classes,
                             picture.window, report_scale(picture.image, picture.affine, plane))
    panels = [(name, renderer.render(plane, 0, view=view, opacity=opacity, mode=mode))
              for name, view, opacity, mode in REPORT_PANELS]
    legend = class_legend(class_names, n_classes) + difference_legend()
    uri = slice_figure(panels, slices.orientation_letters(plane), legend, title)
    where = f"{plane.title()} slice {picture.index + 1} of {picture.count} (counted {slices.SLICE_DIRECTION[plane]})"
    return uri, where


def report_scale(image: np.ndarray, affine: np.ndarray, plane: str) -> int:
    """The whole magnification that brings a small slice to about one panel's width: small images are
    magnified here, not by the figure, so that outlines stay one fine pixel wide."""
    shape = slices.extract_slice(image, plane, 0).shape
    spacing = slices.pixel_spacing(slices.voxel_spacing(affine), plane)
    return max(1, math.ceil(REPORT_PANEL_PIXELS / max(slices.display_shape(shape, spacing))))


def slice_figure(panels: list[tuple[str, np.ndarray]], letters: dict[str, str], legend: list[tuple[str, str]],
                 title: str) -> str:
    """Pictures drawn by medft.slices side by side, each with its orientation letters, one legend below."""
    from matplotlib import patheffects, rc_context
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from medft.evaluate import plots

    height, width = panels[0][1].shape[:2]
    panel_width = 2.5
    panel_height = min(max(0.92 * panel_width * height / width, 1.4), 4.0)
    with rc_context({"font.size": 9, "axes.titlesize": 10, "savefig.facecolor": "white"}):
        fig = Figure(figsize=(len(panels) * panel_width, panel_height + 0.9), layout="constrained")
        axes = fig.subplots(1, len(panels))
        for ax, (name, rgb) in zip(axes, panels, strict=True):
            ax.imshow(rgb, interpolation="nearest")
            ax.set_title(name)
            ax.set_xticks([])
            ax.set_yticks([])
            for edge, (x, y, ha, va) in _LETTER_PLACES.items():
                ax.text(x, y, letters[edge], transform=ax.transAxes, color="white", fontsize=9, fontweight="bold",
                        ha=ha, va=va, path_effects=[patheffects.withStroke(linewidth=2.2, foreground="black")])
        handles = [Patch(facecolor=colour, edgecolor=colour, label=label) for colour, label in legend]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 7), fontsize=8)
        fig.suptitle(title, fontsize=10)
        return plots.to_data_uri(fig)


# Where each orientation letter stands on a panel: (x, y, horizontal and vertical alignment), in axes fractions.
_LETTER_PLACES = {"left": (0.02, 0.5, "left", "center"), "right": (0.98, 0.5, "right", "center"),
                  "top": (0.5, 0.98, "center", "top"), "bottom": (0.5, 0.02, "center", "bottom")}
