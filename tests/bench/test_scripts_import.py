"""Every script under scripts/ imports (its module body runs; main does not), so a merge that renames or
removes a name a script uses fails here instead of when the script is next run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[2] / "scripts").glob("*.py"))


def test_the_scripts_are_found():
    assert len(SCRIPTS) >= 10 and any(p.name == "bench_quality.py" for p in SCRIPTS)


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_script_imports(path, monkeypatch):
    # As `python scripts/x.py` runs it: the script's own directory first on sys.path (its sibling imports).
    monkeypatch.syspath_prepend(str(path.parent))
    name = f"_script_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)  # scripts run main only under __name__ == "__main__"
    finally:
        del sys.modules[name]
    runnable = '__name__ == "__main__"' in path.read_text()
    assert not runnable or callable(getattr(module, "main", None)), f"{path.name} runs but has no main()"
