"""Contrast phases and scanner ranges for the generator (domain randomisation).

:func:`phase_config` gives :class:`~iunet_nb.synth.generator.SynthConfig` ranges for an
unenhanced, late arterial, portal-venous or delayed CT, optionally with wide noise, blur
and slice-thickness ranges (low-dose to sharp kernels, slices up to 5 mm); the bundled
iUnet of 2026-12-07 was fine-tuned on such cases.
"""

from __future__ import annotations

from ..errors import ConfigError
from .generator import Range, SynthConfig

__all__ = ["PHASES", "phase_config"]


_PHASE_HU: dict[str, dict[str, Range]] = {
    # Typical enhancement by phase ([1], [2] of the module docstring; Bae 2010 fig. 3-5):
    # unenhanced blood 35-50 HU; late arterial (pancreatic, ~40 s) bright aorta, pancreas at
    # its peak, kidney cortex far above the medulla, liver barely enhanced; delayed (3-5 min)
    # every enhancement converging to 80-140 HU, liver vessels near the liver.
    "non_contrast": dict(
        liver_hu=(50.0, 70.0), spleen_hu=(40.0, 55.0), pancreas_hu=(35.0, 50.0),
        kidney_hu=(28.0, 40.0), kidney_medulla_drop_hu=(0.0, 8.0), kidney_texture_sd_hu=(4.0, 8.0),
        aorta_hu=(35.0, 50.0), ivc_hu=(35.0, 50.0), portal_vein_hu=(35.0, 50.0),
        liver_vessel_delta_hu=(-20.0, -5.0), adrenal_hu=(10.0, 30.0), esophagus_hu=(35.0, 50.0),
        stomach_wall_hu=(35.0, 50.0), bowel_wall_hu=(30.0, 45.0), blood_pool_hu=(35.0, 50.0)),
    "arterial": dict(
        liver_hu=(60.0, 85.0), spleen_hu=(90.0, 140.0), pancreas_hu=(100.0, 150.0),
        kidney_hu=(170.0, 260.0), kidney_medulla_drop_hu=(80.0, 150.0),
        aorta_hu=(250.0, 400.0), ivc_hu=(60.0, 120.0), portal_vein_hu=(100.0, 160.0),
        liver_vessel_delta_hu=(20.0, 60.0), adrenal_hu=(50.0, 80.0),
        stomach_wall_hu=(90.0, 130.0), bowel_wall_hu=(80.0, 120.0),
        blood_pool_hu=(200.0, 350.0)),
    "portal_venous": {},
    "delayed": dict(
        liver_hu=(80.0, 100.0), spleen_hu=(80.0, 100.0), pancreas_hu=(60.0, 85.0),
        kidney_hu=(150.0, 220.0), kidney_medulla_drop_hu=(0.0, 15.0),
        aorta_hu=(100.0, 140.0), ivc_hu=(100.0, 140.0), portal_vein_hu=(100.0, 140.0),
        liver_vessel_delta_hu=(5.0, 25.0), stomach_wall_hu=(60.0, 90.0),
        bowel_wall_hu=(50.0, 80.0), blood_pool_hu=(100.0, 140.0)),
    # not a phase a scanner makes: every soft-tissue structure and vessel draws its HU from
    # one wide range, independently, so a structure's brightness says nothing about what it
    # is and a network must go by shape and context (SynthSeg's domain randomisation, here
    # within CT's soft-tissue window)
    "random": dict(
        liver_hu=(20.0, 200.0), spleen_hu=(20.0, 200.0), pancreas_hu=(20.0, 200.0),
        kidney_hu=(20.0, 260.0), kidney_medulla_drop_hu=(0.0, 120.0),
        kidney_texture_sd_hu=(3.0, 18.0), aorta_hu=(30.0, 350.0), ivc_hu=(30.0, 300.0),
        portal_vein_hu=(30.0, 300.0), liver_vessel_delta_hu=(-30.0, 80.0),
        adrenal_hu=(10.0, 120.0), esophagus_hu=(20.0, 120.0), stomach_wall_hu=(20.0, 160.0),
        gastric_content_hu=(-10.0, 60.0), bowel_wall_hu=(20.0, 160.0),
        bowel_content_hu=(-20.0, 80.0), muscle_hu=(20.0, 90.0), fat_hu=(-140.0, -60.0),
        blood_pool_hu=(30.0, 350.0), texture_sd_hu=(3.0, 15.0)),
}

PHASES: tuple[str, ...] = tuple(_PHASE_HU)
"""Contrast phases :func:`phase_config` knows; ``portal_venous`` is :class:`SynthConfig`'s own."""

_WIDE_QUALITY: dict[str, Range] = {
    # scanners, doses and kernels beyond the 3D-IRCADb-like defaults: low-dose or thin-slice
    # noise, soft and sharp kernels, slices up to 5 mm thick (profile sigma 2.1 mm)
    "noise_sd_hu": (5.0, 30.0), "psf_sigma_mm": (0.4, 1.3), "slice_sigma_mm": (0.4, 2.2),
    "noise_peak_per_mm": (0.1, 0.35), "texture_sd_hu": (3.0, 14.0),
}


def phase_config(phase: str, *, wide_quality: bool = False,
                 base: SynthConfig | None = None) -> SynthConfig:
    """The generator's ranges for a contrast phase (domain randomisation of appearance).

    Args:
        phase: one of :data:`PHASES`: ``non_contrast``, ``arterial``, ``portal_venous`` (the
            default config), ``delayed``, or ``random`` (every soft-tissue structure and
            vessel independently anywhere in 20-200 HU or so: appearance carries no label);
            the organ and vessel HU ranges change, the anatomy and every other range stay.
        wide_quality: also widen noise, blur (PSF and slice profile) and texture ranges to
            cover low-dose, sharp-kernel and thick-slice scans.
        base: the config to start from (default :class:`SynthConfig`).

    Raises:
        ConfigError: an unknown phase.

    Example:
        >>> phase_config("arterial").aorta_hu
        (250.0, 400.0)
    """
    import dataclasses

    if phase not in _PHASE_HU:
        raise ConfigError(f"unknown contrast phase {phase!r}; known: {', '.join(PHASES)}")
    changes: dict[str, Range] = dict(_PHASE_HU[phase])
    if wide_quality:
        changes.update(_WIDE_QUALITY)
    return dataclasses.replace(base or SynthConfig(), **changes)
