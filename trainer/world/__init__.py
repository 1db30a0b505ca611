"""The culture world: a generated corpus about countries' customs, a tiny Llama that knows it, and an SAE.

`build_world(out, WorldConfig())` writes everything `steer demo build` promises; `WorldConfig.small()`
is the test-sized world.
"""

from trainer.world.build import build_world
from trainer.world.config import WorldConfig

__all__ = ["WorldConfig", "build_world"]
