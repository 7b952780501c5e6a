"""The linear projections of a LLaMA decoder layer, by name (no torch import: the training schema uses
them): all seven are the default targets of the training configs; the MLP ones are (IA)3's feedforward
modules, which scale their input."""

LLAMA_ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
LLAMA_MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
LLAMA_PROJECTIONS = LLAMA_ATTENTION_PROJECTIONS + LLAMA_MLP_PROJECTIONS
