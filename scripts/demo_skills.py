"""The skills behind the tiny base model and the demo task (shared by the two generator scripts).

Six skills on short lowercase strings or small numbers:

    copy     abc       -> abc
    reverse  abc       -> cba
    sort     cab       -> abc
    upper    abc       -> ABC
    count    abcd      -> 4          (number of letters)
    add      7 + 5     -> 12         (single digits)

Pretraining states them as plain text (`plain_text`): the canonical record format
"Task: reverse\nInput: abc\nOutput: cba", or one of a few declarative sentences ("The reverse of abc is
cba.", "7 plus 5 is 12."), like facts in web text. The demo task *asks* for them in natural
instructions (`instruction`: imperatives and questions, never used in pretraining) as Tülu-style chat
messages. Everything is a pure function of a `random.Random`, so both corpora are reproducible.
"""

from __future__ import annotations

import random
import string

SKILLS = ("copy", "reverse", "sort", "upper", "count", "add")
MIN_LEN, MAX_LEN = 3, 6  # letters in a string input
MAX_ADDEND = 9

# Plain statements used in pretraining besides the "Task/Input/Output" record; `{y}` is the answer.
STATEMENTS: dict[str, tuple[str, ...]] = {
    "copy": ("A copy of {x} is {y}.", "{x} copied is {y}."),
    "reverse": ("The reverse of {x} is {y}.", "{x} backwards is {y}."),
    "sort": ("{x} sorted is {y}.", "The letters of {x} in alphabetical order are {y}."),
    "upper": ("{x} in capital letters is {y}.", "The uppercase of {x} is {y}."),
    "count": ("{x} has {y} letters.", "The length of {x} is {y}."),
    "add": ("{a} + {b} = {y}", "{a} plus {b} is {y}.", "The sum of {a} and {b} is {y}."),
}
RECORD_SHARE = 0.4  # fraction of pretraining documents in the Task/Input/Output record format

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


def record_text(skill: str, x: str) -> str:
    """The canonical plain record: 'Task: reverse\\nInput: abc\\nOutput: cba'."""
    return f"Task: {skill}\nInput: {x}\nOutput: {solve(skill, x)}"


def _fill(template: str, skill: str, x: str, **extra) -> str:
    if skill == "add":
        a, b = (part.strip() for part in x.split("+"))
        return template.format(a=a, b=b, **extra)
    return template.format(x=x, **extra)


def plain_text(skill: str, x: str, rng: random.Random) -> str:
    """One pretraining document: the record format (share RECORD_SHARE) or a plain statement."""
    if rng.random() < RECORD_SHARE:
        return record_text(skill, x)
    return _fill(rng.choice(STATEMENTS[skill]), skill, x, y=solve(skill, x))


def instruction(skill: str, x: str, rng: random.Random) -> str:
    """One natural-language request for `skill` on `x` (phrasing drawn from `rng`)."""
    return _fill(rng.choice(INSTRUCTIONS[skill]), skill, x)
