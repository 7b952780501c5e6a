"""Memory planning: what a training run needs per GPU, from the model's config alone (no weights).

from spiel.planning import ModelShape, RunPlan, estimate
shape = ModelShape.from_name("meta-llama/Llama-2-7b-hf")
report = estimate(shape, RunPlan(method="ag", rank_equiv=64, dtype="bfloat16"))
"""

from spiel.planning.memory import Estimate, RunPlan, cheapest_fit, estimate
from spiel.planning.shapes import ModelShape

__all__ = ["Estimate", "ModelShape", "RunPlan", "cheapest_fit", "estimate"]
