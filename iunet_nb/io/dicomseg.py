"""DICOM-SEG export (and import) of a mask for a CT that came from DICOM.

A hospital PACS or a DICOM viewer (3D Slicer, OHIF, Horos) takes a segmentation as a DICOM
Segmentation object that references the CT series it was drawn on. :func:`write_dicom_seg`
builds one with `highdicom <https://highdicom.readthedocs.io>`_: one binary segment, one
frame per CT slice that holds foreground (empty slices are omitted), the CT's study,
patient, frame of reference and each frame's source slice referenced, plane positions and
orientation taken from the CT slices, so the SEG lies exactly on the CT in physical space.

The CT must have been read by :func:`iunet_nb.io.images.read_image` from a DICOM folder or zip:
its ``meta`` holds the series / study / frame-of-reference UIDs and the SOPInstanceUID of
every slice in array order, and the source files' headers (patient, study) are read again
from ``meta["source"]``. highdicom (pure Python, with pydicom) is an optional dependency,
imported only here: ``pip install highdicom``.

Example:
    >>> ct = read_image("PATIENT_DICOM")                      # doctest: +SKIP
    >>> write_dicom_seg(mask, ct, "pancreas_seg.dcm")         # doctest: +SKIP
    >>> back = read_dicom_seg("pancreas_seg.dcm", ct)         # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..errors import GeometryError, InputError
from ._atomic import atomic_path
from .volume import Volume

__all__ = ["DICOM_SEG_EXTENSIONS", "is_dicom_ct", "read_dicom_seg", "write_dicom_seg"]

logger = logging.getLogger(__name__)

#: File extensions that :meth:`iunet_nb.interactive.session.Session.export` writes as DICOM-SEG.
DICOM_SEG_EXTENSIONS: tuple[str, ...] = (".dcm",)
_REQUIRED_META = ("series_uid", "study_uid", "frame_of_reference_uid", "sop_instance_uids")
_POSITION_TOL_MM = 1e-3


def _highdicom() -> Any:
    try:
        import highdicom
    except ImportError as exc:
        raise InputError("DICOM-SEG export needs the optional package highdicom: install it "
                         "with `pip install highdicom` (pure Python), or export the mask as "
                         ".nii.gz / .nrrd instead") from exc
    return highdicom


def is_dicom_ct(ct: Volume) -> bool:
    """True when ``ct`` was read from DICOM with every UID a DICOM-SEG needs."""
    meta = ct.meta or {}
    uids = meta.get("sop_instance_uids")
    return (meta.get("format") == "dicom" and all(meta.get(k) for k in _REQUIRED_META)
            and isinstance(uids, (list, tuple)) and len(uids) == ct.shape[0])


def _check_ct(ct: Volume) -> None:
    if not isinstance(ct, Volume):
        raise InputError(f"ct must be a Volume read from DICOM, got {type(ct).__name__}")
    if is_dicom_ct(ct):
        return
    meta = ct.meta or {}
    if meta.get("format") != "dicom":
        raise InputError(
            f"DICOM-SEG needs a CT read from a DICOM series; this one came from "
            f"{meta.get('source', 'an array')} ({meta.get('format', 'no format')}). Export the "
            "mask as .nii.gz or .nrrd instead, or open the CT's DICOM folder with read_image")
    missing = [k for k in _REQUIRED_META if not meta.get(k)]
    raise InputError(f"the CT's DICOM metadata lacks {missing or ['one SOPInstanceUID per slice']}"
                     f" (has {len(meta.get('sop_instance_uids') or [])} SOPInstanceUIDs for "
                     f"{ct.shape[0]} slices); read the CT again with iunet_nb.io.images.read_image "
                     "from its DICOM folder, or export the mask as .nii.gz")


def _iter_headers(source: Path) -> Iterator[Any]:
    """pydicom datasets (no pixel data) of every readable DICOM file under ``source``."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    def parse(fh: Any) -> Any:
        try:
            return pydicom.dcmread(fh, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError):
            return None

    if source.is_dir():
        for p in sorted(source.rglob("*")):
            if p.is_file():
                ds = parse(str(p))
                if ds is not None:
                    yield ds
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            for info in archive.infolist():
                if info.is_dir() or "__MACOSX" in PurePosixPath(info.filename).parts:
                    continue
                with archive.open(info) as fh:
                    ds = parse(fh)
                if ds is not None:
                    yield ds


def _source_headers(ct: Volume) -> list[Any]:
    """The CT's slice headers in array order (matched by SOPInstanceUID)."""
    source = Path(str(ct.meta.get("source", "")))
    if not source.exists():
        raise InputError(f"the CT's DICOM files are no longer at {source}; DICOM-SEG export "
                         "copies their patient and study headers. Put the series back there "
                         "(or read it again from where it is now), or export as .nii.gz")
    wanted = {uid: i for i, uid in enumerate(ct.meta["sop_instance_uids"])}
    found: list[Any] = [None] * len(wanted)
    for ds in _iter_headers(source):
        i = wanted.get(str(getattr(ds, "SOPInstanceUID", "")))
        if i is not None:
            found[i] = ds
    missing = [uid for uid, i in wanted.items() if found[i] is None]
    if missing:
        raise InputError(f"{len(missing)} of the CT's {len(wanted)} slices are no longer in "
                         f"{source} (e.g. SOPInstanceUID {missing[0]}); the folder changed since "
                         "the CT was read. Read the CT again, or export as .nii.gz")
    return found


def _check_headers_match(ct: Volume, headers: list[Any]) -> None:
    """The headers describe the CT's grid (guards against a folder changed since reading)."""
    geometry = ct.geometry
    for k, ds in enumerate(headers):
        pos = np.asarray([float(v) for v in ds.ImagePositionPatient])
        expected = geometry.index_to_physical([k, 0, 0])
        if (int(ds.Rows), int(ds.Columns)) != ct.shape[1:] or \
                not np.allclose(pos, expected, atol=1e-2):
            raise GeometryError(
                f"slice {k} of the CT's DICOM files (SOPInstanceUID {ds.SOPInstanceUID}) does "
                f"not match the CT read (position {pos.round(3).tolist()} vs "
                f"{expected.round(3).tolist()}, size {(int(ds.Rows), int(ds.Columns))} vs "
                f"{ct.shape[1:]}); read the CT again from its folder")


def _property_type(structure: str) -> Any:
    from pydicom.sr.codedict import codes

    hd = _highdicom()
    name = "".join(w.capitalize() for w in structure.replace("_", " ").split())
    try:
        return getattr(codes.SCT, name)
    except AttributeError:
        # not a SNOMED CT name pydicom knows: a code of this package's private scheme
        return hd.sr.CodedConcept(value=name[:16] or "Structure", scheme_designator="99IUNETNB",
                                  meaning=structure[:64] or "structure")


def write_dicom_seg(mask: Volume, ct: Volume, path: str | os.PathLike, *,
                    structure: str = "pancreas", segment_label: str | None = None,
                    series_description: str = "iunet-nb segmentation",
                    series_number: int = 9901, algorithm_version: str | None = None,
                    content_creator_name: str | None = None) -> Path:
    """Write ``mask`` as a binary DICOM Segmentation referencing the CT series (atomically).

    Args:
        mask: uint8/bool ``(z, y, x)`` {0, 1} on the CT's grid (same shape and geometry).
        ct: the CT as read by :func:`iunet_nb.io.images.read_image` from DICOM (its ``meta`` has the
            UIDs and ``source``; the source files must still be there).
        path: output file, normally ending in ``.dcm``.
        structure: the segmented structure; a SNOMED CT name pydicom knows (``"pancreas"``,
            ``"liver"``, ``"spleen"``, ...) gives its SCT code, anything else a private code.
        segment_label: the segment's label (default: ``structure``).
        series_description: SeriesDescription of the new SEG series.
        series_number: SeriesNumber of the new SEG series.
        algorithm_version: recorded in the algorithm identification (default: the package's
            version).
        content_creator_name: e.g. the reader, as a DICOM person name (``"Doe^Jane"``).

    Returns:
        ``path`` as a Path.

    Raises:
        InputError: highdicom missing; the CT was not read from DICOM or its files moved;
            the mask is empty or holds values other than 0/1.
        GeometryError: the mask is not on the CT's grid.
    """
    from .images import check_same_grid

    hd = _highdicom()
    _check_ct(ct)
    check_same_grid(ct, mask, "mask")
    array = np.asarray(mask.array)
    if array.dtype.kind not in "biu" or (array.size and int(array.max()) > 1) or \
            (array.size and int(array.min()) < 0):
        raise InputError("a DICOM-SEG export needs a binary mask (0/1); threshold or select "
                         "one label first (e.g. labels == 1)")
    if not array.any():
        raise InputError("the mask is empty: a DICOM-SEG needs at least one foreground voxel; "
                         "segment something first (or export an empty .nii.gz)")
    headers = _source_headers(ct)
    _check_headers_match(ct, headers)
    if algorithm_version is None:
        from importlib import metadata
        try:
            algorithm_version = metadata.version("iunet-nb")
        except metadata.PackageNotFoundError:
            algorithm_version = "unknown"
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name="iunet_nb", family=codes.cid7162.ArtificialIntelligence,
        version=str(algorithm_version))
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=(segment_label or structure)[:64],
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=_property_type(structure),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
        algorithm_identification=algorithm)
    seg = hd.seg.Segmentation(
        source_images=headers, pixel_array=array.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=hd.UID(),
        series_number=int(series_number), sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="iunet-nb", manufacturer_model_name="iunet_nb interactive segmentation",
        software_versions=str(algorithm_version), device_serial_number="0",
        content_label="IUNETNB", content_description=series_description[:64],
        content_creator_name=content_creator_name)
    seg.SeriesDescription = series_description[:64]
    out = Path(path)
    with atomic_path(out) as tmp:
        seg.save_as(str(tmp))
    logger.info("wrote DICOM-SEG %s: %d frames referencing series %s", out,
                int(seg.NumberOfFrames), ct.meta["series_uid"])
    return out


def read_dicom_seg(path: str | os.PathLike, ct: Volume, *, segment_number: int = 1) -> Volume:
    """Read one segment of a DICOM-SEG back onto the CT's grid, placed by physical position.

    Every frame is put on the CT slice at its ``ImagePositionPatient``; the frame of
    reference and the plane orientation must be the CT's.

    Args:
        path: the DICOM-SEG file.
        ct: the CT it was drawn on (read from DICOM; see :func:`write_dicom_seg`).
        segment_number: which segment (1-based).

    Returns:
        uint8 {0, 1} mask ``(z, y, x)`` in the CT's geometry.

    Raises:
        InputError: not a readable DICOM-SEG; no such segment.
        GeometryError: another frame of reference, orientation or pixel spacing; a frame that
            does not lie on a CT slice.
    """
    hd = _highdicom()
    _check_ct(ct)
    try:
        seg = hd.seg.segread(str(path))
    except Exception as exc:
        raise InputError(f"cannot read {path} as a DICOM Segmentation ({exc}); is it a SEG "
                         "file?") from exc
    if str(seg.FrameOfReferenceUID) != ct.meta["frame_of_reference_uid"]:
        raise GeometryError(f"{path} is in frame of reference {seg.FrameOfReferenceUID}, the CT "
                            f"in {ct.meta['frame_of_reference_uid']}: it belongs to another "
                            "scan; open the CT it was drawn on")
    numbers = [int(n) for n in seg.get_segment_numbers()]
    if segment_number not in numbers:
        raise InputError(f"{path} has no segment {segment_number}; it has {numbers}")
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = np.asarray([float(v) for v in
                              shared.PlaneOrientationSequence[0].ImageOrientationPatient])
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    geometry = ct.geometry
    d = geometry.matrix
    if not np.allclose(orientation, np.concatenate([d[:, 0], d[:, 1]]), atol=1e-4) or \
            not np.allclose(spacing, geometry.spacing_mm[1:], atol=1e-4):
        raise GeometryError(f"{path}: plane orientation {orientation.tolist()} / pixel spacing "
                            f"{spacing} differ from the CT's; it was not drawn on this series")
    out = np.zeros(ct.shape, dtype=np.uint8)
    pixels = seg.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ident = item if "SegmentIdentificationSequence" in item else shared
        if int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber) != segment_number:
            continue
        pos = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        idx = geometry.physical_to_index(pos)
        k = round(float(idx[0]))
        if not np.allclose(idx, [k, 0, 0], atol=_POSITION_TOL_MM / min(geometry.spacing_mm)) \
                or not 0 <= k < ct.shape[0]:
            raise GeometryError(f"{path}: frame {f + 1} at {pos} mm is not on a slice of the CT "
                                f"(continuous index {np.round(idx, 3).tolist()})")
        out[k] = np.asarray(pixels[f]) != 0
    return Volume(out, geometry, {"source": str(path), "format": "dicom-seg",
                                  "segment_number": segment_number})
