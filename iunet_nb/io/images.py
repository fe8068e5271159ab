"""Read and write CT images and masks without ever losing their geometry.

Every reader returns a :class:`~iunet_nb.io.volume.Volume`: a ``(z, y, x)`` array plus its
:class:`~iunet_nb.io.volume.Geometry` (spacing, origin, direction) and provenance in ``meta``.
SimpleITK's ``(x, y, z)`` order is reversed only by ``Volume.from_sitk`` / ``Geometry``.

Formats read: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage
(``.mha``, ``.mhd``), a DICOM series folder (files may have no extension, slices are ordered
by position, not by name) and a ``.zip`` holding a DICOM series folder. Formats written:
``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha`` (atomically, compressed).

Example:
    >>> ct = read_image("PATIENT_DICOM")                               # doctest: +SKIP
    >>> liver = read_dicom_mask_series("MASKS_DICOM.zip", "liver")     # doctest: +SKIP
    >>> check_same_grid(ct, liver)                                     # doctest: +SKIP
    >>> write_mask(liver, "liver.nii.gz")                              # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import logging
import os
import shutil
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np
import SimpleITK as sitk

from ..errors import GeometryError, InputError
from ..memory import check_memory, estimate_read_bytes
from ._atomic import atomic_path
from .volume import Geometry, Volume, check_ct_spacing

__all__ = [
    "MAX_ZIP_BYTES",
    "MAX_ZIP_MEMBERS",
    "MAX_ZIP_RATIO",
    "ZIP_RATIO_ABOVE_BYTES",
    "READ_EXTENSIONS",
    "WRITE_EXTENSIONS",
    "read_image",
    "read_mask",
    "read_label_map",
    "read_dicom_mask_series",
    "list_dicom_mask_organs",
    "write_image",
    "write_mask",
    "check_same_grid",
    "hu_problem",
]

logger = logging.getLogger(__name__)

#: File extensions read by :func:`read_image` (besides DICOM folders and ``.zip``).
READ_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: File extensions written by :func:`write_image` / :func:`write_mask`.
WRITE_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha")

_FORMATS = {".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd",
            ".mha": "metaimage", ".mhd": "metaimage"}
_SUPPORTED_TEXT = ("NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), "
                   "a DICOM series folder, or a .zip holding a DICOM series folder")
_INT16 = np.iinfo(np.int16)
# DICOM tags kept in Volume.meta (a later DICOM-SEG export needs the UIDs).
_TAG_SERIES_UID = "0020|000e"
_TAG_STUDY_UID = "0020|000d"
_TAG_FRAME_OF_REFERENCE_UID = "0020|0052"
_TAG_SOP_INSTANCE_UID = "0008|0018"
_TAG_MODALITY = "0008|0060"
_TAG_POSITION = "0020|0032"
_SLICE_GAP_RTOL = 0.05


# ----------------------------------------------------------------------------- helpers
def _extension(path: Path) -> str:
    """The known extension of ``path`` (``.nii.gz`` counts as one), lower case, or ``''``."""
    name = path.name.lower()
    for ext in (".nii.gz", ".zip", *READ_EXTENSIONS):
        if name.endswith(ext):
            return ext
    return ""


def _sitk_reason(exc: Exception) -> str:
    """The informative last line of a SimpleITK/ITK exception message."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def _require_exists(path: Path) -> Path:
    """``path`` made absolute (for provenance); InputError when it does not exist."""
    if not path.exists():
        raise InputError(f"{path} does not exist; check the path (current folder: {Path.cwd()})")
    return path.absolute()


def _check_nifti(path: Path) -> None:
    """Raise InputError when a NIfTI file is truncated or holds NaN/inf voxels.

    ITK reads a truncated ``.nii``/``.nii.gz`` without complaint (the missing voxels come
    back as garbage) and silently turns NaN/inf into 0, so both are checked here from the
    header (voxel offset, dimensions, data type) and the raw voxel bytes.
    """
    compressed = path.name.lower().endswith(".gz")
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as fh:
            header = fh.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"cannot read {path}: {exc}; the file is damaged or not a NIfTI "
                         "image. Copy it again from its source.") from exc
    layout = _nifti_layout(header)
    if layout is None:
        return  # not a NIfTI header we understand: let SimpleITK decide and explain
    pixdim = _nifti_pixdim(header)
    if pixdim is not None and (not all(np.isfinite(pixdim)) or min(map(abs, pixdim)) == 0):
        shown = ", ".join(f"{v:g}" for v in pixdim)
        raise GeometryError(
            f"{path} has voxel spacing pixdim = ({shown}) (x, y, z) in its header: zero or not a "
            "number, which readers silently turn into 1 mm. Fix the header (e.g. in 3D Slicer, "
            "or SimpleITK SetSpacing) and save it again")
    offset, n_bytes, float_dtype = layout
    expected = offset + n_bytes
    if float_dtype is None and not compressed:
        size, n_bad = path.stat().st_size, 0
    else:
        size, n_bad = _scan_nifti_voxels(path, opener, offset, n_bytes, float_dtype)
    if size < expected:
        raise InputError(
            f"{path} is truncated: it holds {size} bytes (uncompressed) but its header needs "
            f"{expected}; an interrupted copy or download? Copy the file again from its source.")
    if n_bad:
        raise InputError(
            f"{path} has {n_bad} NaN or infinite voxel(s) of {n_bytes // float_dtype.itemsize}; "
            "replace them (e.g. with the background value) before using the image")


def _scan_nifti_voxels(path: Path, opener: Any, offset: int, n_bytes: int,
                       float_dtype: np.dtype | None) -> tuple[int, int]:
    """(uncompressed size, number of non-finite float voxels), streaming in 4 MiB chunks."""
    size = n_bad = 0
    pending = b""  # voxel bytes not yet decoded (a float split across two chunks)
    try:
        with opener(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                start, size = size, size + len(chunk)
                if float_dtype is None:
                    continue
                lo, hi = max(offset - start, 0), min(offset + n_bytes - start, len(chunk))
                if lo >= hi:
                    continue
                pending += chunk[lo:hi]
                usable = len(pending) - len(pending) % float_dtype.itemsize
                values = np.frombuffer(pending[:usable], dtype=float_dtype)
                n_bad += int(values.size - np.count_nonzero(np.isfinite(values)))
                pending = pending[usable:]
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(
            f"{path} is truncated or damaged ({exc}); an interrupted copy or download? "
            "Copy the file again from its source.") from exc
    return size, n_bad


def _nifti_pixdim(header: bytes) -> tuple[float, ...] | None:
    """The spatial voxel sizes ``pixdim[1..3]`` (x, y, z) of a NIfTI-1/2 header, or None."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            ndim = struct.unpack(endian + "h", header[40:42])[0]
            values = struct.unpack(endian + "8f", header[76:108])
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            ndim = struct.unpack(endian + "q", header[16:24])[0]
            values = struct.unpack(endian + "8d", header[104:168])
            break
    else:
        return None
    if ndim < 3:
        return None
    return tuple(float(v) for v in values[1:4])


def _nifti_layout(header: bytes) -> tuple[int, int, np.dtype | None] | None:
    """(voxel offset, voxel bytes, float dtype or None) of a NIfTI-1/2 header; None if not NIfTI."""
    if len(header) < 348:
        return None
    for endian in "<>":
        sizeof_hdr = struct.unpack(endian + "i", header[:4])[0]
        if sizeof_hdr == 348:
            datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
            dims = struct.unpack(endian + "8h", header[40:56])
            vox_offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if sizeof_hdr == 540 and len(header) >= 540:
            datatype, bitpix = struct.unpack(endian + "2h", header[12:16])
            dims = struct.unpack(endian + "8q", header[16:80])
            vox_offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return None
    ndim = dims[0]
    if not 1 <= ndim <= 7 or bitpix <= 0:
        return None
    n_voxels = int(np.prod([max(int(d), 1) for d in dims[1:ndim + 1]], dtype=np.int64))
    float_dtype = {16: np.dtype(endian + "f4"), 64: np.dtype(endian + "f8")}.get(datatype)
    return max(vox_offset, 348), n_voxels * bitpix // 8, float_dtype


def _guard_memory(size_xyz: Any, pixel_id: int, components: int, source: Path) -> None:
    """Refuse (InputError with the estimate) an image too big for the memory available."""
    try:
        itemsize = sitk.GetArrayViewFromImage(sitk.Image([1] * 3, pixel_id)).itemsize
    except RuntimeError:
        itemsize = 8
    shape_zyx = tuple(int(s) for s in size_xyz)[::-1]
    check_memory(estimate_read_bytes(shape_zyx, itemsize * max(int(components), 1)),
                 f"reading {source.name} ({' x '.join(map(str, shape_zyx))} voxels, z y x)")


def _sitk_to_volume(image: Any, source: Path, meta: dict[str, Any]) -> Volume:
    """Check a SimpleITK image (3D, scalar, finite) and wrap it as a Volume."""
    size_zyx = tuple(int(s) for s in image.GetSize())[::-1]
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{source} has {image.GetNumberOfComponentsPerPixel()} values per voxel (a colour or "
            f"vector image, shape {size_zyx}); iunet_nb needs a scalar 3D CT or mask")
    if image.GetDimension() != 3:
        hint = ("select one 3D volume of the series (e.g. one time point)"
                if image.GetDimension() > 3
                else "a 2D slice cannot be segmented in 3D; use the whole 3D series")
        raise InputError(f"{source} is a {image.GetDimension()}D image with shape {size_zyx} "
                         f"(SimpleITK order reversed); expected 3D (z, y, x): {hint}")
    try:
        geometry = Geometry.from_sitk(image)
    except GeometryError as exc:
        raise GeometryError(f"{source}: {exc}") from exc
    array = sitk.GetArrayFromImage(image)
    if array.dtype.kind == "f":
        n_bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if n_bad:
            raise InputError(
                f"{source} has {n_bad} NaN or infinite voxel(s) of {array.size}; replace them "
                "(e.g. with the background value) before using the image")
    return Volume(array, geometry, meta)


def _check_wrapped_hu(array: np.ndarray, source: Path) -> None:
    """InputError for signed HU stored as unsigned 16-bit (integer overflow: -1000 -> 64536).

    The signature: unsigned 16-bit voxels of which at least 5 % lie in 63488..65535, i.e.
    -2048..-1 when read as signed (air and fat), which no unsigned scanner range produces.
    """
    if array.dtype != np.uint16 or not array.size or int(array.max()) <= _INT16.max:
        return
    wrapped = int(np.count_nonzero(array >= 63488))
    if wrapped >= 0.05 * array.size:
        raise InputError(
            f"{source}: {wrapped} of {array.size} voxels are 63488..65535 in an unsigned 16-bit "
            "image: signed HU stored as unsigned (an integer overflow: -1000 HU became 64536). "
            "Fix the file's pixel type (e.g. SimpleITK Cast to sitkInt16, or PixelRepresentation "
            "1 in DICOM) or its rescale intercept, then read it again")


def hu_problem(array: np.ndarray, source: str | os.PathLike = "the CT") -> str | None:
    """Why ``array`` cannot be a body CT in Hounsfield units, or None when it can.

    A body CT always holds air (-1000 HU) or fat (about -100 HU), and nothing beyond
    -32768..65535 (int16 padding to extended-scale metal). Caught: a constant image; values
    of another scale (1e30 floats); no negative value at all (an 8-bit 0..255 picture, or
    scanner values stored without the rescale intercept, i.e. HU + 1024).

    Example:
        >>> hu_problem(np.array([0, 128, 255], np.uint8), "shot.png")[:37]
        'shot.png: voxel values 0..255 hold no'
    """
    if not array.size:
        return None
    lo, hi = float(np.min(array)), float(np.max(array))
    what = f"{source}: voxel values {lo:g}..{hi:g}"
    if lo == hi:
        return (f"{source}: every voxel is {lo:g}: a blank image, nothing to segment; check "
                "that it is the CT (not an empty export)")
    if lo < _INT16.min or hi > 65535:
        return (f"{what} are not Hounsfield units (a CT lies within -32768..65535); convert "
                "the image to HU before using it")
    if lo >= 0:
        guess = ("an 8-bit picture (a screenshot or display export)" if hi <= 255 else
                 "scanner values without the rescale intercept (HU + 1024?)")
        return (f"{what} hold no negative value, but air (-1000) and fat (-100) are negative "
                f"in Hounsfield units: {guess}, not HU. Export the CT in HU (e.g. apply "
                "RescaleSlope/RescaleIntercept) and read it again")
    return None


def _check_hu_range(array: np.ndarray, source: Path) -> None:
    """InputError for values of no CT scale (1e30); a warning for the other HU problems
    (a segmentation of such an image comes out empty or wrong)."""
    problem = hu_problem(array, source)
    if problem is None:
        return
    if "are not Hounsfield units" in problem:
        raise InputError(problem)
    logger.warning("%s", problem)


def _to_ct_dtype(array: np.ndarray) -> np.ndarray:
    """int16 when every value is an integer within int16, else float32."""
    if array.dtype == np.int16:
        return array
    if array.dtype.kind == "b":
        return array.astype(np.int16)
    if array.dtype.kind in "iu":
        if array.size and (array.min() < _INT16.min or array.max() > _INT16.max):
            return array.astype(np.float32)
        return array.astype(np.int16)
    if array.dtype.kind == "f":
        lo, hi = float(array.min()), float(array.max())
        if lo >= _INT16.min and hi <= _INT16.max and np.array_equal(array, np.round(array)):
            return array.astype(np.int16)
        return array.astype(np.float32)
    raise InputError(f"unsupported voxel type {array.dtype}; expected integer or float CT values")


def _read_file(path: Path) -> Volume:
    """Read a single-file (or header + data) image with SimpleITK; checks as in read_image."""
    ext = _extension(path)
    if ext in (".nii", ".nii.gz"):
        _check_nifti(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(
            f"cannot read {path} as an image ({_sitk_reason(exc)}); supported: {_SUPPORTED_TEXT}. "
            "If it is one of these, the file may be truncated or damaged: copy it again."
        ) from exc
    io_name = sitk.ImageFileReader.GetImageIOFromFileName(str(path))
    _guard_memory(reader.GetSize(), reader.GetPixelID(), reader.GetNumberOfComponents(), path)
    if io_name == "GDCMImageIO":
        raise InputError(
            f"{path} is a single DICOM file; pass the folder that holds the whole series "
            f"({path.parent}) to read it as a 3D image")
    if not ext:
        logger.debug("reading %s with SimpleITK's %s (not a listed extension)", path, io_name)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        reason = _sitk_reason(exc)
        if "bad direction" in str(exc).lower():
            raise GeometryError(
                f"{path} has a singular direction matrix in its header (determinant 0: two image "
                "axes point the same way); fix the header's orientation (e.g. in 3D Slicer) "
                "and save it again") from exc
        if "spacing" in reason.lower():
            said = _header_spacing_line(path)
            raise GeometryError(
                f"{path} has a voxel spacing of zero or not a number in its header"
                f"{f' ({said})' if said else ''}; fix the header (e.g. in 3D Slicer, or "
                "SimpleITK SetSpacing) and save it again") from exc
        raise InputError(
            f"cannot read the voxels of {path} ({reason}); the file is truncated or damaged "
            "(an interrupted copy or download?): copy it again from its source") from exc
    fmt = _FORMATS.get(ext, io_name.replace("ImageIO", "").lower())
    return _sitk_to_volume(image, path, {"source": str(path), "format": fmt})


def _header_spacing_line(path: Path) -> str:
    """The spacing line of a text header (MetaImage ``ElementSpacing``, NRRD ``spacings`` or
    ``space directions``), as written, or ``''``."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8192).decode("latin-1")
    except OSError:
        return ""
    for line in head.splitlines():
        key = line.split("=")[0].split(":")[0].strip().lower()
        if key in ("elementspacing", "spacings", "space directions"):
            return line.strip()[:120]
    return ""


# ----------------------------------------------------------------------------- DICOM
@contextlib.contextmanager
def _extracted_zip(path: Path, prefix: str = "") -> Iterator[Path]:
    """Extract the members of ``path`` under ``prefix`` into a temporary folder (removed after)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path} is not a readable .zip file ({exc}); copy it again") from exc
    with archive:
        members = []
        for info in archive.infolist():
            name = info.filename
            if info.is_dir() or not name.startswith(prefix) or "__MACOSX" in name:
                continue
            parts = PurePosixPath(name).parts
            if PurePosixPath(name).is_absolute() or ".." in parts or ":" in parts[0]:
                raise InputError(f"{path} has an unsafe member name {name!r}; refusing to extract")
            members.append((info, parts))
        _check_zip_size(path, [info for info, _ in members])
        with tempfile.TemporaryDirectory(prefix="iunet_nb_zip_") as tmp:
            root = Path(tmp)
            for info, parts in members:
                target = root.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                _extract_member(archive, info, target, path)
            logger.debug("extracted %d member(s) of %s to %s", len(members), path, root)
            yield root


#: Most bytes a ``.zip`` may expand to (a 2000-slice 1024 x 1024 CT series is about 4 GiB).
MAX_ZIP_BYTES = 4 << 30
#: Most files a ``.zip`` may hold (one per slice, several series).
MAX_ZIP_MEMBERS = 20_000
#: Above this many bytes, a ``.zip`` more compressed than :data:`MAX_ZIP_RATIO` is refused:
#: CT slices compress 2-4x; a small file that expands to gigabytes is an archive bomb.
ZIP_RATIO_ABOVE_BYTES = 512 << 20
MAX_ZIP_RATIO = 200


def _check_zip_size(path: Path, members: list[zipfile.ZipInfo]) -> None:
    """InputError before extracting when ``members`` would expand too far (a zip bomb)."""
    total = sum(info.file_size for info in members)
    packed = sum(info.compress_size for info in members)
    unzip = "If it really is one CT series, unzip it yourself and give the folder"
    if len(members) > MAX_ZIP_MEMBERS:
        raise InputError(f"{path} holds {len(members)} files, more than the {MAX_ZIP_MEMBERS} "
                         f"a DICOM series zip may hold; refusing to extract it. {unzip}")
    if total > MAX_ZIP_BYTES:
        raise InputError(f"{path} would expand to {total / 2**30:.1f} GiB, more than the "
                         f"{MAX_ZIP_BYTES / 2**30:.1f} GiB cap on an archive (a zip bomb?); "
                         f"refusing to extract it. {unzip}")
    if total > ZIP_RATIO_ABOVE_BYTES and total > MAX_ZIP_RATIO * max(packed, 1):
        raise InputError(f"{path} would expand {total / max(packed, 1):.0f}-fold, to "
                         f"{total / 2**20:.0f} MiB (more than {MAX_ZIP_RATIO}-fold above "
                         f"{ZIP_RATIO_ABOVE_BYTES >> 20} MiB: a zip bomb?); refusing to extract "
                         f"it. {unzip}")
    free = _free_bytes(Path(tempfile.gettempdir()))
    if free is not None and total > free:
        raise InputError(f"{path} would expand to {total / 2**20:.0f} MiB, but the temporary "
                         f"folder {tempfile.gettempdir()} has {free / 2**20:.0f} MiB free; free "
                         "space there (or set TMPDIR to a larger disk), or unzip it yourself "
                         "and give the folder")


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _extract_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path,
                    path: Path) -> None:
    """Copy one member, never more bytes than its header declares (checked by the caller)."""
    written = 0
    try:
        with archive.open(info) as src, open(target, "wb") as dst:
            while chunk := src.read(1 << 22):
                written += len(chunk)
                if written > info.file_size:
                    raise InputError(f"{path}: member {info.filename!r} expands beyond the "
                                     f"{info.file_size} bytes its header declares (a zip "
                                     "bomb?); refusing it")
                dst.write(chunk)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InputError(f"the temporary folder {tempfile.gettempdir()} ran out of space "
                             f"while extracting {path}; free space there (or set TMPDIR to a "
                             "larger disk), or unzip it yourself and give the folder") from exc
        raise InputError(f"{path}: member {info.filename!r} is damaged ({exc}); copy the zip "
                         "again") from exc
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: member {info.filename!r} is damaged ({exc}); copy the zip "
                         "again") from exc


def _find_series(folder: Path) -> dict[str, list[tuple[Path, list[str]]]]:
    """DICOM series under ``folder``: {series UID: [(folder, position-sorted files), ...]}.

    The folder itself is searched first; only when it holds no series are its subfolders
    searched (so a zip with a top folder, or a patient folder, still works).
    """
    def scan(d: Path) -> dict[str, list[tuple[Path, list[str]]]]:
        found: dict[str, list[tuple[Path, list[str]]]] = {}
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d)):
            files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(d), uid))
            if files:
                found.setdefault(uid, []).append((d, files))
        return found

    series = scan(folder)
    if series:
        return series
    for dirpath, dirnames, _ in os.walk(folder):
        dirnames.sort()
        for name in dirnames:
            for uid, entries in scan(Path(dirpath) / name).items():
                series.setdefault(uid, []).extend(entries)
    return series


def _read_dicom_folder(folder: Path, series_uid: str | None, source: Path,
                       extra_meta: dict[str, Any] | None = None) -> Volume:
    if not any(p.is_file() for p in folder.rglob("*")):
        raise InputError(f"{source} is empty: no files to read; point at the folder (or .zip) "
                         "that holds the DICOM slices")
    series = _find_series(folder)
    if not series:
        raise InputError(
            f"no DICOM image series found in {source}; expected one DICOM file per slice "
            f"(names may lack an extension). For other files, supported: {_SUPPORTED_TEXT}")
    if series_uid is None:
        if len(series) > 1:
            listing = "; ".join(
                f"{uid} ({sum(len(f) for _, f in entries)} slices)"
                for uid, entries in sorted(series.items()))
            raise InputError(
                f"{source} holds {len(series)} DICOM series: {listing}. Pass "
                "series_uid=<one of these> to choose one")
        series_uid = next(iter(series))
    if series_uid not in series:
        raise InputError(f"series {series_uid!r} is not in {source}; it holds: "
                         f"{', '.join(sorted(series))}")
    entries = series[series_uid]
    if len(entries) > 1:
        folders = ", ".join(str(d.relative_to(folder)) for d, _ in entries)
        raise InputError(f"series {series_uid} of {source} is split over several folders "
                         f"({folders}); point at one of them")
    files = entries[0][1]
    if len(files) < 2:
        raise InputError(f"DICOM series {series_uid} in {source} has a single slice (a 2D "
                         "image); iunet_nb needs a 3D series of several slices")
    first = sitk.ImageFileReader()
    first.SetFileName(files[0])
    with contextlib.suppress(RuntimeError):  # an unreadable slice is reported below
        first.ReadImageInformation()
        rows_cols = tuple(int(s) for s in first.GetSize())[:2]
        # rescaled DICOM may come out as float32: assume 4 bytes per voxel
        _guard_memory((*rows_cols, len(files)), sitk.sitkFloat32, 1, source)
    # GDCM leaves a slice it cannot parse (e.g. truncated) out of every series: name it, as
    # otherwise the gap it leaves reads as 'a slice may be missing' (or, at an end, as nothing)
    listed = {str(Path(f)) for entries_ in series.values() for _, fs in entries_ for f in fs}
    unreadable = _unreadable_files(entries[0][0], listed)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        bad = _unreadable_files(entries[0][0], set(), only=files) or unreadable
        what = (f"slice file {_describe_files(bad, folder)} looks truncated or damaged "
                "(it cannot be read as DICOM); copy the series again from its source" if bad
                else f"{_sitk_reason(exc)}; a slice file may be damaged")
        raise InputError(f"cannot read DICOM series {series_uid} in {source}: {what}") from exc

    def tag(i: int, key: str) -> str | None:
        return reader.GetMetaData(i, key).strip() if reader.HasMetaDataKey(i, key) else None

    meta: dict[str, Any] = {"source": str(source), "format": "dicom", "series_uid": series_uid}
    for name, key in (("study_uid", _TAG_STUDY_UID), ("frame_of_reference_uid",
                      _TAG_FRAME_OF_REFERENCE_UID), ("modality", _TAG_MODALITY)):
        value = tag(0, key)
        if value:
            meta[name] = value
    sop = [tag(i, _TAG_SOP_INSTANCE_UID) for i in range(len(files))]
    if all(sop):
        meta["sop_instance_uids"] = sop
    meta.update(extra_meta or {})
    volume = _sitk_to_volume(image, source, meta)
    try:
        _check_slice_positions(reader, len(files), volume.geometry, source)
    except GeometryError as exc:
        if not unreadable:
            raise
        raise InputError(f"{source}: slice file {_describe_files(unreadable, folder)} looks "
                         "truncated or damaged: it cannot be read as DICOM, and the series has a "
                         "gap where a slice belongs; copy the series again from its source"
                         ) from exc
    if unreadable:
        logger.warning("%s: %s in the series' folder cannot be read as DICOM (truncated or "
                       "damaged?) and was left out; if it is a slice of this series, copy the "
                       "series again", source, _describe_files(unreadable, folder))
    return volume


def _unreadable_files(folder: Path, listed: set[str], only: Sequence[str] | None = None,
                      ) -> list[Path]:
    """Files in ``folder`` (or ``only``) that no series lists and ITK cannot read: empty, or
    starting as DICOM (the 'DICM' marker) or cut before the marker, and failing to read."""
    if only is None:
        candidates = [p for p in sorted(folder.iterdir()) if p.is_file()
                      and not p.name.startswith(".") and str(p) not in listed
                      and _looks_like_dicom(p)]
    else:
        candidates = [Path(f) for f in only]
    bad = []
    for p in candidates:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        try:
            reader.Execute()
        except RuntimeError:
            bad.append(p)
    return bad


def _looks_like_dicom(path: Path) -> bool:
    """Empty, shorter than the 132-byte preamble, or with 'DICM' at byte 128."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) < 132 or head[128:132] == b"DICM"


def _describe_files(paths: Sequence[Path], root: Path) -> str:
    def name(p: Path) -> str:
        try:
            rel = p.relative_to(root).as_posix()
        except ValueError:
            rel = p.name
        return f"{rel} ({p.stat().st_size} bytes)" if p.exists() else rel
    shown = ", ".join(name(p) for p in paths[:3])
    return shown + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def _check_slice_positions(reader: Any, n: int, geometry: Geometry, source: Path) -> None:
    """GeometryError for duplicate or unevenly spaced slices (e.g. a missing slice)."""
    positions = []
    for i in range(n):
        if not reader.HasMetaDataKey(i, _TAG_POSITION):
            return
        try:
            positions.append([float(v) for v in reader.GetMetaData(i, _TAG_POSITION).split("\\")])
        except ValueError:
            return
    normal = geometry.matrix[:, 2]
    along = np.asarray(positions) @ normal
    gaps = np.diff(along)
    spacing = geometry.spacing_mm[0]
    if np.any(np.abs(gaps) < 1e-3 * spacing):
        raise GeometryError(f"{source}: several slices share one position (two acquisitions in "
                            "one series?); split the series or remove the duplicates")
    if np.max(np.abs(np.abs(gaps) - spacing)) > _SLICE_GAP_RTOL * spacing:
        raise GeometryError(
            f"{source}: uneven slice spacing (gaps from {np.abs(gaps).min():.3f} to "
            f"{np.abs(gaps).max():.3f} mm, expected {spacing:.3f}); a slice may be missing. "
            "Resample the series to even spacing (e.g. in 3D Slicer) first")


# ----------------------------------------------------------------------------- readers
def read_image(path: str | os.PathLike, *, series_uid: str | None = None) -> Volume:
    """Read a 3D CT (or any scalar 3D image) with its geometry.

    Args:
        path: a NIfTI/NRRD/MetaImage file, a folder holding a DICOM series (searched
            recursively when the folder itself holds none), or a ``.zip`` of such a folder.
        series_uid: SeriesInstanceUID to read when a folder holds several series.

    Returns:
        Volume with ``array`` ``(z, y, x)`` in HU (rescale slope/intercept applied):
        ``int16`` when every value is an integer within int16, else ``float32``.
        ``meta`` holds ``source`` and ``format``; for DICOM also ``series_uid`` and, when
        present, ``study_uid``, ``frame_of_reference_uid``, ``modality`` and
        ``sop_instance_uids`` (one per slice, in array order).

    Raises:
        InputError: missing path, unreadable/truncated/non-image file, 2D or 4D image,
            NaN/inf voxels, empty folder, no DICOM, several series and no ``series_uid``;
            signed HU wrapped around in an unsigned 16-bit file; values beyond
            -32768..65535 (not HU; a constant image or one without negative values is
            logged as a warning, see :func:`hu_problem`); an image too big for the
            memory available (the message gives the estimate; see :mod:`iunet_nb.memory`).
        GeometryError: zero spacing, non-orthonormal direction, uneven DICOM slices.

    Example:
        >>> ct = read_image("ircadb/1.7/PATIENT_DICOM")  # doctest: +SKIP
        >>> ct.shape, ct.spacing_mm                      # doctest: +SKIP
        ((151, 512, 512), (1.6, 0.782, 0.782))
    """
    path = _require_exists(Path(path))
    if path.is_dir():
        volume = _read_dicom_folder(path, series_uid, path)
    elif _extension(path) == ".zip":
        with _extracted_zip(path) as folder:
            volume = _read_dicom_folder(folder, series_uid, path)
    else:
        if series_uid is not None:
            raise InputError(f"series_uid is for DICOM folders, but {path} is a single file")
        volume = _read_file(path)
    check_ct_spacing(volume.geometry, str(path))
    _check_wrapped_hu(volume.array, path)
    _check_hu_range(volume.array, path)
    array = _to_ct_dtype(volume.array)
    logger.info("read %s: shape %s, spacing %s mm, %s", path, array.shape,
                tuple(round(s, 4) for s in volume.spacing_mm), array.dtype)
    return Volume(array, volume.geometry, volume.meta)


def _read_any(path: str | os.PathLike) -> Volume:
    path = _require_exists(Path(path))
    if path.is_dir():
        return _read_dicom_folder(path, None, path)
    if _extension(path) == ".zip":
        with _extracted_zip(path) as folder:
            return _read_dicom_folder(folder, None, path)
    return _read_file(path)


def _integer_labels(volume: Volume, source: str | os.PathLike) -> np.ndarray:
    array = volume.array
    if array.dtype.kind == "b":
        return array.astype(np.uint8)
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise InputError(f"{source} is not a label map: it has non-integer values (a "
                         "probability map?); threshold it into labels first")
    return array


def read_mask(path: str | os.PathLike, *, label: int | None = None) -> Volume:
    """Read a binary mask: ``value == label`` when ``label`` is given, else ``value != 0``.

    Args:
        path: a label-map or mask file (or DICOM folder / zip), any format of :func:`read_image`.
        label: the label value of the target structure; None takes every nonzero voxel.

    Returns:
        Volume with ``uint8`` {0, 1} array ``(z, y, x)`` and the file's geometry;
        ``meta["label"]`` records ``label``. A label that does not occur gives an empty
        mask (logged as a warning).

    Raises:
        InputError / GeometryError: as :func:`read_image`; non-integer values.
    """
    volume = _read_any(path)
    labels = _integer_labels(volume, path)
    mask = (labels == label) if label is not None else (labels != 0)
    mask = mask.astype(np.uint8)
    if not mask.any():
        logger.warning("mask %s is empty (label %s)", path, label)
    label_meta = None if label is None else int(label)
    return Volume(mask, volume.geometry, {**volume.meta, "label": label_meta})


def read_label_map(path: str | os.PathLike) -> Volume:
    """Read an integer label map, labels kept.

    Returns:
        Volume with ``uint8`` labels when they all lie in 0..255, else ``int16``.

    Raises:
        InputError: non-integer values, or labels outside the int16 range; as :func:`read_image`.
    """
    volume = _read_any(path)
    labels = _integer_labels(volume, path)
    lo, hi = (int(labels.min()), int(labels.max()))
    if 0 <= lo and hi <= 255:
        out = labels.astype(np.uint8)
    elif _INT16.min <= lo and hi <= _INT16.max:
        out = labels.astype(np.int16)
    else:
        raise InputError(f"{path}: label values {lo}..{hi} do not fit int16; renumber the labels")
    return Volume(out, volume.geometry, volume.meta)


def _mask_series_root(zip_or_folder: Path) -> tuple[str, list[str], Path | None]:
    """(kind, organ names, folder) for a MASKS_DICOM zip or folder; kind is 'zip' or 'dir'."""
    zip_or_folder = _require_exists(zip_or_folder)
    if zip_or_folder.is_file():
        try:
            with zipfile.ZipFile(zip_or_folder) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise InputError(f"{zip_or_folder} is not a readable .zip file ({exc}); expected "
                             "3D-IRCADb's MASKS_DICOM.zip or its unzipped folder") from exc
        organs = set()
        for name in names:
            parts = PurePosixPath(name).parts
            if len(parts) >= 3 and not name.endswith("/") and "__MACOSX" not in parts:
                organs.add("/".join(parts[:-1]))
        return "zip", sorted(organs), None
    folder = zip_or_folder
    if (folder / "MASKS_DICOM").is_dir():
        folder = folder / "MASKS_DICOM"
    organs = sorted(p.name for p in folder.iterdir()
                    if p.is_dir() and not p.name.startswith(".") and any(p.iterdir()))
    return "dir", organs, folder


def list_dicom_mask_organs(zip_or_folder: str | os.PathLike) -> list[str]:
    """Organ names (sorted) in a 3D-IRCADb ``MASKS_DICOM.zip`` or ``MASKS_DICOM/`` folder.

    Args:
        zip_or_folder: the zip (``MASKS_DICOM/<organ>/image_*`` members), the unzipped
            ``MASKS_DICOM`` folder, or the patient folder holding ``MASKS_DICOM/``.

    Raises:
        InputError: missing path or unreadable zip.
    """
    kind, organs, _ = _mask_series_root(Path(zip_or_folder))
    if kind == "zip":
        return sorted({o.rsplit("/", 1)[-1] for o in organs})
    return organs


def read_dicom_mask_series(zip_or_folder: str | os.PathLike, organ: str) -> Volume:
    """Read one organ's binary DICOM mask series (3D-IRCADb ``MASKS_DICOM`` layout).

    From a zip only that organ's members are extracted (to a temporary folder, removed after).

    Args:
        zip_or_folder: ``MASKS_DICOM.zip``, the ``MASKS_DICOM`` folder, or its parent.
        organ: organ folder name as listed by :func:`list_dicom_mask_organs` (case-insensitive).

    Returns:
        Volume with ``uint8`` {0, 1} array ``(z, y, x)`` (nonzero voxels, e.g. 255, are 1),
        geometry from the series; ``meta["organ"]`` is the organ name.

    Raises:
        InputError: unknown organ (the message lists the available ones); as :func:`read_image`.
    """
    source = _require_exists(Path(zip_or_folder))
    kind, organs, folder = _mask_series_root(source)
    by_name = {o.rsplit("/", 1)[-1].lower(): o for o in organs}
    key = by_name.get(str(organ).lower())
    if key is None:
        available = sorted(o.rsplit("/", 1)[-1] for o in organs)
        raise InputError(f"no mask series {organ!r} in {source}; available: {available}")
    name = key.rsplit("/", 1)[-1]
    extra = {"organ": name}
    if kind == "zip":
        with _extracted_zip(source, prefix=key + "/") as tmp:
            volume = _read_dicom_folder(tmp.joinpath(*key.split("/")), None, source, extra)
    else:
        series_folder = Path(folder or source) / key
        volume = _read_dicom_folder(series_folder, None, series_folder, extra)
    mask = (_integer_labels(volume, source) != 0).astype(np.uint8)
    return Volume(mask, volume.geometry, volume.meta)


# ----------------------------------------------------------------------------- writers
def _writable(path: Path) -> None:
    if not any(path.name.lower().endswith(ext) for ext in WRITE_EXTENSIONS):
        raise InputError(f"cannot write {path.name!r}: the extension must be one of "
                         f"{', '.join(WRITE_EXTENSIONS)}")


def _write(volume: Volume, array: np.ndarray, path: Path) -> Path:
    _writable(path)
    image = volume.geometry.apply_to(sitk.GetImageFromArray(array))
    try:
        with atomic_path(path) as tmp:
            try:
                sitk.WriteImage(image, str(tmp), useCompression=True)
            except RuntimeError as exc:
                raise InputError(f"cannot write {path} ({_sitk_reason(exc)}){_space_hint(path)}"
                                 ) from exc
            _verify_written(tmp, array, volume.geometry, path)
    except OSError as exc:
        raise InputError(f"cannot write {path} ({exc.strerror or exc}); choose a folder you "
                         f"can write to{_space_hint(path)}") from exc
    logger.info("wrote %s: shape %s, %s", path, array.shape, array.dtype)
    return path


def _space_hint(path: Path) -> str:
    """``"; N MiB free there"`` (or a full-disk hint) for a failed write, ``""`` when unknown."""
    try:
        free = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free
    except OSError:
        return ""
    if free < (1 << 20):
        return f"; its file system is full ({free} bytes free): free space or write elsewhere"
    return f"; {free / 2**20:.0f} MiB free there"


def _nifti_is_short(path: Path) -> bool:
    """True when a NIfTI file holds fewer bytes than its header needs (ITK reads it anyway)."""
    compressed = path.name.lower().endswith(".gz")
    opener = gzip.open if compressed else open
    with opener(path, "rb") as fh:
        layout = _nifti_layout(fh.read(540))
    if layout is None:
        return True
    offset, n_bytes, _ = layout
    size = (_scan_nifti_voxels(path, opener, offset, n_bytes, None)[0] if compressed
            else path.stat().st_size)
    return size < offset + n_bytes


def _same_voxels(back: np.ndarray, array: np.ndarray) -> bool:
    """Equal voxels; NaN/inf written to NIfTI come back as 0 from ITK, so they are skipped."""
    if np.array_equal(back, array):
        return True
    if array.dtype.kind != "f":
        return False
    finite = np.isfinite(array)
    return bool(np.array_equal(back[finite], array[finite]))


def _verify_written(tmp: Path, array: np.ndarray, geometry: Geometry, path: Path) -> None:
    """InputError unless ``tmp`` reads back as ``array`` with ``geometry``.

    SimpleITK does not raise when a NIfTI or NRRD write fails part-way (a full disk, a quota):
    it leaves a short or empty file. Without this check the atomic rename would put that file
    over a good one. Costs one read of the file (about a third of the write for a mask).
    """
    kept = (f"; {path.name} was not changed" if path.exists() else "; nothing was written")
    size = tmp.stat().st_size
    problem = ""
    if size == 0:
        problem = "came out empty (0 bytes)"
    else:
        try:
            if _extension(path) in (".nii", ".nii.gz") and _nifti_is_short(tmp):
                raise InputError("short")
            back = sitk.ReadImage(str(tmp))
            if (tuple(back.GetSize())[::-1] != array.shape
                    or not Geometry.from_sitk(back).is_close(geometry, atol=1e-3)
                    or not _same_voxels(sitk.GetArrayViewFromImage(back), array)):
                problem = f"reads back different from what was written ({size} bytes)"
        except (InputError, RuntimeError, OSError, EOFError, zlib.error):
            problem = f"is truncated or unreadable after writing (it holds {size} bytes)"
    if problem:
        raise InputError(f"writing {path} failed: the file {problem}{kept}{_space_hint(path)}")


def write_image(volume: Volume, path: str | os.PathLike) -> Path:
    """Write ``volume`` (any numeric dtype; bool -> uint8, float16 -> float32) atomically.

    Args:
        volume: image with its geometry.
        path: output file ending in ``.nii``, ``.nii.gz``, ``.nrrd`` or ``.mha``.

    Returns:
        ``path`` as a Path.

    Raises:
        InputError: unsupported extension or voxel type.
    """
    array = volume.array
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)
    elif array.dtype.kind not in "iuf":
        raise InputError(f"cannot write voxels of type {array.dtype}; use an integer or float "
                         "array")
    return _write(volume, array, Path(path))


def write_mask(mask: Volume, path: str | os.PathLike) -> Path:
    """Write a mask (or label map) as ``uint8`` in the mask's own geometry, atomically.

    Args:
        mask: bool or integer labels in 0..255 (float arrays only with integer values).
        path: output file ending in ``.nii``, ``.nii.gz``, ``.nrrd`` or ``.mha``.

    Returns:
        ``path`` as a Path. The file opens aligned with its CT in ITK-SNAP / 3D Slicer
        when ``mask`` has the CT's geometry (see :func:`check_same_grid`).

    Raises:
        InputError: unsupported extension; values outside 0..255 or non-integer.
    """
    array = _integer_labels(mask, "mask")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise InputError(f"mask values {array.min()}..{array.max()} do not fit uint8 (0..255); "
                         "a mask holds 0/1 (or small label numbers)")
    return _write(mask, array.astype(np.uint8), Path(path))


def check_same_grid(a: Volume, b: Volume, what: str = "mask", *, atol_mm: float = 1e-3) -> None:
    """Raise GeometryError unless ``b`` lies on the grid of ``a`` (shape and geometry).

    Args:
        a: the reference (usually the CT).
        b: the volume that must match (``what`` names it in the message).
        what: what ``b`` is, for the message.
        atol_mm: tolerance on spacing and origin (mm) and direction (unitless).

    Raises:
        GeometryError: shape, spacing, origin or direction differ; the message gives both.
    """
    same_shape = a.shape == b.shape
    if same_shape and a.geometry.is_close(b.geometry, atol=atol_mm):
        return

    def describe(v: Volume) -> str:
        g = v.geometry
        return (f"shape {v.shape}, spacing {tuple(round(s, 4) for s in g.spacing_mm)} mm, origin "
                f"{tuple(round(o, 3) for o in g.origin_mm)}, direction "
                f"{tuple(round(d, 3) for d in g.direction)}")

    raise GeometryError(
        f"the {what} is not on the image's grid: image has {describe(a)}; {what} has "
        f"{describe(b)}. Resample the {what} onto the image (nearest neighbour) or use the "
        "matching image")
