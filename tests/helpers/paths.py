"""Where the tests find the repository, its scripts, the test fixtures and the subprocess workers."""

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
SCRIPTS = REPO / "scripts"
DATA_FIXTURES = TESTS / "fixtures" / "data"  # training-data files in each supported format, and broken ones
EVAL_FIXTURES = TESTS / "fixtures" / "eval"  # small benchmark files in the benchmarks' real layouts
WORKERS = TESTS / "workers"  # scripts the tests run as subprocesses (python WORKERS / "resume_worker.py" ...)
