"""A bundle made by others, as a user meets one: written and trained with plain MONAI, nothing of medft.

Its network was trained at 1.5 mm with intensities scaled to 0..1 by the 1st and 99th percentiles,
and its inference config inverts the resampling (``Invertd``), as Model Zoo bundles do. ``monai_predict``
is MONAI's own inference of a bundle (ConfigParser: preprocessing, network, inferer, postprocessing),
the reference medft must reproduce.
"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset
from monai.losses import DiceCELoss
from monai.transforms import (
    Compose,
    DivisiblePadd,
    EnsureChannelFirstd,
    LoadImaged,
    Orientationd,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)

RAS = [["L", "R"], ["P", "A"], ["I", "S"]]
CLASSES = {"0": "background", "1": "anterior", "2": "posterior"}
INFERENCE = {
    "imports": ["$import torch"],
    "bundle_root": ".",
    "image_key": "image",
    "pixdim": [1.5, 1.5, 1.5],
    "device": "$torch.device('cpu')",
    "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                    "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1},
    "network": "$@network_def.to(@device)",
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "@image_key", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
        {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS", "labels": RAS},
        {"_target_": "Spacingd", "keys": "@image_key", "pixdim": "@pixdim", "mode": "bilinear"},
        {"_target_": "ScaleIntensityRangePercentilesd", "keys": "@image_key", "lower": 1, "upper": 99,
         "b_min": 0.0, "b_max": 1.0, "clip": True},
        {"_target_": "EnsureTyped", "keys": "@image_key", "dtype": "$torch.float32"},
    ]},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "sw_batch_size": 2, "overlap": 0.25,
                "mode": "gaussian"},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "@image_key",
         "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
    ]},
}


def make_foreign_bundle(root: Path, cases: list[tuple[Path, Path]], steps: int = 60, seed: int = 0) -> Path:
    """Write the bundle to ``root`` with weights trained ``steps`` steps on ``cases`` (image, label) by plain MONAI."""
    torch.manual_seed(seed)
    network = ConfigParser(json.loads(json.dumps(INFERENCE))).get_parsed_content("network_def")
    keys = ["image", "label"]
    train = Compose([
        LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys), Orientationd(keys, axcodes="RAS", labels=RAS),
        Spacingd(keys, pixdim=INFERENCE["pixdim"], mode=("bilinear", "nearest")),
        ScaleIntensityRangePercentilesd("image", lower=1, upper=99, b_min=0.0, b_max=1.0, clip=True),
        DivisiblePadd(keys, k=8),
    ])
    loader = DataLoader(Dataset([{"image": str(i), "label": str(lab)} for i, lab in cases], train), batch_size=1, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    network.train()
    done = 0
    while done < steps:
        for batch in loader:
            optimizer.zero_grad()
            loss = loss_fn(network(batch["image"]), batch["label"])
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    for sub in ("configs", "models", "docs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "configs" / "inference.json").write_text(json.dumps(INFERENCE, indent=1))
    (root / "configs" / "metadata.json").write_text(json.dumps({
        "name": "foreign_hippocampus", "version": "0.1.0",
        "network_data_format": {"inputs": {"image": {"spatial_shape": [32, 32, 32]}},
                                "outputs": {"pred": {"channel_def": CLASSES}}}}))
    torch.save(network.state_dict(), root / "models" / "model.pt")
    (root / "docs" / "README.md").write_text("# foreign_hippocampus\nTrained with plain MONAI for medft's tests.\n")
    (root / "LICENSE").write_text("MIT\n")
    return root


def monai_predict(bundle: Path, image: Path | str) -> np.ndarray:
    """MONAI's own inference of ``bundle`` on one image: the labels on the voxel grid of the file as stored."""
    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "inference.json")
    parser["bundle_root"] = str(bundle)
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    network.eval()
    data = parser.get_parsed_content("preprocessing")({"image": str(image)})
    with torch.no_grad():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], network)[0]
    return np.asarray(parser.get_parsed_content("postprocessing")(data)["pred"][0]).astype(np.uint8)


def stored_otherwise(image: Path, label: Path | None, out: Path, spacing=(0.9, 0.9, 1.6)) -> tuple[Path, Path | None]:
    """The case with another voxel spacing (same voxels, new affine) and stored in another axis order
    (x and y swapped, y and z reversed): a scanner's other conventions."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in (image, label):
        if path is None:
            written.append(None)
            continue
        # axis 0 becomes axis 1, axis 1 reversed becomes axis 0, axis 2 reversed stays
        turned = nib.load(path).as_reoriented(np.array([[1, 1], [0, -1], [2, -1]]))
        affine = turned.affine.copy()
        affine[:3, :3] = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0) * np.asarray(spacing)
        target = out / path.name
        nib.save(nib.Nifti1Image(np.asanyarray(turned.dataobj), affine), target)
        written.append(target)
    return written[0], written[1]
