"""SpIEL's drop/grow selection: the update-rate schedule, drop and growth rules, and the Selector.

Needs only torch (torch.distributed for multi-rank agreement).
"""

from spiel.selection.concentration import budget_shares, model_concentration, support_concentration
from spiel.selection.drop import DROP_CRITERIA, drop_order
from spiel.selection.grow import ag_grow_order, ma_grow_indices, top_candidates
from spiel.selection.methods import GROWTH_RULES, METHODS, method_spec
from spiel.selection.schedule import SCHEDULES, ReselectionSchedule
from spiel.selection.selector import Selector

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
