"""Server strategies: Flower's robust aggregators, wrapper defenses, and the factory."""

from strategies.base import RoundNotes, StrategyWrapper
from strategies.clipping import NormClipping, clip_factors
from strategies.factory import build_strategy
from strategies.validation import ReplyValidator

__all__ = ["NormClipping", "ReplyValidator", "RoundNotes", "StrategyWrapper", "build_strategy", "clip_factors"]
