"""Synthetic CT from label maps, and how real it looks.

:mod:`~iunet_nb.synth.generator` (CT from a label map, the bundled sample),
:mod:`~iunet_nb.synth.phantom` (a procedural abdomen, no data needed) and
:mod:`~iunet_nb.synth.phases` (contrast phases and scanner ranges): their public names are
re-exported here. :mod:`~iunet_nb.synth.realism` (statistics against real CT) and
:mod:`~iunet_nb.synth.domain_gap` (the synthetic-to-real experiment).
"""

from . import generator as _generator
from . import phantom as _phantom
from . import phases as _phases
from .generator import *  # noqa: F401,F403 - re-exported: iunet_nb.synth.<name>
from .phantom import *  # noqa: F401,F403 - re-exported: iunet_nb.synth.<name>
from .phases import *  # noqa: F401,F403 - re-exported: iunet_nb.synth.<name>

__all__ = list(_generator.__all__) + list(_phantom.__all__) + list(_phases.__all__)
