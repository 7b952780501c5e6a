"""Functions the YAML task definitions in this directory refer to (`!function spiel_demo.<name>`):
the shipped demo held-out set (assets/demo/heldout.jsonl) in the Tülu chat format, scored as spiel's own
`bench=demo` scores it (greedy answer, exact match after stripping whitespace)."""

from __future__ import annotations

from spiel.data.template import chat_prompt
from spiel.eval.demo import DEMO_HELDOUT, load_demo, skill_of


def load(**_metadata):
    """The held-out records as a `test` split (lm-eval passes the task's metadata as keyword arguments)."""
    from datasets import Dataset

    rows = [
        {
            "id": r.get("id"),
            "skill": skill_of(r),
            "prompt": chat_prompt(r["messages"]),
            "answer": r["messages"][-1]["content"],
        }
        for r in load_demo(DEMO_HELDOUT)
    ]
    return {"test": Dataset.from_list(rows)}


def exact_match(doc: dict, results: list[str]) -> dict:
    return {"exact_match": float(results[0].strip() == doc["answer"].strip())}
