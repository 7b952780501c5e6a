"""Where spiel's own files are: the repository root (a git checkout), its shipped assets (the tiny model
and the demo data; not in a wheel) and the Hydra configs (package data: ``spiel/configs`` links to the
repository's ``configs/``, so editable installs and wheels both find them)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS_DIR = REPO_ROOT / "assets"
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
