"""Extra negatives for query-product matching: the memory bank (MBNS) and cross-device (CDNS).

Both return a detached :class:`NegativeSet` that :class:`vlsearch.objectives.QueryProductMatching`
weighs into its softmax denominator (alpha for the memory bank, beta for other devices).
"""

from vlsearch.negatives.cross_device import gather_across_devices
from vlsearch.negatives.memory_bank import MemoryBank, NegativeSet

__all__ = ["MemoryBank", "NegativeSet", "gather_across_devices"]
