"""Server strategies: Flower's robust aggregators, wrapper defenses, and the factory.

`DEFENSES` (strategies/factory.py) names every defense; a new one is a Flower strategy (or a
`StrategyWrapper`) in its own module here, registered there with `@defense(...)`.
"""

from strategies.base import RoundNotes, StrategyWrapper
from strategies.clipping import NormClipping, clip_factors
from strategies.factory import DEFENSES, build_strategy, inner_names
from strategies.validation import ReplyValidator

__all__ = ["DEFENSES", "NormClipping", "ReplyValidator", "RoundNotes", "StrategyWrapper", "build_strategy",
           "clip_factors", "inner_names"]
