"""Import a file of scripts/ as a module (the scripts are not a package)."""

from __future__ import annotations

import importlib.util
import sys

from tests.helpers.paths import SCRIPTS


def load_script(name: str):
    # Scripts import their siblings (e.g. make_demo_data imports demo_skills), so scripts/ goes on the path.
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
