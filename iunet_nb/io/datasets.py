"""Data-set folder layouts and cross-validation folds.

:func:`find_cases` turns a folder into a sorted list of :class:`Case` records, one per CT
(or label map), for the layouts a user is likely to have:

* ``"msd"``: Medical Segmentation Decathlon (``dataset.json`` with ``labels`` and
  ``training``; ``imagesTr/``, ``labelsTr/``), also nnU-Net v2 (``*_0000`` images, no list);
* ``"paired"``: ``images/`` and ``labels/`` with matching names, any readable format
  (a case's image may also be a DICOM series folder or a ``.zip`` of one);
* ``"ircadb"``: 3D-IRCADb, ``<patient>/PATIENT_DICOM`` plus ``MASKS_DICOM.zip`` or
  ``MASKS_DICOM/``; the structure is an organ folder name (aliases such as ``kidney_left``);
* ``"btcv"``: BTCV label maps ``0001.nii.gz`` ... (``label0001.nii.gz`` in ``label/`` with
  ``img/img0001.nii.gz`` also works), labels as in :data:`BTCV_LABELS`.

BTCV orientation: the shared BTCV label maps (the Learn2Reg re-release, ``../shared/data``)
carry a NIfTI header whose direction, ``diag(-1, -1, 1)`` in SimpleITK's LPS terms, does not
describe their anatomy: increasing x runs from the patient's right to left and increasing y
from posterior to anterior, i.e. ``diag(1, -1, 1)`` (:data:`BTCV_DIRECTION`). Since
:mod:`iunet_nb.model.preprocess` brings every image to the patient axes, a wrong header would mirror
the anatomy left-right. So the ``"btcv"`` layout reads its label maps (and images, if any)
with :data:`BTCV_DIRECTION` instead of the header's direction, logged once per
:func:`find_cases` call; ``find_cases(..., btcv_direction=None)`` trusts the header (e.g. a
BTCV copy whose headers you have checked), and any other direction can be given. The array is
unchanged; the origin is moved so that the image's centre (and so its physical bounding box)
stays where the header put it (:func:`with_true_direction`).

:func:`make_folds` splits case ids into seeded k folds; :func:`save_folds` /
:func:`load_folds` keep them in a JSON file that records ``k`` and the seed.

Example:
    >>> cases = find_cases("Task07_Pancreas", "pancreas")   # doctest: +SKIP
    >>> ct, mask = cases[0].load()                          # doctest: +SKIP
    >>> folds = make_folds([c.case_id for c in cases], k=5, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import ConfigError, GeometryError, InputError
from ._atomic import atomic_write_text
from .images import (READ_EXTENSIONS, check_same_grid, list_dicom_mask_organs,
                 read_dicom_mask_series, read_image, read_label_map)
from .volume import Geometry, Volume

__all__ = [
    "BTCV_DIRECTION",
    "BTCV_LABELS",
    "LAYOUTS",
    "Case",
    "find_cases",
    "make_folds",
    "save_folds",
    "load_folds",
    "with_true_direction",
]

logger = logging.getLogger(__name__)

#: BTCV abdomen label values (Landman et al. 2015), by structure name.
BTCV_LABELS: dict[str, int] = {
    "spleen": 1,
    "right_kidney": 2,
    "left_kidney": 3,
    "gallbladder": 4,
    "esophagus": 5,
    "liver": 6,
    "stomach": 7,
    "aorta": 8,
    "inferior_vena_cava": 9,
    "portal_and_splenic_vein": 10,
    "pancreas": 11,
    "right_adrenal_gland": 12,
    "left_adrenal_gland": 13,
}

#: True direction of the shared BTCV label maps (SimpleITK row-major 3 x 3, columns = the x, y,
#: z index axes): x right-to-left (+x of LPS), y posterior-to-anterior (-y of LPS), z
#: inferior-to-superior. Their NIfTI header says ``diag(-1, -1, 1)``, which mirrors x
#: (``../shared/data/README.md``, "Geometry").
BTCV_DIRECTION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)

#: Layout names accepted by :func:`find_cases` (besides ``"auto"``).
LAYOUTS: tuple[str, ...] = ("msd", "paired", "ircadb", "btcv")

_FOLDS_VERSION = 1

# Other spellings (after _norm) of the canonical names above.
_ALIASES: dict[str, str] = {
    "kidneyright": "right_kidney", "rightkidney": "right_kidney", "rkidney": "right_kidney",
    "kidneyleft": "left_kidney", "leftkidney": "left_kidney", "lkidney": "left_kidney",
    "gallbladder": "gallbladder", "oesophagus": "esophagus",
    "ivc": "inferior_vena_cava", "venacava": "inferior_vena_cava",
    "inferiorvenacava": "inferior_vena_cava",
    "portalvein": "portal_and_splenic_vein", "portalveinandsplenicvein": "portal_and_splenic_vein",
    "portalandsplenicvein": "portal_and_splenic_vein",
    "adrenalright": "right_adrenal_gland", "rightadrenal": "right_adrenal_gland",
    "rightadrenalgland": "right_adrenal_gland", "rightsurrenalgland": "right_adrenal_gland",
    "adrenalleft": "left_adrenal_gland", "leftadrenal": "left_adrenal_gland",
    "leftadrenalgland": "left_adrenal_gland", "leftsurrenalgland": "left_adrenal_gland",
    "lungleft": "left_lung", "leftlung": "left_lung",
    "lungright": "right_lung", "rightlung": "right_lung",
}
# Canonical name -> 3D-IRCADb organ folder name, where they differ.
_IRCADB_NAMES: dict[str, str] = {
    "right_kidney": "rightkidney", "left_kidney": "leftkidney",
    "right_adrenal_gland": "rightsurrenalgland", "left_adrenal_gland": "leftsurrenalgland",
    "left_lung": "leftlung", "right_lung": "rightlung", "portal_and_splenic_vein": "portalvein",
}
_BTCV_FILE = re.compile(r"^(?:label)?(\d+)\.nii(?:\.gz)?$", re.IGNORECASE)


def with_true_direction(volume: Volume, direction: Sequence[float]) -> Volume:
    """The same array with ``direction`` instead of the header's, centre kept in place.

    For files whose header direction is known to be wrong (:data:`BTCV_DIRECTION`). The
    array, spacing and meta are unchanged; the origin is moved so that the physical position
    of the grid's centre voxel (and so the image's physical bounding box, for a direction that
    only flips or permutes axes) is what the header said. Positions *inside* the image change:
    that is the correction.

    Args:
        volume: the image or label map as read.
        direction: 9 numbers, row-major 3 x 3, orthonormal.

    Returns:
        ``volume`` itself when its direction already is ``direction``, else a new Volume.

    Raises:
        GeometryError: ``direction`` is not an orthonormal 3 x 3 matrix.
    """
    old = volume.geometry
    new_dir = tuple(float(d) for d in np.asarray(direction, dtype=float).ravel())
    probe = Geometry(old.spacing_mm, old.origin_mm, new_dir)  # validates the matrix
    if np.allclose(probe.direction, old.direction, atol=1e-9):
        return volume
    centre = (np.asarray(volume.shape, dtype=float) - 1.0) / 2.0
    origin = old.index_to_physical(centre) - (probe.index_to_physical(centre)
                                              - np.asarray(old.origin_mm))
    geometry = Geometry(old.spacing_mm, tuple(origin.tolist()), new_dir)  # type: ignore[arg-type]
    return Volume(volume.array, geometry, dict(volume.meta))


def _check_direction(direction: Sequence[float] | None, what: str) -> tuple[float, ...] | None:
    if direction is None:
        return None
    try:
        return Geometry(direction=tuple(direction)).direction  # type: ignore[arg-type]
    except (GeometryError, TypeError, ValueError) as exc:
        raise ConfigError(f"{what} must be None (trust the header) or 9 numbers forming an "
                          f"orthonormal row-major 3 x 3 direction matrix, got {direction!r} "
                          f"({exc})") from None


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _canonical(name: str) -> str:
    """Canonical structure name for ``name`` (BTCV table names and aliases), else normalised."""
    key = _norm(name)
    for canonical in BTCV_LABELS:
        if _norm(canonical) == key:
            return canonical
    return _ALIASES.get(key, key)


@dataclass(frozen=True)
class Case:
    """One image with the reference mask of one structure.

    Args:
        case_id: identifier, unique within a data set (file stem or patient folder name).
        image_path: CT file, DICOM folder or zip; None for label-map-only cases (BTCV).
        label_path: label map / mask file; for ``"ircadb"`` the ``MASKS_DICOM`` zip or folder.
        label_value: the target's value in the label map; None means every nonzero voxel
            (a binary mask, or the DICOM mask series of ``structure``).
        source: layout name (``"msd"``, ``"paired"``, ``"ircadb"``, ``"btcv"``).
        structure: target structure name (for ``"ircadb"``, the organ folder to read).
        direction: direction set on the label map (and image) when read, replacing the
            header's (:func:`with_true_direction`); None trusts the header. The ``"btcv"``
            layout sets :data:`BTCV_DIRECTION` by default.
    """

    case_id: str
    image_path: str | None
    label_path: str
    label_value: int | None
    source: str
    structure: str | None = None
    direction: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction",
                           _check_direction(self.direction, f"Case {self.case_id}: direction"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _oriented(self, volume: Volume) -> Volume:
        if self.direction is None:
            return volume
        logger.debug("case %s: direction %s set instead of the header's %s", self.case_id,
                     self.direction, volume.geometry.direction)
        return with_true_direction(volume, self.direction)

    def read_labels(self) -> Volume:
        """The whole label map (all labels), with :attr:`direction` applied if set.

        Raises:
            InputError: unreadable file (see :func:`iunet_nb.io.images.read_label_map`); not for
                ``"ircadb"`` cases, whose masks are one DICOM series per organ.
        """
        if self.source == "ircadb":
            raise InputError(f"case {self.case_id}: 3D-IRCADb masks are one DICOM series per "
                             "organ, not a label map; use load()")
        return self._oriented(read_label_map(self.label_path))

    def load(self) -> tuple[Volume | None, Volume]:
        """Read the image and the target's binary mask on the image's grid.

        Returns:
            ``(image, mask)``: image as :func:`iunet_nb.io.images.read_image` (None without an
            image); mask ``uint8`` {0, 1} ``(z, y, x)``. Both carry ``meta["case_id"]``.

        Raises:
            InputError: "empty reference mask" when the target is absent; a label map with
                several labels but no ``label_value``; unreadable files (see ``io``).
            GeometryError: the mask is not on the image's grid.
        """
        if self.source == "ircadb":
            mask = read_dicom_mask_series(self.label_path, self.structure or "")
            labels_seen: list[int] = []
        else:
            labels = self.read_labels()
            labels_seen = [int(v) for v in np.unique(labels.array) if v != 0]
            if self.label_value is None:
                if len(labels_seen) > 1:
                    raise InputError(
                        f"case {self.case_id}: {self.label_path} holds several labels "
                        f"{labels_seen}; give the target's value, e.g. find_cases(..., "
                        f"structure={labels_seen[0]})")
                target = labels.array != 0
            else:
                target = labels.array == self.label_value
            mask = labels.with_array(target.astype(np.uint8), label=self.label_value)
        if not mask.array.any():
            what = self.structure or f"label {self.label_value}"
            raise InputError(
                f"case {self.case_id}: empty reference mask: {what} does not occur in "
                f"{self.label_path} (labels present: {labels_seen or 'none'}); exclude the "
                "case or choose another structure")
        meta = {"case_id": self.case_id, "structure": self.structure}
        mask = Volume(mask.array, mask.geometry, {**mask.meta, **meta})
        if self.image_path is None:
            return None, mask
        image = self._oriented(read_image(self.image_path))
        image = Volume(image.array, image.geometry, {**image.meta, **meta})
        check_same_grid(image, mask, what=f"reference mask of case {self.case_id}")
        return image, mask


# ----------------------------------------------------------------------------- layouts
def _strip_extension(name: str) -> str | None:
    """File name without a readable image extension (None when it has none)."""
    lower = name.lower()
    for ext in READ_EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return None


def _image_entries(folder: Path, allow_dicom: bool) -> dict[str, Path]:
    """{case id: path} of the readable images in ``folder`` (hidden files skipped)."""
    entries: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        stem = _strip_extension(path.name) if path.is_file() else None
        if stem is None and allow_dicom:
            if path.is_dir():
                stem = path.name
            elif path.name.lower().endswith(".zip"):
                stem = path.name[:-4]
        if stem is None:
            continue
        if stem in entries:
            raise InputError(f"{folder} holds two files for case {stem!r}: "
                             f"{entries[stem].name} and {path.name}; keep one")
        entries[stem] = path
    return entries


def _msd_labels(dataset: dict[str, Any], path: Path) -> dict[str, int]:
    """{name: value} from MSD (``{"1": "pancreas"}``) or nnU-Net v2 (``{"pancreas": 1}``)."""
    raw = dataset.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{path} has no 'labels' mapping; add one, e.g. "
                         '{"labels": {"0": "background", "1": "pancreas"}}')
    out: dict[str, int] = {}
    for key, value in raw.items():
        if str(key).lstrip("-").isdigit():
            out[str(value)] = int(key)
        elif isinstance(value, int):
            out[str(key)] = value
        elif isinstance(value, list) and len(value) == 1 and isinstance(value[0], int):
            out[str(key)] = value[0]  # nnU-Net v2 region with a single label
    return out


def _resolve_value(structure: str | int, table: dict[str, int], where: str) -> tuple[int, str]:
    """(label value, structure name) of ``structure`` in a {name: value} table."""
    if isinstance(structure, (int, np.integer)) and not isinstance(structure, bool):
        names = [n for n, v in table.items() if v == int(structure)]
        return int(structure), (names[0] if names else str(int(structure)))
    wanted = _canonical(str(structure))
    for name, value in table.items():
        if _canonical(name) == wanted:
            return value, name
    raise InputError(f"structure {structure!r} is not among the labels of {where}: "
                     f"{sorted(table, key=table.__getitem__)}; pass one of these names or a "
                     "label value")


def _find_msd(root: Path, structure: str | int) -> list[Case]:
    json_path = root / "dataset.json"
    try:
        dataset = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {json_path} ({exc}); it must be a JSON object with "
                         "'labels' and 'training'") from exc
    table = _msd_labels(dataset, json_path)
    value, name = _resolve_value(structure, table, str(json_path))
    cases = []
    training = dataset.get("training")
    if training:
        for entry in training:
            try:
                image, label = root / entry["image"], root / entry["label"]
            except (TypeError, KeyError) as exc:
                raise InputError(f"{json_path}: each 'training' entry needs 'image' and "
                                 f"'label', got {entry!r}") from exc
            case_id = _strip_extension(label.name) or label.name
            cases.append(Case(case_id, str(image), str(label), value, "msd", name))
    else:  # nnU-Net v2: labelsTr/<id>.nii.gz with imagesTr/<id>_0000.nii.gz
        images = _image_entries(root / "imagesTr", allow_dicom=False)
        for case_id, label in _image_entries(root / "labelsTr", allow_dicom=False).items():
            image = images.get(f"{case_id}_0000", images.get(case_id))
            if image is None:
                logger.warning("msd: no image for %s in %s; skipped", label.name, root / "imagesTr")
                continue
            cases.append(Case(case_id, str(image), str(label), value, "msd", name))
    missing = [c for c in cases if not Path(c.label_path).exists()
               or not Path(str(c.image_path)).exists()]
    if missing:
        raise InputError(f"{json_path} lists {len(missing)} case(s) whose files are missing, "
                         f"e.g. {missing[0].image_path} / {missing[0].label_path}; the download "
                         "may be incomplete")
    return cases


def _find_paired(root: Path, structure: str | int) -> list[Case]:
    images = _image_entries(root / "images", allow_dicom=True)
    labels = _image_entries(root / "labels", allow_dicom=False)
    value: int | None = None
    name: str | None = None
    if isinstance(structure, (int, np.integer)) and not isinstance(structure, bool):
        value = int(structure)
    else:
        name = str(structure)  # binary masks: every nonzero voxel (checked in Case.load)
    for only, where in ((sorted(set(images) - set(labels)), "labels"),
                        (sorted(set(labels) - set(images)), "images")):
        if only:
            logger.warning("paired: %d case(s) have no file in %s/ and are skipped: %s",
                           len(only), where, only[:5])
    return [Case(cid, str(images[cid]), str(labels[cid]), value, "paired", name)
            for cid in sorted(set(images) & set(labels))]


def _ircadb_patients(root: Path) -> list[Path]:
    if (root / "PATIENT_DICOM").is_dir():
        return [root]
    return sorted(p for p in root.iterdir() if (p / "PATIENT_DICOM").is_dir())


def _ircadb_organ(structure: str | int, organs: list[str]) -> str | None:
    if isinstance(structure, (int, np.integer)):
        raise InputError(f"3D-IRCADb masks are named organ series, not label values; pass an "
                         f"organ name such as {organs[:4]} instead of {structure}")
    by_norm = {_norm(o): o for o in organs}
    key = _norm(str(structure))
    if key in by_norm:
        return by_norm[key]
    canonical = _canonical(str(structure))
    return by_norm.get(_norm(_IRCADB_NAMES.get(canonical, canonical)))


def _find_ircadb(root: Path, structure: str | int) -> list[Case]:
    cases = []
    seen: set[str] = set()
    for patient in _ircadb_patients(root):
        masks = next((m for m in (patient / "MASKS_DICOM.zip", patient / "MASKS_DICOM")
                      if m.exists()), None)
        if masks is None:
            logger.warning("ircadb: %s has no MASKS_DICOM.zip or MASKS_DICOM/; skipped", patient)
            continue
        organs = list_dicom_mask_organs(masks)
        seen.update(organs)
        organ = _ircadb_organ(structure, organs)
        if organ is None:
            logger.info("ircadb: patient %s has no %r mask; skipped", patient.name, structure)
            continue
        cases.append(Case(patient.name, str(patient / "PATIENT_DICOM"), str(masks), None,
                          "ircadb", organ))
    if not cases:
        raise InputError(f"no 3D-IRCADb patient in {root} has a {structure!r} mask; masks "
                         f"found: {sorted(seen)}")
    return cases


def _find_btcv(root: Path, structure: str | int,
               direction: tuple[float, ...] | None = BTCV_DIRECTION) -> list[Case]:
    label_dir = root / "label" if (root / "label").is_dir() else root
    image_dir = root / "img"
    value, name = _resolve_value(structure, BTCV_LABELS, "BTCV")
    cases = []
    for path in sorted(label_dir.iterdir()):
        match = _BTCV_FILE.match(path.name)
        if not match or not path.is_file():
            continue
        case_id = match.group(1)
        candidates = (image_dir / f"img{case_id}.nii.gz", image_dir / f"img{case_id}.nii")
        image = next((p for p in candidates if p.is_file()), None)
        cases.append(Case(case_id, str(image) if image else None, str(path), value, "btcv", name,
                          direction))
    return cases


_FINDERS = {"msd": _find_msd, "paired": _find_paired, "ircadb": _find_ircadb,
            "btcv": _find_btcv}
_LOOKED_FOR = ("msd (dataset.json with imagesTr/ and labelsTr/), paired (images/ and labels/), "
               "ircadb (<patient>/PATIENT_DICOM with MASKS_DICOM.zip or MASKS_DICOM/), "
               "btcv (label maps named 0001.nii.gz ... or label/label0001.nii.gz)")


def _detect_layout(root: Path) -> str:
    if (root / "dataset.json").is_file() and ((root / "imagesTr").is_dir()
                                              or (root / "labelsTr").is_dir()):
        return "msd"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "paired"
    if _ircadb_patients(root):
        return "ircadb"
    label_dir = root / "label" if (root / "label").is_dir() else root
    if any(_BTCV_FILE.match(p.name) for p in label_dir.iterdir()):
        return "btcv"
    raise InputError(f"cannot tell the layout of {root}; looked for {_LOOKED_FOR}. Arrange "
                     "the files like one of these, or pass layout=... explicitly")


def find_cases(root: str | os.PathLike, structure: str | int = "pancreas",
               layout: str = "auto", *,
               btcv_direction: Sequence[float] | None = BTCV_DIRECTION) -> list[Case]:
    """Cases of a data-set folder, sorted by case id.

    Args:
        root: the data-set folder.
        structure: target structure: a name (looked up in the layout's label table with
            aliases, e.g. ``"kidney_left"``) or a label value. For ``"paired"`` a name means
            "every nonzero voxel" (binary masks); pass a value for multi-label maps.
        layout: ``"auto"`` (detect) or one of :data:`LAYOUTS`.
        btcv_direction: for the ``"btcv"`` layout, the direction its files are read with
            instead of their header's (default :data:`BTCV_DIRECTION`, the true orientation
            of the shared BTCV label maps, whose header mirrors x); None trusts the header.
            Recorded in each :attr:`Case.direction`; other layouts ignore it.

    Returns:
        Sorted, deterministic list of :class:`Case` (no file is read beyond listings and
        ``dataset.json``). 3D-IRCADb patients without the organ's mask are left out (logged);
        a structure that is absent from a label map is reported by :meth:`Case.load`.

    Raises:
        InputError: missing folder, undetectable layout (lists what was looked for), unknown
            structure, no cases.
        ConfigError: unknown layout name, or ``btcv_direction`` not an orthonormal 3 x 3.
    """
    root = Path(root)
    direction = _check_direction(btcv_direction, "btcv_direction")
    if layout != "auto" and layout not in _FINDERS:
        raise ConfigError(f"unknown layout {layout!r}; use 'auto' or one of {list(LAYOUTS)}")
    if not root.is_dir():
        raise InputError(f"data-set folder {root} does not exist or is not a folder")
    if layout == "auto":
        layout = _detect_layout(root)
        logger.info("%s: detected layout %r", root, layout)
    if layout == "btcv":
        cases = _find_btcv(root, structure, direction)
        if cases and direction is not None:
            logger.info("btcv: reading %d label map(s) in %s with direction %s instead of their "
                        "header's (the shared BTCV maps' header mirrors x; pass "
                        "btcv_direction=None to trust the header)", len(cases), root, direction)
    else:
        cases = _FINDERS[layout](root, structure)
    cases = sorted(cases, key=lambda c: c.case_id)
    if not cases:
        raise InputError(f"no cases found in {root} with layout {layout!r}; expected "
                         f"{_LOOKED_FOR}")
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(f"case ids are not unique in {root}: {dupes}; rename the files")
    return cases


# ----------------------------------------------------------------------------- folds
def make_folds(case_ids: Iterable[str], k: int = 5, seed: int = 0) -> list[dict[str, Any]]:
    """Seeded k-fold split: every id in exactly one test fold.

    The ids are sorted first, so the split depends only on the set of ids and ``seed``;
    then ``np.random.default_rng(seed).permutation`` shuffles them and the shuffled list is
    cut into ``k`` folds whose sizes differ by at most one.

    Args:
        case_ids: unique case identifiers.
        k: number of folds, 2 <= k <= number of cases.
        seed: seed of the shuffle (log it; :func:`save_folds` records it).

    Returns:
        ``[{"fold": i, "train": [...], "test": [...]}, ...]`` with sorted id lists.

    Raises:
        ConfigError: k out of range, or duplicate ids.
    """
    ids = sorted(str(c) for c in case_ids)
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise ConfigError(f"case ids must be unique, these repeat: {dupes}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 2 <= k <= len(ids):
        raise ConfigError(f"k must be an integer from 2 to the number of cases ({len(ids)}), "
                          f"got {k!r}")
    order = np.random.default_rng(seed).permutation(len(ids))
    folds = []
    for i, part in enumerate(np.array_split(order, int(k))):
        test = sorted(ids[j] for j in part)
        test_set = set(test)
        folds.append({"fold": i, "train": [c for c in ids if c not in test_set], "test": test})
    return folds


def _validate_folds(folds: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(folds, list) or len(folds) < 2:
        raise ConfigError(f"{where}: folds must be a list of at least 2 folds")
    all_test: list[str] = []
    for i, fold in enumerate(folds):
        if (not isinstance(fold, dict) or fold.get("fold") != i
                or not isinstance(fold.get("train"), list)
                or not isinstance(fold.get("test"), list)):
            raise ConfigError(f"{where}: fold {i} must be {{'fold': {i}, 'train': [...], "
                              f"'test': [...]}}, got {fold!r}"[:300])
        if set(fold["train"]) & set(fold["test"]):
            raise ConfigError(f"{where}: fold {i} has ids in both train and test: "
                              f"{sorted(set(fold['train']) & set(fold['test']))}")
        all_test += fold["test"]
    if len(set(all_test)) != len(all_test):
        raise ConfigError(f"{where}: some ids are in more than one test fold")
    for i, fold in enumerate(folds):
        if set(fold["train"]) | set(fold["test"]) != set(all_test):
            raise ConfigError(f"{where}: fold {i} does not cover every case once")
    return folds


def save_folds(folds: list[dict[str, Any]], path: str | os.PathLike, seed: int) -> Path:
    """Write folds as JSON (atomically) with ``version``, ``k`` and ``seed``.

    Raises:
        ConfigError: the folds are inconsistent (an id in two test folds, ...).
    """
    folds = _validate_folds(folds, "save_folds")
    payload = {"version": _FOLDS_VERSION, "k": len(folds), "seed": int(seed),
               "folds": [{"fold": int(f["fold"]), "train": [str(c) for c in f["train"]],
                          "test": [str(c) for c in f["test"]]} for f in folds]}
    path = Path(path)
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    logger.info("saved %d folds (seed %d) to %s", len(folds), seed, path)
    return path


def load_folds(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read folds written by :func:`save_folds`.

    Raises:
        InputError: the file does not exist.
        ConfigError: not a folds file, ``k`` does not match, or inconsistent folds.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"folds file {path} does not exist; create it with save_folds")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or "folds" not in data or "k" not in data:
        raise ConfigError(f"{path} is not a folds file (needs 'k', 'seed' and 'folds')")
    folds = _validate_folds(data["folds"], str(path))
    if data["k"] != len(folds):
        raise ConfigError(f"{path}: k is {data['k']} but the file holds {len(folds)} folds")
    return folds
