"""The perturbations of ``medft stress``: what a scan may look like at the next scanner, protocol or patient, each
at five severity levels.

A perturbation acts on a case as medft loads it (channels first, the intensities of the file, before the model's
preprocessing), like an acquisition would: the model then preprocesses and predicts the perturbed image as it
would any other. Spatial perturbations move the label with the image (nearest neighbour); the others leave it.

The levels follow ROOD-MRI (Boone et al. 2023, the parameter grids of its nine perturbations) where its
parameters suit any field of view; where ROOD-MRI's are in absolute millimetres that suit a whole brain and
would push a small crop out of its own field of view (translation, elastic displacement), they are fractions of
the image. Random draws (noise, field coefficients, motion trajectories, deformation fields) come from one seed per
case and perturbation, the same at every level: a higher level is the same draw made stronger, so that the
curves show strength, not the luck of the draw, and two models meet the same perturbed images.

Transforms: MONAI's (Rician and Gaussian noise, bias field, gamma, smoothing, affine, intensity shift); TorchIO's
where MONAI has none (motion and ghosting, simulated in k-space) or none with a displacement in millimetres
(elastic: MONAI's field is white noise smoothed, its magnitude not a distance); medft's own slab average for
thick slices (partial volume: a thick slice averages the tissue it covers; MONAI has no such transform and
TorchIO's anisotropy samples every k-th slice instead).
"""
from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

MODALITIES = ("mr", "ct")
LEVELS = (1, 2, 3, 4, 5)
CONTROL_POINTS = 7  # per axis, of the elastic deformation's B-spline grid (TorchIO's default)
GHOSTS = 4  # copies of the image along the phase-encoding axis, at every level (ROOD-MRI: 3 to 11)
LOCKED_BORDERS = 2  # control points at each border that do not move (TorchIO's default)
MOTION_MOVEMENTS = 4  # movements during an acquisition, at the same times at every level


@dataclass(frozen=True)
class Volume:
    """A case as loaded: image (channels, x, y, z) float32, label (1, x, y, z) or None, voxel spacing in mm."""

    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float]


Apply = Callable[[Volume, dict, np.random.Generator], Volume]


@dataclass(frozen=True)
class Perturbation:
    """One perturbation: its parameters at levels 1 to 5 (``levels[0]`` is level 1), and how it is applied."""

    name: str
    title: str
    modalities: tuple[str, ...]
    spatial: bool  # moves the label with the image
    levels: tuple[dict, ...]
    describe: str  # what the parameters mean, for stress.json and the report
    apply: Apply

    def parameters(self, level: int) -> dict:
        return dict(self.levels[level - 1])

    def __call__(self, volume: Volume, level: int, seed: int) -> Volume:
        """``volume`` perturbed at ``level`` (1 to 5) with the draws of ``seed``."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchIO's and MONAI's notices about their own defaults
            return self.apply(volume, self.parameters(level), np.random.default_rng(seed))


def case_seed(case_id: str, perturbation: str, seed: int = 0) -> int:
    """The seed of a case's perturbation: the same on every machine and in every process (no Python hash)."""
    digest = hashlib.sha256(f"{seed}/{case_id}/{perturbation}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


# --------------------------------------------------------------------------------------------
# Intensity perturbations
# --------------------------------------------------------------------------------------------
def _monai_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def _channels(image: np.ndarray, each: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """``each`` applied to every channel (1, x, y, z) of ``image``, as float32."""
    out = [np.asarray(each(torch.from_numpy(np.ascontiguousarray(c[None]))), dtype=np.float32)[0] for c in image]
    return np.stack(out)


def _replace(volume: Volume, image: np.ndarray, label: np.ndarray | None = None) -> Volume:
    return Volume(image.astype(np.float32, copy=False), volume.label if label is None else label, volume.spacing)


def rician_noise(volume: Volume, p: dict, rng: np.random.Generator) -> Volume:
    from monai.transforms import RandRicianNoise

    noise = RandRicianNoise(prob=1.0, std=p["std"], relative=True, channel_wise=True, sample_std=False)
    noise.set_random_state(_monai_seed(rng))
    return _replace(volume, np.asarray(noise(torch.from_numpy(volume.image.copy())), dtype=np.float32))


def gaussian_noise(volume: Volume, p: dict, rng: np.random.Generator) -> Volume:
    from monai.transforms import RandGaussianNoise

    noise = RandGaussianNoise(prob=1.0, std=p["std_hu"], sample_std=False)
    noise.set_random_state(_monai_seed(rng))
    return _replace(volume, np.asarray(noise(torch.from_numpy(volume.image.copy())), dtype=np.float32))


def bias_field(volume: Volume, p: dict, rng: np.random.Generator) -> Volume:
    from monai.transforms import RandBiasField

    c = p["coefficients"]
    field = RandBiasField(degree=3, coeff_range=(-c, c), prob=1.0)
    field.set_random_state(_monai_seed(rng))
    return _replace(volume, np.asarray(field(torch.from_numpy(volume.image.copy())), dtype=np.float32))


def gamma(volume: Volume, p: dict, rng: np.random.Generator) -> Volume:
    from monai.transforms import AdjustContrast

    return _replace(volume, _channels(volume.image, AdjustContrast(gamma=p["gamma"])))


def smoothing(volume: Volume, p: dict, rng: np.random.Generator) -> Volume:
    from monai.transforms import GaussianSmooth

    smooth = GaussianSmooth(sigma=[p["sigma_mm"] / s for s in volume.spacing])
    return _replace(volume, _channels(volume.image, smooth))


def hu_offset(volume: Volume, p: dict, rng: np.random.Generator) -> Volume:
    from monai.transforms import ShiftIntensity

    return _replace(volume, np.asarray(ShiftIntensity(p["offset_hu"])(torch.from_numpy(volume.image.copy()))))


def slice_axis(spacing: Sequence[float], rng: np.random.Generator) -> int:
    """The axis whose slices a thick-slice perturbation thickens: the one of the largest spacing (the
    acquisition's slice axis), a seeded choice among those within 1% of it (an isotropic image)."""
    largest = max(spacing)
    candidates = [axis for axis, s in enumerate(spacing) if s >= 0.99 * largest]
    return int(candidates[rng.integers(len(candidates))])


def thick_slices(volume: Volume, p: dict, rng: np.random.Generator) -> Volume:
    """Slabs of ``factor`` slices averaged (partial volume), then interpolated back linearly onto the grid."""
    factor, axis = int(p["factor"]), slice_axis(volume.spacing, rng)
    image = torch.from_numpy(np.moveaxis(volume.image, axis + 1, -1).copy())  # (C, a, b, n)
    n = image.shape[-1]
    padded = -(-n // factor) * factor
    if padded > n:  # the last slab repeats the last slice
        image = torch.cat([image, image[..., -1:].expand(*image.shape[:-1], padded - n)], dim=-1)
    slabs = image.reshape(*image.shape[:-1], padded // factor, factor).mean(-1)
    flat = slabs.reshape(-1, 1, slabs.shape[-1])
    back = torch.nn.functional.interpolate(flat, size=padded, mode="linear", align_corners=False)
    back = back.reshape(*image.shape[:-1], padded)[..., :n]
    return _replace(volume, np.moveaxis(back.numpy(), -1, axis + 1))


# --------------------------------------------------------------------------------------------
# k-space perturbations (TorchIO)
# --------------------------------------------------------------------------------------------
def _torchio_image(volume: Volume):
    import torchio as tio

    affine = np.diag([*volume.spacing, 1.0])
    return tio.ScalarImage(tensor=torch.from_numpy(volume.image.copy()), affine=affine)


def motion(volume: Volume, p: dict, rng: np.random.Generator) -> Volume:
    """Movements during the acquisition (TorchIO ``Motion``): the case's seeded rotations and translations, scaled to
    ``degrees`` and ``translation_mm``, mixed in k-space at their (seeded) times."""
    import torchio as tio

    n = MOTION_MOVEMENTS
    rotations, translations = rng.uniform(-1, 1, (2, n, 3))
    times = (np.arange(1, n + 1) + rng.uniform(-0.3, 0.3, n)) / (n + 1)
    moved = tio.Motion(degrees=rotations * p["degrees"], translation=translations * p["translation_mm"],
                       times=times, image_interpolation="linear")(_torchio_image(volume))
    return _replace(volume, moved.data.numpy())


def ghosting(volume: Volume, p: dict, rng: np.random.Generator) -> Volume:
    """``GHOSTS`` ghosts along a phase-encoding axis (TorchIO ``Ghosting``; the axis a seeded choice of the first two)."""
    import torchio as tio

    axis = int(rng.integers(2))
    ghosted = tio.Ghosting(num_ghosts=GHOSTS, axis=axis, intensity=p["intensity"], restore=0.02)(
        _torchio_image(volume))
    return _replace(volume, ghosted.data.numpy())


# --------------------------------------------------------------------------------------------
# Spatial perturbations: the label moves with the image
# --------------------------------------------------------------------------------------------
def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    x, y, z = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _padded_like_air(image: np.ndarray, move: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``move`` applied to ``image`` with what enters the field of view at the image's minimum (air in CT HU),
    not at 0 (water)."""
    low = float(image.min())
    return move(image - low) + low


def affine(volume: Volume, p: dict, rng: np.random.Generator) -> Volume:
    """A rotation about the image centre by up to ``degrees`` about each axis and a translation by up to
    ``translation_fov`` of the field of view along each axis, in millimetres (MONAI ``Affine``)."""
    from monai.transforms import Affine

    angles, shift = rng.uniform(-1, 1, (2, 3))
    spacing = np.asarray(volume.spacing, dtype=np.float64)
    fov = spacing * np.asarray(volume.image.shape[1:])
    to_voxels = np.diag(1 / spacing)
    matrix = np.eye(4)
    matrix[:3, :3] = to_voxels @ _rotation(angles * p["degrees"]) @ np.diag(spacing)
    matrix[:3, 3] = to_voxels @ (shift * p["translation_fov"] * fov)

    def move(values: np.ndarray, mode: str) -> np.ndarray:
        return np.asarray(Affine(affine=matrix, mode=mode, padding_mode="zeros", image_only=True)(
            torch.from_numpy(np.ascontiguousarray(values))), dtype=np.float32)

    image = _padded_like_air(volume.image, lambda v: move(v, "bilinear"))
    label = None if volume.label is None else move(volume.label, "nearest")
    return _replace(volume, image, label)


def elastic(volume: Volume, p: dict, rng: np.random.Generator) -> Volume:
    """A smooth deformation (TorchIO ``ElasticDeformation``): a B-spline grid of 7 control points per axis, the
    inner ones displaced by up to ``displacement`` of the grid's spacing (folding starts at 0.5)."""
    import torchio as tio

    inner = CONTROL_POINTS - 2 * LOCKED_BORDERS
    field = np.zeros((CONTROL_POINTS,) * 3 + (3,))
    unit = rng.uniform(-1, 1, (inner,) * 3 + (3,))
    grid_spacing = np.asarray(volume.spacing) * np.asarray(volume.image.shape[1:]) / (CONTROL_POINTS - 3)
    inside = slice(LOCKED_BORDERS, CONTROL_POINTS - LOCKED_BORDERS)
    field[inside, inside, inside] = unit * grid_spacing * p["displacement"]
    subject = tio.Subject(image=_torchio_image(volume))
    if volume.label is not None:
        subject.add_image(tio.LabelMap(tensor=torch.from_numpy(volume.label.copy()), affine=subject.image.affine),
                          "label")
    deform = tio.ElasticDeformation(control_points=field, max_displacement=tuple(np.abs(field).max((0, 1, 2))),
                                    image_interpolation="linear", label_interpolation="nearest")
    moved = deform(subject)
    label = None if volume.label is None else moved["label"].data.numpy().astype(volume.label.dtype)
    return _replace(volume, moved.image.data.numpy(), label)  # what enters the view: the image's minimum


# --------------------------------------------------------------------------------------------
# The catalogue
# --------------------------------------------------------------------------------------------
def _grid(**values: Sequence[float]) -> tuple[dict, ...]:
    """Five levels from one sequence of five values per parameter."""
    return tuple(dict(zip(values, row, strict=True)) for row in zip(*values.values(), strict=True))


BOTH = ("mr", "ct")
PERTURBATIONS: dict[str, Perturbation] = {p.name: p for p in (
    Perturbation("noise", "Rician noise", ("mr",), False, _grid(std=[0.16, 0.32, 0.48, 0.64, 0.8]),
                 "std: the noise's standard deviation over the image's (MONAI RandRicianNoise, relative)", rician_noise),
    Perturbation("bias_field", "Bias field", ("mr",), False, _grid(coefficients=[0.3, 0.6, 0.9, 1.2, 1.5]),
                 "coefficients: the largest coefficient of a degree-3 polynomial log field (MONAI RandBiasField)",
                 bias_field),
    Perturbation("contrast_compression", "Gamma < 1", ("mr",), False, _grid(gamma=[0.86, 0.72, 0.58, 0.44, 0.3]),
                 "gamma: the exponent of the intensity curve, intensities scaled to [0, 1] (MONAI AdjustContrast)",
                 gamma),
    Perturbation("contrast_expansion", "Gamma > 1", ("mr",), False, _grid(gamma=[1.4, 1.8, 2.2, 2.6, 3.0]),
                 "gamma: the exponent of the intensity curve, intensities scaled to [0, 1] (MONAI AdjustContrast)",
                 gamma),
    Perturbation("motion", "Motion", ("mr",), False,
                 _grid(degrees=[1, 2, 3, 4, 5], translation_mm=[2, 4, 6, 8, 10]),
                 "4 movements during the acquisition, each a rotation of up to degrees and a translation of up to "
                 "translation_mm about each axis, mixed in k-space (TorchIO Motion)", motion),
    Perturbation("ghosting", "Ghosting", ("mr",), False,
                 _grid(intensity=[0.5, 1.0, 1.5, 2.0, 2.5]),
                 "4 ghosts along a phase-encoding axis; intensity: their strength (TorchIO Ghosting)", ghosting),
    Perturbation("noise_hu", "Gaussian noise", ("ct",), False, _grid(std_hu=[10, 20, 40, 60, 80]),
                 "std_hu: the noise's standard deviation in HU (MONAI RandGaussianNoise); a standard-dose scan has "
                 "10 to 15 HU", gaussian_noise),
    Perturbation("hu_offset", "HU offset", ("ct",), False, _grid(offset_hu=[5, 10, 20, 40, 80]),
                 "offset_hu: added to every voxel, a miscalibrated scanner or another tube voltage (MONAI "
                 "ShiftIntensity)", hu_offset),
    Perturbation("smoothing", "Smoothing", BOTH, False, _grid(sigma_mm=[0.8, 1.6, 2.4, 3.2, 4.0]),
                 "sigma_mm: the Gaussian's standard deviation in mm (MONAI GaussianSmooth)", smoothing),
    Perturbation("thick_slices", "Thick slices", BOTH, False, _grid(factor=[2, 3, 4, 6, 8]),
                 "factor: slabs of that many slices averaged along the slice axis (the largest spacing; a seeded "
                 "choice when isotropic), then interpolated back linearly", thick_slices),
    Perturbation("affine", "Rotation and translation", BOTH, True,
                 _grid(degrees=[6, 12, 18, 24, 30], translation_fov=[0.02, 0.04, 0.06, 0.08, 0.1]),
                 "degrees: rotation about each axis up to; translation_fov: translation along each axis up to that "
                 "share of the field of view (MONAI Affine, label nearest)", affine),
    Perturbation("elastic", "Elastic deformation", BOTH, True,
                 _grid(displacement=[0.08, 0.16, 0.24, 0.32, 0.4]),
                 "displacement: control points of a 7-point B-spline grid moved by up to that share of the grid's "
                 "spacing (TorchIO ElasticDeformation, label nearest)", elastic),
)}


def for_modality(modality: str) -> list[str]:
    """The names of the perturbations that make sense for ``modality`` (mr or ct), in the catalogue's order."""
    return [name for name, p in PERTURBATIONS.items() if modality in p.modalities]
