"""Conversions of the raw paper datasets' records into canonical conversations (whole files: `prepare`).

* Flan v2 (`inputs`/`targets`): as open-instruct's `convert_flan_v2_data`: the prompt gets a "\\n"
  appended unless it already ends in "\\n" or (ignoring trailing whitespace) in ":".
* GPT4-Alpaca (`instruction`/`input`/`output`): one template from `alpaca_templates`, drawn by weight
  with a RNG seeded by (seed, record index), so each record's choice does not depend on file order
  or on how the work is split over processes.
"""

from __future__ import annotations

import random

from spiel.data.alpaca_templates import WITH_INPUT, WITHOUT_INPUT


def flan_to_messages(inputs: str, targets: str, index: int) -> dict:
    prompt = inputs
    if not prompt.endswith("\n") and not prompt.rstrip().endswith(":"):
        prompt += "\n"
    return {
        "dataset": "flan_v2",
        "id": f"flan_v2_{index}",
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": targets}],
    }


def pick_alpaca_template(has_input: bool, index: int, seed: int = 42) -> str:
    table = WITH_INPUT if has_input else WITHOUT_INPUT
    rng = random.Random(f"{seed}:{index}")  # str seeds hash deterministically (not via PYTHONHASHSEED)
    return rng.choices([t for _, t in table], weights=[w for w, _ in table], k=1)[0]


def alpaca_to_messages(instruction: str, input_text: str, output: str, index: int, seed: int = 42) -> dict:
    instruction, input_text = instruction.strip(), (input_text or "").strip()
    template = pick_alpaca_template(bool(input_text), index, seed)
    prompt = template.format(instruction=instruction, input=input_text)
    return {
        "dataset": "gpt4_alpaca",
        "id": f"gpt4_alpaca_{index}",
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}],
    }
