"""Fixtures of the HumanEval sandbox tests."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def victim():
    """A file anyone may write, in a directory anyone may enter and write (only the sandbox protects it)."""
    folder = tempfile.mkdtemp(prefix="spiel-victim-")
    os.chmod(folder, 0o777)
    path = Path(folder) / "precious.txt"
    path.write_text("keep me")
    os.chmod(path, 0o666)
    yield path
    shutil.rmtree(folder, ignore_errors=True)
