"""SpIEL's drop/grow selection: the update-rate schedule, drop and growth rules, and the Selector.

Needs only torch (torch.distributed for multi-rank agreement).
"""

from .concentration import budget_shares, model_concentration, support_concentration
from .drop import DROP_CRITERIA, drop_order
from .grow import ag_grow_order, ma_grow_indices, top_candidates
from .methods import GROWTH_RULES, METHODS, method_spec
from .schedule import SCHEDULES, ReselectionSchedule
from .selector import Selector

__all__ = [
    "DROP_CRITERIA",
    "GROWTH_RULES",
    "METHODS",
    "SCHEDULES",
    "ReselectionSchedule",
    "Selector",
    "ag_grow_order",
    "budget_shares",
    "drop_order",
    "method_spec",
    "model_concentration",
    "support_concentration",
    "ma_grow_indices",
    "top_candidates",
]
