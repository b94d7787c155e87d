"""Domain shift: the pretrained bundle zero-shot on a second "site" against fine-tuned on 5 and 20
of that site's cases.

Site B is made (once per kind of shift) from cases of ``data_manifests/bench_site_b_source.csv``: its 20 held-back cases
(used by no other benchmark) become site B's training cases, and the 30 cases of the fixed
validation set become its validation set (the same patients "scanned again" at site B, so the
cost of the shift is measured on the same cases). Each image gets a scanner-like change
(``SHIFTS``, written out as NIfTI files under ``OUT/site_b_<shift>/``):

1. intensities scaled to [0, 1] (by the 99.5th percentile, clipped), then either a gamma curve,
   I ** gamma (``gamma``: a different contrast response, a moderate shift), or an inversion,
   1 - I (``inversion``: a different sequence's contrast, a severe shift);
2. a smooth multiplicative bias field (random low-order polynomial in x, y, z per case,
   exp(+-amplitude) at most);
3. lower through-plane resolution: along the third stored axis, slabs of ``slab`` slices
   averaged (thick slices) and interpolated back to the original 1 mm grid, so the labels stay
   valid voxel for voxel;
4. Rician noise (Gaussian noise on real and imaginary parts, then the magnitude);
5. stored as float32, rescaled to 0..1000.

The task is the bundle's own, the whole hippocampus (anterior and posterior merged: site B's
labels are written merged), so that the bundle can be evaluated zero-shot. Reported, all by
``medft.evaluate.run.evaluate`` (Dice with 95% bootstrap intervals) and medft's paired
bootstrap differences on the same cases:

- the bundle zero-shot on the 30 validation cases as they are (site A) and at site B;
- the bundle fine-tuned on the first 5 and on all 20 site-B training cases (no freezing, lr
  1e-3 for every layer: the head is the pretrained one, the task is unchanged);
- the same network trained from random weights on those cases (lr 3e-3), to show what the
  pretraining itself is worth at the new site.

Run: ``.venv/bin/python benchmarks/domain_shift.py [--quick] [--epochs 40] [--shifts gamma inversion] [--out DIR] [--device auto]``
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from common import (
    BUNDLE,
    MANIFESTS,
    WHOLE_CLASSES,
    WORKER_TASKS,
    Benchmark,
    check_manifests,
    dice_of,
    fmt_dice,
    is_worker,
    markdown_table,
    parser,
    read_rows,
    run_config,
    worker_main,
    write_manifest,
)

FULL_EPOCHS = 40
COMMON = {"bias_amplitude": 0.4, "slab": 3, "noise_sd": 0.04}
SHIFTS = {"gamma": {"gamma": 2.0, "invert": False, **COMMON}, "inversion": {"gamma": 1.0, "invert": True, **COMMON}}
SEED = 7
SITE_B_TRAIN_SIZES = (5, 20)


# --------------------------------------------------------------------------------------------
# Making site B
# --------------------------------------------------------------------------------------------
def shift_image(image: np.ndarray, rng: np.random.Generator, gamma: float, invert: bool, bias_amplitude: float,
                slab: int, noise_sd: float) -> np.ndarray:
    """One image as site B's scanner would show it (see the module docstring)."""
    from scipy.ndimage import zoom

    x = np.clip(image.astype(np.float64) / max(np.percentile(image, 99.5), 1e-6), 0, 1)
    x = 1 - x if invert else x ** gamma
    x = x * _bias_field(x.shape, rng, bias_amplitude)
    x = _thick_slices(x, slab, zoom)
    noise = rng.normal(0, noise_sd, size=(2, *x.shape))
    x = np.sqrt((x + noise[0]) ** 2 + noise[1] ** 2)
    return (x / max(x.max(), 1e-6) * 1000).astype(np.float32)


def _bias_field(shape, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    axes = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    terms = [axes[0], axes[1], axes[2], axes[0] * axes[1], axes[1] * axes[2], axes[0] * axes[2],
             axes[0] ** 2, axes[1] ** 2, axes[2] ** 2]
    field = sum(rng.uniform(-1, 1) * t for t in terms)
    field = field / max(np.abs(field).max(), 1e-6) * amplitude
    return np.exp(field)


def _thick_slices(x: np.ndarray, slab: int, zoom) -> np.ndarray:
    if slab <= 1:
        return x
    n = x.shape[2]
    padded = np.pad(x, ((0, 0), (0, 0), (0, (-n) % slab)), mode="edge")
    thick = padded.reshape(x.shape[0], x.shape[1], -1, slab).mean(axis=3)
    back = zoom(thick, (1, 1, padded.shape[2] / thick.shape[2]), order=1, mode="nearest", grid_mode=True)
    return back[:, :, :n]


def make_site_b(out: Path, shift: str, n_train: int | None = None, n_val: int | None = None) -> dict:
    """Write site B's images and merged labels and its manifests; also site A's validation cases
    with merged labels (the same images), for the zero-shot reference."""
    import nibabel as nib

    source = MANIFESTS / "bench_site_b_source.csv"
    rows = read_rows(source)
    train = [r for r in rows if r["split"] == "train"][:n_train]
    val = [r for r in rows if r["split"] == "val"][:n_val]
    site_b, site_a = out / f"site_b_{shift}", out / "site_a_whole"
    for folder in (site_b / "imagesTr", site_b / "labelsTr", site_a / "labelsTr"):
        folder.mkdir(parents=True, exist_ok=True)
    b_rows, a_rows = [], []
    for row in train + val:
        case_id = row["case_id"]
        rng = np.random.default_rng([SEED, int(case_id.rsplit("_", 1)[1])])
        image = nib.load(source.parent / row["image"])
        label = nib.load(source.parent / row["label"])
        shifted = shift_image(np.asarray(image.dataobj), rng, **SHIFTS[shift])
        image_b = nib.Nifti1Image(shifted, image.affine, image.header)
        image_b.set_data_dtype(np.float32)
        nib.save(image_b, site_b / "imagesTr" / f"{case_id}.nii.gz")
        merged = (np.asarray(label.dataobj) > 0).astype(np.uint8)
        label_whole = nib.Nifti1Image(merged, label.affine, label.header)
        label_whole.set_data_dtype(np.uint8)
        nib.save(label_whole, site_b / "labelsTr" / f"{case_id}.nii.gz")
        b_rows.append((case_id, site_b / "imagesTr" / f"{case_id}.nii.gz", site_b / "labelsTr" / f"{case_id}.nii.gz",
                       row["split"], "B"))
        if row["split"] == "val":
            nib.save(label_whole, site_a / "labelsTr" / f"{case_id}.nii.gz")
            a_rows.append((case_id, source.parent / row["image"], site_a / "labelsTr" / f"{case_id}.nii.gz", "val", "A"))
    manifests = {"site_b_val": write_manifest(site_b / "site_b_val.csv", [r for r in b_rows if r[3] == "val"], WHOLE_CLASSES),
                 "site_a_val": write_manifest(site_a / "site_a_val.csv", a_rows, WHOLE_CLASSES)}
    b_train = [r for r in b_rows if r[3] == "train"]
    b_val = [r for r in b_rows if r[3] == "val"]
    for n in SITE_B_TRAIN_SIZES:
        if n <= len(b_train) or n == SITE_B_TRAIN_SIZES[0]:
            manifests[f"site_b_train{n}"] = write_manifest(site_b / f"site_b_train{n}.csv", b_train[:n] + b_val, WHOLE_CLASSES)
    return manifests


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------
def main() -> int:
    p = parser("domain_shift", __doc__)
    p.add_argument("--epochs", type=int, default=None, help=f"epochs of every training run (default {FULL_EPOCHS}; quick: 2)")
    p.add_argument("--shifts", nargs="+", choices=tuple(SHIFTS), default=None,
                   help="kinds of site B to make (default: all; quick: gamma)")
    args = p.parse_args()
    bench = Benchmark("domain_shift", args)
    check_manifests()
    epochs = args.epochs or (2 if args.quick else FULL_EPOCHS)
    shifts = args.shifts or (("gamma",) if args.quick else tuple(SHIFTS))
    sizes = (5,) if args.quick else SITE_B_TRAIN_SIZES

    evaluations, differences, manifests = {}, {}, {}
    for shift in shifts:
        made = make_site_b(bench.out, shift, n_train=5 if args.quick else None, n_val=3 if args.quick else None)
        manifests[shift] = {k: str(v) for k, v in made.items()}
        print(f"  site B ({shift}) written to {bench.out / f'site_b_{shift}'}", flush=True)
        if "zero_shot_site_a" not in evaluations:
            evaluations["zero_shot_site_a"] = _evaluate_bundle(bench, made["site_a_val"], "zero_shot_site_a", "A", None)
        evaluations[f"zero_shot_{shift}"] = _evaluate_bundle(bench, made["site_b_val"], f"zero_shot_{shift}", "B", shift)
        for n in sizes:
            for init in ("finetune", "scratch"):
                name = f"{init}_{shift}_n{n}"
                config = run_config(made[f"site_b_train{n}"], init, epochs, bench.device,
                                    max_steps=2 if args.quick else None,
                                    optim={"lr": 1e-3, "head_lr": 1e-3, "warmup_epochs": 1} if init == "finetune" else None)
                result = bench.isolated(__file__, {
                    "task": "train_and_evaluate", "name": name, "config": config, "run_dir": str(bench.out / "runs" / name),
                    "eval_manifest": str(made["site_b_val"]), "eval_dir": str(bench.out / "eval" / name),
                }, name)
                label = "bundle, fine-tuned at site B" if init == "finetune" else "random weights, trained at site B"
                evaluations[name] = {"model": label, "site": "B", "shift": shift, "train_cases": n,
                                     "train_seconds": sum(result["timing"]["train_seconds"]), **_digest(result)}
        differences[shift] = _differences(bench.out, shift, sizes)

    results = {"epochs": epochs, "shifts": {s: SHIFTS[s] for s in shifts}, "evaluations": evaluations,
               "differences": differences, "manifests": manifests}
    bench.finish(results, _markdown(results))
    return 0


def _evaluate_bundle(bench: Benchmark, manifest: Path, name: str, site: str, shift: str | None) -> dict:
    result = bench.isolated(__file__, {"task": "evaluate_model", "name": name, "model": str(BUNDLE),
                                       "manifest": str(manifest), "eval_dir": str(bench.out / "eval" / name)}, name)
    return {"model": "bundle, zero-shot", "site": site, "shift": shift, "train_cases": 0, **_digest(result)}


def _digest(result: dict) -> dict:
    return {"dice": dice_of(result["eval"], "hippocampus"), "n_val_cases": result["eval"]["n_cases"]}


def _differences(out: Path, shift: str, sizes) -> dict:
    from medft.evaluate.summary import paired_difference, read_per_case

    def rows(name):
        return read_per_case(out / "eval" / name / "per_case.csv")

    names = ["background", "hippocampus"]
    pairs = {"site B - site A (bundle, zero-shot)": ("zero_shot_site_a", f"zero_shot_{shift}")}
    for n in sizes:
        pairs[f"fine-tuned on {n} - zero-shot (site B)"] = (f"zero_shot_{shift}", f"finetune_{shift}_n{n}")
        pairs[f"fine-tuned on {n} - scratch on {n} (site B)"] = (f"scratch_{shift}_n{n}", f"finetune_{shift}_n{n}")
    return {label: paired_difference(rows(a), rows(b), names)["differences"]["hippocampus"] for label, (a, b) in pairs.items()}


def _markdown(results: dict) -> str:
    rows = [[e["model"], e["site"] + (f" ({e['shift']})" if e["shift"] else ""), e["train_cases"], fmt_dice(e["dice"])]
            for e in results["evaluations"].values()]
    table = markdown_table(["model", "evaluated at", "site-B training cases", "whole-hippocampus Dice [95% CI]"], rows)
    diff_rows = [[shift, label, f"{d['mean_diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
                  if d["mean_diff"] is not None and d["ci95"][0] is not None else "n/a", d["n_common"]]
                 for shift, diffs in results["differences"].items() for label, d in diffs.items()]
    diff_table = markdown_table(["site B", "paired difference", "Dice [95% CI]", "cases"], diff_rows)
    n_val = next(iter(results["evaluations"].values()))["n_val_cases"]
    shifts = "; ".join(f"{name}: " + (f"gamma {v['gamma']}" if not v["invert"] else "inverted intensities")
                       + f", bias field exp(+-{v['bias_amplitude']}), {v['slab']}-slice slabs, Rician noise sd {v['noise_sd']}"
                       for name, v in results["shifts"].items())
    return (f"Domain shift ({shifts}); {results['epochs']} epochs per training run; whole-hippocampus Dice on the "
            f"same {n_val} validation cases at each site\n\n{table}\n\n{diff_table}")


if __name__ == "__main__":
    if is_worker():
        worker_main(WORKER_TASKS)
        sys.exit(0)
    sys.exit(main())
