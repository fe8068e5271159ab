"""Shared fixtures: tiny synthetic volumes with anisotropic spacing, and the shared data."""

from __future__ import annotations

import importlib.util
import locale
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from iunet_nb.io.volume import Geometry, Volume
from iunet_nb.model.checkpoint import ModelCard
from iunet_nb.model.nets import NetConfig, build_network
from iunet_nb.model.preprocess import PreprocessConfig

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _restore_locale():
    """GDCM's DICOM *writer* (used by tests to make DICOM series) switches the process to the C
    locale, which makes Python's default text encoding ASCII for every later test."""
    saved = locale.setlocale(locale.LC_ALL)
    yield
    locale.setlocale(locale.LC_ALL, saved)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """Tiny convolutions run up to 20x slower with 2 threads on a busy 2-core machine; the
    environment variable carries the same setting into notebook kernels papermill starts."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def card() -> ModelCard:
    """Card of a tiny iUnet (base 4 channels) on an 8 x 16 x 16 working grid."""
    return ModelCard(net=NetConfig(base_channels=4),
                     preprocess=PreprocessConfig(size_zyx=(8, 16, 16)))


@pytest.fixture
def model(card: ModelCard) -> torch.nn.Module:
    """The tiny iUnet of ``card``, seeded, in eval mode (untrained)."""
    torch.manual_seed(0)
    return build_network(card.net).eval()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests that need it are skipped with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (see ../shared/data/README.md)")
    return SHARED_DATA


def make_ellipsoid(shape=(24, 32, 32), center=None, radii=(6.0, 8.0, 10.0)) -> np.ndarray:
    """uint8 ellipsoid mask ``(z, y, x)``; radii in voxels."""
    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    c = center if center is not None else [(n - 1) / 2 for n in shape]
    r = ((zz - c[0]) / radii[0]) ** 2 + ((yy - c[1]) / radii[1]) ** 2 + ((xx - c[2]) / radii[2]) ** 2
    return (r <= 1.0).astype(np.uint8)


@pytest.fixture
def geometry() -> Geometry:
    """Anisotropic, off-origin, axis-permuted geometry: catches (x, y, z) / (z, y, x) mix-ups."""
    return Geometry(spacing_mm=(2.5, 0.8, 0.7), origin_mm=(-120.0, 35.5, 410.0),
                    direction=(1, 0, 0, 0, -1, 0, 0, 0, 1))


@pytest.fixture
def ellipsoid_case(geometry: Geometry) -> tuple[Volume, Volume]:
    """A 24 x 32 x 32 CT-like volume (HU) with a bright ellipsoid 'organ' and its mask."""
    rng = np.random.default_rng(0)
    mask = make_ellipsoid()
    ct = np.full(mask.shape, -50.0, dtype=np.float32)
    ct[mask > 0] = 120.0
    ct += rng.normal(0, 10, size=ct.shape).astype(np.float32)
    return Volume(ct, geometry), Volume(mask, geometry)


def stored_otherwise(v: Volume) -> Volume:
    """The same physical image stored x-first and reversed in two axes (SimpleITK)."""
    import SimpleITK as sitk

    return Volume.from_sitk(sitk.Flip(sitk.PermuteAxes(v.to_sitk(), [1, 2, 0]), [True, False, True]))


def back_on(reference: Volume, moved: Volume) -> np.ndarray:
    """``moved`` resampled (nearest neighbour) onto ``reference``'s grid with SimpleITK."""
    import SimpleITK as sitk

    img = moved.to_sitk()
    return sitk.GetArrayFromImage(sitk.Resample(img, reference.to_sitk(), sitk.Transform(),
                                                sitk.sitkNearestNeighbor, 0, img.GetPixelID()))


def load_script(name: str) -> Iterator[ModuleType]:
    """``scripts/<name>.py`` imported as a module (for a module-scoped fixture: yield from it);
    removed from ``sys.modules`` afterwards."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_script", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)
