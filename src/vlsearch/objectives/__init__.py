"""Training objectives, one ``nn.Module`` each: QPM (matching), MPM (masked patch), MLM, QPC,
TIA (title-image alignment).

Each module takes tensors the towers produce and returns a scalar loss (QPM returns a
:class:`MatchingOutput` with its statistics); the trainer weighs them with the ``w_*``
fields of :class:`vlsearch.config.TrainConfig`.
"""

from vlsearch.objectives.alignment import TitleImageAlignment
from vlsearch.objectives.classification import UNKNOWN_CATEGORY, AMSoftmaxClassifier
from vlsearch.objectives.masked_language import IGNORE_INDEX, MaskedLanguageModeling, mask_tokens
from vlsearch.objectives.masked_patch import (
    ContrastiveMaskedPatch,
    RegressionMaskedPatch,
    masked_patch_objective,
)
from vlsearch.objectives.matching import MatchingOutput, QueryProductMatching, Temperature

__all__ = [
    "IGNORE_INDEX",
    "UNKNOWN_CATEGORY",
    "AMSoftmaxClassifier",
    "ContrastiveMaskedPatch",
    "MaskedLanguageModeling",
    "MatchingOutput",
    "QueryProductMatching",
    "RegressionMaskedPatch",
    "Temperature",
    "TitleImageAlignment",
    "mask_tokens",
    "masked_patch_objective",
]
