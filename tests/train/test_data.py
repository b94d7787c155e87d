"""The training pipeline is built from the config's data section."""
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Rand3DElasticd, RandFlipd

from medft.config import load_config
from medft.data.manifest import load_manifest
from medft.errors import MedftError, find_user_error
from medft.train.data import build_loaders
from medft.train.preprocessing import run_preprocessing
from tests.conftest import copy_case, rewrite_nifti, sample_case
from tests.train.helpers import TRAIN_IDS, make_config, two_series_image


def test_the_train_transform_applies_the_configured_augmentation(tmp_path):
    def steps(**changes):
        config = load_config(make_config(tmp_path, **changes))
        transform = build_loaders(config, load_manifest(config.data.manifest), run_preprocessing(config),
                                  torch.Generator().manual_seed(0), 1)[2]
        flips = [t.flipper.spatial_axis for t in transform.transforms if isinstance(t, RandFlipd)]
        return flips, [t.prob for t in transform.transforms if isinstance(t, Rand3DElasticd)]

    assert steps() == ([0], [])
    assert steps(**{"data.flip_axes": [0, 2], "data.elastic": 0.3}) == ([0, 2], [0.3])
    assert steps(**{"data.augmentation": "none", "data.elastic": 0.3}) == ([], [])


def _loaders(tmp_path, **changes):
    config = load_config(make_config(tmp_path, **changes))
    return build_loaders(config, load_manifest(config.data.manifest), run_preprocessing(config), torch.Generator().manual_seed(0), 1)


def test_label_values_beyond_the_runs_classes_name_each_case_and_the_fix(tmp_path):
    """data.class_names shorter than the labels used to end the first step with "internal error
    (RuntimeError: index 2 is out of bounds for dimension 1 with size 2)"."""
    with pytest.raises(MedftError) as err:
        _loaders(tmp_path, **{"data.class_names": ["background", "hippocampus"]})
    lines = str(err.value).splitlines()
    assert [line.split(":")[0] for line in lines] == [f"ERROR case {c}" for c in TRAIN_IDS]
    assert "label values [2] are outside the run's classes 0..1 (background, hippocampus)" in lines[0]
    assert "Fix: give every class a name in data.class_names" in lines[0] and "data.label_map" in lines[0]
    _train, val, _ = _loaders(tmp_path, **{"data.class_names": ["background", "hippocampus"], "data.label_map": {2: 1}})
    assert set(val.dataset[0]["label"].unique().tolist()) <= {0, 1}


def test_a_data_error_in_a_loader_worker_reaches_the_run_as_itself(tmp_path):
    """With data.cache false and data.num_workers > 0 the cases load in worker processes, whose errors
    torch re-raises as a RuntimeError holding the worker's traceback: an "internal error"."""
    train, _, _ = _loaders(tmp_path, **{"data.class_names": ["background", "hippocampus"], "data.cache": False,
                                        "data.num_workers": 1, "train.batch_size": 1})
    with pytest.raises(MedftError) as err:
        next(iter(train))
    message = str(err.value)
    assert re.fullmatch(r"ERROR case hippocampus_33\d: \S+labelsTr/hippocampus_33\d.nii.gz: label values \[2\] are "
                        r"outside the run's classes 0..1 \(background, hippocampus\). Fix: .*", message), message
    assert find_user_error(err.value) is err.value


@pytest.mark.parametrize("changes", [{}, {"data.cache": False, "data.num_workers": 1, "train.batch_size": 1}],
                         ids=["caching", "loader-worker"])
def test_a_case_error_names_the_dicom_series_on_the_console_but_not_in_its_public_form(tmp_path, changes):
    config = load_config(make_config(tmp_path, **changes))
    folder, uids = two_series_image(tmp_path)
    with pytest.raises(MedftError) as err:
        train, _, _ = build_loaders(config, load_manifest(config.data.manifest), run_preprocessing(config),
                                    torch.Generator().manual_seed(0), 1)
        list(train)
    error = find_user_error(err.value)
    assert all(uid in str(error) for uid in uids)
    assert f"case {TRAIN_IDS[1]}: {folder}: holds 2 DICOM series and medft does not merge series. Fix: " in error.public
    assert not [uid for uid in uids if uid in error.public]


def test_a_case_that_fails_while_caching_ends_the_run_with_exit_1_not_an_abort(tmp_path):
    """CacheDataset loads in a thread pool; an error there ended the pool while other threads were
    still loading, and the process then aborted at exit (134, "terminate called without an active
    exception") after printing the error."""
    config = make_config(tmp_path)
    manifest = (tmp_path / "manifest.csv").read_text()
    image = copy_case(TRAIN_IDS[1], tmp_path / "nan")[0]
    data = nib.load(image).get_fdata().astype(np.float32)
    data[5, 5, 5] = np.nan
    rewrite_nifti(image, data)
    (tmp_path / "manifest.csv").write_text(manifest.replace(str(sample_case(TRAIN_IDS[1])[0]), str(image)))
    script = ("import sys, torch\nfrom medft.config import load_config\nfrom medft.data.manifest import load_manifest\n"
              "from medft.errors import MedftError\nfrom medft.train.data import build_loaders\nfrom medft.train.preprocessing import "
              "run_preprocessing\n"
              f"config = load_config({str(config)!r})\n"
              "try:\n    build_loaders(config, load_manifest(config.data.manifest), run_preprocessing(config), torch.Generator(), 1)\n"
              "except MedftError as exc:\n    print(exc)\n    sys.exit(1)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert f"ERROR case {TRAIN_IDS[1]}: {image}: 1 voxel(s) of the image are NaN or infinite" in result.stdout
