"""Synthetic CT from label maps, and how real it looks.

:mod:`~iunet_nb.synth.generator` (CT from a label map, the bundled sample),
:mod:`~iunet_nb.synth.phantom` (a procedural abdomen, no data needed),
:mod:`~iunet_nb.synth.phases` (contrast phases and scanner ranges; their public names
re-exported here), :mod:`~iunet_nb.synth.realism` (statistics against real CT) and
:mod:`~iunet_nb.synth.domain_gap` (the synthetic-to-real experiment).
"""

from .generator import (  # noqa: F401
    BTCV,
    GENERATOR_VERSION,
    PHANTOM_LABELS,
    TISSUE,
    SynthCase,
    SynthConfig,
    load_sample,
    synthesize,
    synthesize_ct,
)
from .phantom import grow_liver_to_spleen, make_phantom, phantom_labels  # noqa: F401
from .phases import PHASES, phase_config  # noqa: F401

__all__ = [
    "BTCV",
    "GENERATOR_VERSION",
    "PHANTOM_LABELS",
    "PHASES",
    "SynthCase",
    "SynthConfig",
    "TISSUE",
    "grow_liver_to_spleen",
    "load_sample",
    "make_phantom",
    "phantom_labels",
    "phase_config",
    "synthesize",
    "synthesize_ct",
]
