"""The linear projections of a LLaMA decoder layer, by name (no torch import: the training schema uses
them): all seven are the default targets of the training configs; the MLP ones are (IA)3's feedforward
modules, which scale their input."""

LLAMA_ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
LLAMA_MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
LLAMA_PROJECTIONS = LLAMA_ATTENTION_PROJECTIONS + LLAMA_MLP_PROJECTIONS

# The paper's budget: LoRA rank 64 on LLaMA-2-7B's seven projections (Table 3), SpIEL at the same count.
PAPER_RANK = 64
LLAMA2_7B_DIMS = {
    "hidden": 4096,
    "intermediate": 11008,
    "layers": 32,
    "heads": 32,
    "kv_heads": 32,
    "vocab": 32000,
}


def paper_density() -> float:
    """Tunable entries / target weights of LoRA rank 64 on LLaMA-2-7B's seven projections (≈ 0.0247)."""
    h, m, layers = LLAMA2_7B_DIMS["hidden"], LLAMA2_7B_DIMS["intermediate"], LLAMA2_7B_DIMS["layers"]
    shapes = [(h, h)] * 4 + [(m, h), (m, h), (h, m)]  # q k v o (32 key/value heads), gate up down: (out, in)
    return PAPER_RANK * layers * sum(o + i for o, i in shapes) / (layers * sum(o * i for o, i in shapes))
