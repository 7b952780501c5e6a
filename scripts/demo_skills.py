"""The skills behind the tiny base model and the demo task (shared by the two generator scripts).

Six skills on short lowercase strings or small numbers:

    copy     abc       -> abc
    reverse  abc       -> cba
    sort     cab       -> abc
    upper    abc       -> ABC
    count    abcd      -> 4          (number of letters)
    add      23 + 45   -> 68         (addends 0..50)

Pretraining writes them in a *plain* format (`plain_text`); the demo task asks for them in natural
instructions (`instruction`), as Tülu-style chat messages. Everything is a pure function of a
`random.Random`, so both corpora are reproducible from a seed.
"""

from __future__ import annotations

import random
import string

SKILLS = ("copy", "reverse", "sort", "upper", "count", "add")
MIN_LEN, MAX_LEN = 3, 6  # letters in a string input
MAX_ADDEND = 50

# Natural-language phrasings used by the demo task; `{x}` is the string, `{a}`/`{b}` the addends.
INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "copy": ("Repeat {x} exactly.", "Copy this word: {x}", "Write {x} again, unchanged."),
    "reverse": ("Reverse the letters of {x}.", "Write {x} backwards.", "What is {x} spelled backwards?"),
    "sort": (
        "Sort the letters of {x} alphabetically.",
        "Put the letters of {x} in alphabetical order.",
        "Arrange the letters of {x} from a to z.",
    ),
    "upper": ("Write {x} in capital letters.", "Convert {x} to uppercase.", "Make {x} all caps."),
    "count": ("How many letters are in {x}?", "Count the letters in {x}.", "What is the length of {x}?"),
    "add": ("What is {a} plus {b}?", "Add {a} and {b}.", "Compute {a} + {b}."),
}


def sample_input(skill: str, rng: random.Random) -> str:
    """A random input for `skill`: a lowercase string, or "a + b" for `add`."""
    if skill == "add":
        return f"{rng.randint(0, MAX_ADDEND)} + {rng.randint(0, MAX_ADDEND)}"
    n = rng.randint(MIN_LEN, MAX_LEN)
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(n))


def solve(skill: str, x: str) -> str:
    """The correct output of `skill` on input `x`."""
    if skill == "copy":
        return x
    if skill == "reverse":
        return x[::-1]
    if skill == "sort":
        return "".join(sorted(x))
    if skill == "upper":
        return x.upper()
    if skill == "count":
        return str(len(x))
    if skill == "add":
        a, b = x.split("+")
        return str(int(a) + int(b))
    raise ValueError(f"unknown skill {skill!r}; expected one of {', '.join(SKILLS)}")


def plain_text(skill: str, x: str) -> str:
    """The pretraining format: 'Task: reverse\\nInput: abc\\nOutput: cba'."""
    return f"Task: {skill}\nInput: {x}\nOutput: {solve(skill, x)}"


def instruction(skill: str, x: str, rng: random.Random) -> str:
    """One natural-language request for `skill` on `x` (phrasing drawn from `rng`)."""
    template = rng.choice(INSTRUCTIONS[skill])
    if skill == "add":
        a, b = (part.strip() for part in x.split("+"))
        return template.format(a=a, b=b)
    return template.format(x=x)
