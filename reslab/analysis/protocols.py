"""Named protocols for the paper's CIFAR experiments: how long each member trains, under which recipe,
and over how many seeds.

``full`` is the paper's (Sec. 4.2: 64k iterations, lr 0.1 divided by 10 at 32k and 48k); it needs a
GPU. ``short`` is the shortest budget measured that shows, on a 2-core CPU, the degradation problem
(Fig. 1), each ResNet far below its plain twin (Fig. 6), Table 6's order up to 44 layers and the
ResNets' layer responses below the plain nets' (Fig. 7); ResNet-56 below ResNet-44 and Fig. 7's
deeper-is-smaller beyond 32 layers need longer. ``medium``, the same for 10 epochs, shows both
(ResNet-20 > 32 > 44 > 56 in error and in response, three seeds; 7 epochs left ResNet-56 level with
ResNet-44); Table 6's three seeds take three to four hours on such a CPU. docs/results.md ("The
paper's evidence, the paper's way round") has the measurements, and says which claims each budget
shows and which it does not.

Why weight decay on BN in ``short``? The responses of Fig. 7 are, layer for layer, what each BN's scale
and shift make of a normalised input (reslab/analysis/responses.py), so they measure how far weight
decay pulled the scales down. The paper decayed every parameter; the fast recipe exempts BN, and then
the scales stay near 1 and the responses grow with depth, the opposite of Fig. 7.

Why not the paper's schedule, shortened? Cut to 2-3% of its length it drops the learning rate after
fewer than 3 epochs, before the deeper ResNets have caught up, so ResNet-56 ended far *behind*
ResNet-20 (47.3% vs 24.8% validation error at 1,920 iterations): the opposite of Table 6.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

EXPERIMENTS = ("degradation", "table6", "shortcuts")


@dataclass(frozen=True)
class Protocol:
    name: str
    recipe: str
    budget: float  # fraction of the recipe's own length (paper: 64k iterations; fast: 40 epochs)
    seeds: dict[str, int]  # per experiment; the spread between seeds is part of each claim
    about: str
    settings: dict[str, Any] = field(default_factory=dict)  # training settings it fixes (--set still wins)

    def seeds_for(self, experiment: str) -> int:
        return self.seeds[experiment]


SHORT_EPOCHS = 4  # of the fast recipe's 40 (one-cycle, so the schedule ends annealed whatever the length)
MEDIUM_EPOCHS = 10


def _fast_with_bn_decayed(name: str, epochs: int) -> Protocol:
    """The CPU protocols: the fast recipe cut to ``epochs``, with BN decayed as in the paper (Fig. 7
    measures the BN scales, see above)."""
    return Protocol(name, "fast", epochs / 40, {"degradation": 2, "table6": 3, "shortcuts": 2},
                    f"the fast recipe (one-cycle) for {epochs} epochs, with weight decay on every parameter "
                    "as in the paper", {"no_decay_bn_bias": False})


PROTOCOLS = {
    "short": _fast_with_bn_decayed("short", SHORT_EPOCHS),
    "medium": _fast_with_bn_decayed("medium", MEDIUM_EPOCHS),
    "full": Protocol("full", "paper", 1.0, {"degradation": 2, "table6": 5, "shortcuts": 2},
                     "the paper's recipe, 64k iterations (Sec. 4.2)"),
}

# Seeds when no protocol is named: Table 6 is about the spread, the others were one run each in the paper.
DEFAULT_SEEDS = {"degradation": 1, "table6": 3, "shortcuts": 1}


def protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ConfigError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}") from None
