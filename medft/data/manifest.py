"""Manifests: the cases of a dataset, read from a CSV file, an MSD dataset.json or an nnU-Net folder.

Every form becomes one :class:`Manifest`, the in-memory dataset type that later stages use.
Parsing collects every problem it finds (:func:`read_manifest`) so that ``check-data`` can
report them all in one run; :func:`load_manifest` is the strict form for commands that train.
"""
from __future__ import annotations

import csv
import json
import logging
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from medft.data.splits import SPLITS, assign_splits
from medft.errors import DataError, MedftError, Problem

log = logging.getLogger("medft.data")

CSV_COLUMNS = ("case_id", "image", "label", "split", "site", "patient_id", "series_uid")
REQUIRED_CSV_COLUMNS = ("case_id", "image")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class Case:
    """One case: its image (one path per channel, or a DICOM series folder) and optional label."""

    case_id: str
    image: tuple[Path, ...]
    label: Path | None = None
    split: str | None = None
    site: str = ""
    patient_id: str = ""
    series_uid: str | None = None

    @property
    def is_dicom(self) -> bool:
        return len(self.image) == 1 and self.image[0].is_dir()

    @property
    def group(self) -> str:
        """The unit that must not be split across train/val/test: the patient, else the case."""
        return self.patient_id or self.case_id

    def record(self) -> dict:
        """The case as a MONAI-style data dictionary of plain strings (collatable, safe for workers);
        ``label`` and ``series_uid`` are left out when the case has none."""
        record = {"case_id": self.case_id, "image": [str(p) for p in self.image], "site": self.site}
        if self.label:
            record["label"] = str(self.label)
        if self.series_uid:
            record["series_uid"] = self.series_uid
        return record


@dataclass(frozen=True)
class LabelClass:
    """One label class as a classes file declares it: ``"1": "anterior"``, or
    ``"1": {"name": "anterior", "aliases": ["Hippocampus anterior"], "code": {...}, "category": {...}}``.

    ``aliases``: other names a DICOM SEG segment or RTSTRUCT ROI of this class may carry. ``code`` and
    ``category``: coded concepts (``{"value": "...", "scheme": "SCT", "meaning": "..."}``), the segmented
    property type and category a DICOM SEG of the predictions declares for the class."""

    name: str
    aliases: tuple[str, ...] = ()
    code: dict | None = None
    category: dict | None = None


@dataclass
class Manifest:
    """The cases of one dataset and its label classes (index = label value)."""

    path: Path
    cases: list[Case]
    classes: list[LabelClass] = field(default_factory=list)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def segment_names(self) -> dict[int, tuple[str, ...]]:
        """Foreground class -> the names its segments (DICOM SEG) or ROIs (RTSTRUCT) may carry: its name and aliases."""
        return {i: (c.name, *c.aliases) for i, c in enumerate(self.classes) if i > 0}

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self):
        return iter(self.cases)

    def split(self, name: str | None) -> list[Case]:
        """The cases of one split; ``None`` gives all cases."""
        if name is not None and name not in SPLITS:
            raise DataError(
                f"unknown split {name!r}", f"use one of {', '.join(SPLITS)}", file=self.path
            )
        return [c for c in self.cases if name is None or c.split == name]

    def records(self, split: str | None = None) -> list[dict]:
        return [c.record() for c in self.split(split)]


def load_manifest(path: str | Path) -> Manifest:
    """Read a manifest and raise one DataError listing every problem, if there are any; log its warnings."""
    manifest, problems = read_manifest(path)
    errors = [p for p in problems if p.severity == "error"]
    for warning in (p for p in problems if p.severity != "error"):
        log.warning("%s", warning)
    if errors:
        lines = "\n".join(str(p) for p in errors)
        raise MedftError(
            f"{manifest.path}: {len(errors)} problem(s) in the manifest; correct them "
            f"(`medft check-data {path}` checks the files too):\n{lines}"
        )
    return manifest


def read_manifest(path: str | Path) -> tuple[Manifest, list[Problem]]:
    """Read any manifest form; return it with the problems found in the manifest itself.

    A folder whose dataset.json lists its images (MSD) is read as that dataset.json, any other
    folder as an nnU-Net raw folder. A manifest that cannot be read at all raises DataError.
    Cases without a split get one (deterministically, patients kept whole) after the problems
    are collected.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(
            "no such manifest", "give a CSV manifest, an MSD dataset.json or an nnU-Net raw folder", file=path
        )
    if path.is_dir() and _is_msd_folder(path):
        path = path / "dataset.json"
    elif path.is_file() and path.name == "dataset.json" and _is_nnunet_json(path):
        path = path.parent  # nnU-Net's dataset.json describes the folder beside it, which holds the cases
    suffix = path.suffix.lower()  # Windows tools write .CSV as often as .csv
    if path.is_dir():
        manifest, problems = _read_nnunet(path)
    elif suffix == ".json":
        manifest, problems = _read_msd(path)
    elif suffix == ".csv":
        manifest, problems = _read_csv(path)
    else:
        raise DataError(
            f"unknown manifest type {path.suffix!r}",
            "give a .csv manifest, an MSD dataset.json or an nnU-Net raw folder",
            file=path,
        )
    problems += _case_problems(manifest)
    given = manifest.cases
    manifest.cases = assign_splits(given)
    problems += _assigned_split_problems(manifest.path, given, manifest.cases)
    return manifest, problems


def _assigned_split_problems(source: Path, given: list[Case], assigned: list[Case]) -> list[Problem]:
    """A warning for each case that medft put in another split than its patient's other cases: an
    unlabelled case (only ever a test case) of a patient whose cases the manifest puts in train or val."""
    splits: dict[str, set[str]] = {}
    for case in assigned:
        splits.setdefault(case.group, set()).add(case.split)
    problems = []
    for before, after in zip(given, assigned, strict=True):
        others = sorted(splits[after.group] - {after.split})
        if before.split is None and before.label is None and others:  # a labelled one joins its patient's split
            problems.append(Problem(
                f"has no label and no split, so medft puts it in {after.split}, but its patient's other cases are in "
                f"{' and '.join(others)}: its prediction is not one of an unseen patient",
                "leave the case out of the manifest, or give all of the patient's cases the same split",
                file=source, case_id=after.case_id, severity="warning",
            ))
    return problems


def case_id_problem(case_id: str) -> str | None:
    """Why ``case_id`` cannot name a case's output files (``predictions/<case_id>.nii.gz``), or None.

    An id must be non-empty, hold no path separator and no control character, and not start
    with '.' (which also rules out '.' and '..').
    """
    if not case_id:
        return "is empty"
    if "/" in case_id or "\\" in case_id:
        return "holds a path separator ('/' or '\\')"
    if case_id.startswith("."):
        return "starts with '.'"
    if any(unicodedata.category(char) == "Cc" for char in case_id):
        return "holds a control character"
    return None


def _case_problems(manifest: Manifest) -> list[Problem]:
    """Problems between cases: unsafe or duplicate ids, one patient in two splits, missing classes."""
    problems: list[Problem] = []
    seen: set[str] = set()
    case_of_image: dict[tuple, str] = {}
    for case in manifest.cases:
        problems += _unsafe_id_problems(manifest, case)
        if case.case_id in seen:
            problems.append(Problem(
                "duplicate case_id", "give every case a unique case_id", file=manifest.path, case_id=case.case_id
            ))
        seen.add(case.case_id)
        first = case_of_image.setdefault((case.image, case.series_uid), case.case_id)
        if first != case.case_id:
            problems.append(Problem(
                f"the same image as case {first} ({', '.join(str(p) for p in case.image)}): in two splits, the "
                "validation or test Dice of it is a score on training data",
                "list each image once, under one case_id", file=manifest.path, case_id=case.case_id, severity="warning",
            ))
    splits_of_group: dict[str, dict[str, list[str]]] = {}
    for case in manifest.cases:
        if case.split:
            splits_of_group.setdefault(case.group, {}).setdefault(case.split, []).append(case.case_id)
    for by_split in splits_of_group.values():
        if len(by_split) > 1:
            # Name the cases, not the patient: patient ids may come from hospital records.
            where = "; ".join(f"{split}: {', '.join(ids)}" for split, ids in sorted(by_split.items()))
            problems.append(Problem(
                f"one patient's cases are in several splits ({where})",
                "put all cases of a patient in the same split, or leave split empty for medft to assign",
                file=manifest.path,
                case_id=min(min(ids) for ids in by_split.values()),
            ))
    if not manifest.class_names and any(c.label for c in manifest.cases):
        problems.append(Problem(
            "no label classes declared, so label values cannot be checked",
            f"add {_classes_sidecar(manifest.path).name} with {{\"0\": \"background\", \"1\": \"...\"}}",
            file=manifest.path,
            severity="warning",
        ))
    return problems


def _unsafe_id_problems(manifest: Manifest, case: Case) -> list[Problem]:
    """The case's id problem, on the CSV row's manifest or, in an MSD or nnU-Net dataset, on the
    image file whose name gives the id."""
    reason = case_id_problem(case.case_id)
    if reason is None:
        return []
    in_csv = manifest.path.suffix == ".csv"
    return [Problem(
        f"case_id {case.case_id!r} cannot name the case's output files: it {reason}",  # repr escapes control characters
        ("change the case_id in the manifest" if in_csv else "rename the case's image and label files, whose names give the case_id")
        + "; use letters, digits, '-', '_' and '.' (not first)",
        file=manifest.path if in_csv else case.image[0],
    )]


# --- CSV -------------------------------------------------------------------------------------


def _classes_sidecar(csv_path: Path) -> Path:
    return csv_path.with_name(csv_path.stem + ".classes.json")


def _read_csv(path: Path) -> tuple[Manifest, list[Problem]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            table = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read the CSV ({exc})", "save it as UTF-8 CSV with a header row", file=path) from None
    # Rows without any value (blank lines, or the ",,,,," that spreadsheets leave below the data) are no cases.
    table = [(line, [cell.strip() for cell in row]) for line, row in table if any(cell.strip() for cell in row)]
    (_, header), rows = (table[0], table[1:]) if table else ((0, []), [])
    _check_header(path, header, rows)
    problems: list[Problem] = []
    if not rows:
        problems.append(Problem(
            "the manifest has a header but no cases", f"add one row per case: {','.join(CSV_COLUMNS[:6])}", file=path
        ))
    cases: list[Case] = []
    # A trailing comma on every row is a spreadsheet's habit; a row longer than the others is not.
    usual_length = max(len(header), Counter(len(cells) for _, cells in rows).most_common(1)[0][0] if rows else 0)
    for line, cells in rows:
        where = f"{path}:{line}"
        if any(cells[len(header):]) or len(cells) > usual_length:
            # an unquoted comma (in a path) shifts every later value one column to the right
            problems.append(Problem(
                f"the row has {len(cells)} values but the header has {len(header)} columns",
                'put a value that holds a comma (such as a path) in double quotes: "/data/a,b/image.nii.gz"',
                file=where, case_id=dict(zip(header, cells, strict=False)).get("case_id") or None,
            ))
            continue
        # a short row leaves its last columns empty; empty cells past the header are a spreadsheet's trailing commas
        row = {name: value for name, value in zip(header, cells, strict=False) if name}
        case_id, image = row.get("case_id", ""), row.get("image", "")
        if not case_id or not image:
            problems.append(Problem(
                "empty case_id or image", "fill both, or delete the row", file=where, case_id=case_id or None
            ))
            continue
        split = row.get("split", "").lower() or None
        if split and split not in SPLITS:
            problems.append(Problem(
                f"split {row['split']!r} is not one of {', '.join(SPLITS)}",
                "use train, val or test, or leave it empty for medft to assign",
                file=where, case_id=case_id,
            ))
            split = None
        label = row.get("label", "")
        cases.append(Case(
            case_id=case_id,
            image=(_resolve(path.parent, image),),
            label=_resolve(path.parent, label) if label else None,
            split=split,
            site=row.get("site", ""),
            patient_id=row.get("patient_id", ""),
            series_uid=row.get("series_uid") or None,
        ))
    classes, class_problems = _read_classes_file(_classes_sidecar(path))
    return Manifest(path, cases, classes), problems + class_problems


def _check_header(path: Path, header: list[str], rows: list[tuple[int, list[str]]]) -> None:
    """DataError for a header medft cannot read unambiguously: missing, unknown, repeated or unnamed
    columns. An unnamed column is allowed when it is empty in every row (a trailing comma)."""
    fix = f"use the header {','.join(CSV_COLUMNS[:6])} (series_uid is optional)"
    unnamed = [i for i, name in enumerate(header) if not name]
    filled = next(((line, i) for line, cells in rows for i in unnamed if i < len(cells) and cells[i]), None)
    if filled:
        raise DataError(
            f"column {filled[1] + 1} has no name in the header but holds a value on line {filled[0]}",
            f"name the column or delete its values; {fix}", file=path,
        )
    named = [name for name in header if name]
    repeated = sorted({name for name in named if named.count(name) > 1})
    missing = [c for c in REQUIRED_CSV_COLUMNS if c not in named]
    unknown = [c for c in dict.fromkeys(named) if c not in CSV_COLUMNS]
    if not (missing or unknown or repeated):
        return
    parts = [f"missing column(s) {', '.join(missing)}"] if missing else []
    parts += [f"unknown column(s) {', '.join(unknown)}"] if unknown else []
    parts += [f"column(s) {', '.join(repeated)} appear more than once (medft would not know which to use)"] if repeated else []
    separator = next((s for s in (";", "\t", "|") if len(named) == 1 and s in named[0]), None)
    if separator:
        fix = f"save the file with commas between the columns, not {separator!r} (\"CSV UTF-8 (comma delimited)\"); " + fix
    elif repeated:
        fix = "keep one column of each name; " + fix
    raise DataError("; ".join(parts), fix, file=path)


def read_classes_file(path: Path) -> list[LabelClass]:
    """The classes of a classes file (the .classes.json form); DataError naming what is wrong."""
    if not Path(path).is_file():
        raise DataError("no such classes file", f"give a JSON file of the classes: {_CLASS_FORM}", file=path)
    classes, problems = _read_classes_file(Path(path))
    if problems:
        raise DataError(problems[0].problem, problems[0].fix, file=path)
    return classes


def _read_classes_file(path: Path) -> tuple[list[LabelClass], list[Problem]]:
    if not path.exists():
        return [], []
    try:
        labels = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        return [], [Problem(f"cannot read the class names: not UTF-8 text ({exc.reason} at byte {exc.start})",
                            "save it as UTF-8", file=path)]
    except (OSError, json.JSONDecodeError) as exc:
        return [], [Problem(f"cannot read the class names ({exc})", "write it as JSON", file=path)]
    return _label_classes(labels, path)


_CLASS_FORM = ('{"0": "background", "1": "anterior"}, or with the names DICOM segments carry and a code: '
               '{"1": {"name": "anterior", "aliases": ["Hippocampus anterior"], "code": {"value": "...", "scheme": "SCT", '
               '"meaning": "..."}}}')
_CLASS_KEYS = ("name", "aliases", "code", "category")
_CODE_KEYS = ("value", "scheme", "meaning")


def _label_classes(labels: object, source: Path) -> tuple[list[LabelClass], list[Problem]]:
    """Label classes from MSD ``{"0": "background"}``, nnU-Net v2 ``{"background": 0}``, or medft's form with
    aliases and codes (``LabelClass``)."""
    if not isinstance(labels, dict) or not labels:
        return [], [Problem("labels must be a JSON object of label value and name", f"write {_CLASS_FORM}", file=source)]
    pairs: dict[int, LabelClass] = {}
    for key, value in labels.items():
        try:
            if isinstance(value, int) and not isinstance(value, bool):  # nnU-Net v2: name -> value
                pairs[value] = LabelClass(str(key))
            elif isinstance(value, dict):
                pairs[int(key)] = _label_class(key, value, source)
            elif isinstance(value, str):
                pairs[int(key)] = LabelClass(value)
            else:
                raise ValueError
        except (TypeError, ValueError):
            return [], [Problem(
                f"label entry {key!r}: {value!r:.200} is not a label value and a name",
                f"give integer label values 0..N-1 (nnU-Net region labels are not supported): {_CLASS_FORM}",
                file=source,
            )]
        except DataError as exc:
            return [], [exc.details]
    if sorted(pairs) != list(range(len(pairs))):
        return [], [Problem(
            f"label values {sorted(pairs)} are not 0..{len(pairs) - 1}",
            "number the classes 0 (background), 1, 2, ... without gaps",
            file=source,
        )]
    owner: dict[str, int] = {}
    for value in range(1, len(pairs)):
        for name in (pairs[value].name, *pairs[value].aliases):
            first = owner.setdefault(normalised_name(name), value)
            if first != value:
                return [], [Problem(
                    f"the name {name!r} is given to classes {first} and {value}: a DICOM segment of that name would "
                    "belong to both", "give each class its own names and aliases", file=source,
                )]
    return [pairs[i] for i in range(len(pairs))], []


def normalised_name(text: str) -> str:
    """A class, segment or ROI name as medft compares them: case folded, surrounding whitespace stripped and
    inner runs of whitespace collapsed to one space."""
    return " ".join(str(text).split()).casefold()


def _label_class(key: str, entry: dict, source: Path) -> LabelClass:
    """One class in medft's form; DataError naming the key and what is wrong."""
    unknown = [k for k in entry if k not in _CLASS_KEYS]
    name, aliases = entry.get("name"), entry.get("aliases", [])
    if unknown or not isinstance(name, str) or not name.strip():
        what = f"unknown key(s) {', '.join(map(repr, unknown))}" if unknown else "no name"
        raise DataError(f"class {key!r} has {what}", f"give each class as {_CLASS_FORM}", file=source)
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        raise DataError(f"class {key!r}: aliases must be a list of names", 'write "aliases": ["name 1", "name 2"]', file=source)
    return LabelClass(name, tuple(aliases), *(_code(key, field, entry.get(field), source) for field in ("code", "category")))


def _code(key: str, field: str, code: object, source: Path) -> dict | None:
    if code is None:
        return None
    if not isinstance(code, dict) or sorted(code) != sorted(_CODE_KEYS) or not all(isinstance(v, str) and v for v in code.values()):
        raise DataError(
            f"class {key!r}: its {field} {code!r:.200} is not a coded concept",
            f'write "{field}": {{"value": "...", "scheme": "SCT", "meaning": "..."}} (e.g. a SNOMED CT code)',
            file=source,
        )
    return dict(code)


def _resolve(base: Path, value: str) -> Path:
    candidate = Path(value).expanduser()
    return candidate if candidate.is_absolute() else (base / candidate).resolve()


# --- Medical Segmentation Decathlon ----------------------------------------------------------


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))  # a byte order mark is no syntax error
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot read the dataset.json: not UTF-8 text ({exc.reason} at byte {exc.start})",
                        "save it as UTF-8 (JSON files are UTF-8)", file=path) from None
    except OSError as exc:
        raise DataError(f"cannot read the dataset.json ({exc})", "check that the file exists and is readable", file=path) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"cannot read the dataset.json ({exc})", "fix the JSON syntax", file=path) from None


def _entry_image(entry: object) -> str | None:
    """The image path of an MSD entry: ``{"image": ..., "label": ...}`` or a bare path; the first
    channel's path of a MONAI datalist entry whose image is a list of channel files."""
    paths = _entry_images(entry)
    return paths[0] if paths else None


def _entry_images(entry: object) -> list[str]:
    """The image path(s) of an entry: one, or one per channel (``"image": ["t1.nii.gz", "t2.nii.gz"]``)."""
    image = entry.get("image") if isinstance(entry, dict) else entry
    if isinstance(image, str) and image:
        return [image]
    if isinstance(image, list) and image and all(isinstance(p, str) and p for p in image):
        return list(image)
    return []


def _is_nnunet_json(path: Path) -> bool:
    """Whether ``path`` is the dataset.json of an nnU-Net raw folder (its cases are the folder's
    imagesTr/ files, not entries of the JSON): imagesTr/ beside it holds channel files (CASE_0000...)
    or the JSON is nnU-Net v2's, and none of the images it lists (nnU-Net v1's MSD-style list) exists."""
    images = path.parent / "imagesTr"
    if not images.is_dir() or _is_msd_folder(path.parent):
        return False
    spec = _read_json(path)
    v2 = isinstance(spec, dict) and ("file_ending" in spec or "channel_names" in spec)
    return v2 or any(images.glob("*_0000.*"))


def _is_msd_folder(folder: Path) -> bool:
    """Whether the folder's dataset.json is an MSD one whose training images exist as listed.

    nnU-Net v2's dataset.json lists no images ("channel_names", "numTraining", "file_ending");
    nnU-Net v1's has MSD's "training" list, but names the images without the _0000 channel
    suffix that the files in imagesTr/ carry, so none exists as listed.
    """
    spec_path = folder / "dataset.json"
    if not spec_path.is_file():
        return False
    spec = _read_json(spec_path)
    training = spec.get("training") if isinstance(spec, dict) else None
    images = [_entry_image(entry) for entry in training] if isinstance(training, list) else []
    return any(image and _resolve(folder, image).is_file() for image in images)


def _read_msd(path: Path) -> tuple[Manifest, list[Problem]]:
    spec = _read_json(path)
    if not isinstance(spec, dict) or not isinstance(spec.get("training"), list):
        raise DataError(
            "an MSD dataset.json needs a 'training' list of {image, label}",
            "give an MSD dataset.json, or a CSV manifest",
            file=path,
        )
    problems: list[Problem] = []
    cases: list[Case] = []
    test = spec.get("test") or []
    if not isinstance(test, list):
        problems.append(Problem(
            f"its 'test' entry is a {type(test).__name__}, not a list of images",
            'make \'test\' a list (["./imagesTs/case.nii.gz", ...]) or remove it', file=path,
        ))
        test = []
    entries = [(e, None) for e in spec["training"]] + [(e, "test") for e in test]
    if not entries:
        problems.append(Problem(
            "the dataset.json lists no cases (its 'training' and 'test' lists are empty)",
            'add one {"image": ..., "label": ...} entry per case to its \'training\' list',
            file=path,
        ))
    for entry, split in entries:
        images = _entry_images(entry)
        if not images:
            problems.append(Problem(
                f"entry {entry!r:.200} has no image path",
                'give each entry an image: {"image": "./imagesTr/case.nii.gz", "label": "./labelsTr/case.nii.gz"}',
                file=path,
            ))
            continue
        label = entry.get("label") if isinstance(entry, dict) else None
        if label is not None and not isinstance(label, str):
            problems.append(Problem(
                f"entry {entry!r:.200}: its label is a {type(label).__name__}, not one path",
                "give each entry's label as one path to a label map", file=path, case_id=_stem(images[0]),
            ))
            continue
        cases.append(Case(
            case_id=_stem(images[0]),
            image=tuple(_resolve(path.parent, image) for image in images),
            label=_resolve(path.parent, label) if label else None,
            split=split,
        ))
    classes, class_problems = _label_classes(spec.get("labels", {}), path)
    return Manifest(path, cases, classes), problems + class_problems


def _stem(filename: str) -> str:
    name = Path(filename).name
    for suffix in NIFTI_SUFFIXES[::-1]:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


# --- nnU-Net raw folder ----------------------------------------------------------------------


def _read_nnunet(folder: Path) -> tuple[Manifest, list[Problem]]:
    spec_path = folder / "dataset.json"
    if not (folder / "imagesTr").is_dir():
        raise DataError(
            "not an nnU-Net raw folder (no imagesTr/)",
            "give a folder with imagesTr/, labelsTr/ and dataset.json, or a CSV manifest",
            file=folder,
        )
    spec = _read_json(spec_path) if spec_path.exists() else {}
    ending = spec.get("file_ending", ".nii.gz")
    problems: list[Problem] = []
    cases: list[Case] = []
    for images_dir, labels_dir, split in (("imagesTr", "labelsTr", None), ("imagesTs", "labelsTs", "test")):
        channels: dict[str, dict[int, Path]] = {}
        for file in sorted((folder / images_dir).glob(f"*{ending}")):
            stem = file.name[: -len(ending)]
            case_id, _, channel = stem.rpartition("_")
            if not case_id or not (len(channel) == 4 and channel.isdigit()):
                problems.append(Problem(
                    f"image name does not end in a 4-digit channel (_0000{ending})",
                    f"rename it CASE_0000{ending}",
                    file=file,
                ))
                continue
            channels.setdefault(case_id, {})[int(channel)] = file
        for case_id, by_channel in sorted(channels.items()):
            if sorted(by_channel) != list(range(len(by_channel))):
                problems.append(Problem(
                    f"channels {sorted(by_channel)} are not numbered 0..{len(by_channel) - 1}",
                    "add the missing channel files",
                    file=folder / images_dir, case_id=case_id,
                ))
                continue
            label = folder / labels_dir / f"{case_id}{ending}"
            if split is None and not label.exists():
                problems.append(Problem(
                    f"no label {labels_dir}/{label.name}", "add the label map or move the images to imagesTs",
                    file=label, case_id=case_id,
                ))
            cases.append(Case(
                case_id=case_id,
                image=tuple(by_channel[i] for i in range(len(by_channel))),
                label=label if label.exists() else None,
                split=split,
            ))
    if not cases and not problems:  # every image file gives a case or a problem: there is none
        problems.append(Problem(
            f"no images in imagesTr/ or imagesTs/ (looked for *{ending})",
            f"add each case's images as imagesTr/CASE_0000{ending} and its label as labelsTr/CASE{ending}",
            file=folder,
        ))
    classes, class_problems = _label_classes(spec.get("labels", {}), spec_path) if spec else ([], [])
    return Manifest(folder / "dataset.json" if spec else folder, cases, classes), problems + class_problems

