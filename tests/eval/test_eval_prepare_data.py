"""scripts/prepare_eval_data.py lays the benchmarks' archives out as spiel-eval reads them (no network:
the archives are built here in the original layouts and passed with --archive-dir)."""

from __future__ import annotations

import importlib.util
import io
import json
import tarfile
import zipfile

import pytest

from spiel.eval import bbh, gsm, mmlu, tydiqa
from tests.helpers.paths import EVAL_FIXTURES, REPO

spec = importlib.util.spec_from_file_location("prepare_eval_data", REPO / "scripts" / "prepare_eval_data.py")
prep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prep)


def _add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def archives(tmp_path):
    d = tmp_path / "dl"
    d.mkdir()
    with tarfile.open(d / "data.tar", "w") as tar:
        for split in ("dev", "test"):
            for path in (EVAL_FIXTURES / "mmlu" / split).glob("*.csv"):
                _add(tar, f"data/{split}/{path.name}", path.read_bytes())
        _add(tar, "data/auxiliary_train/race.csv", b"q,a,b,c,d,A\n")
    (d / "test.jsonl").write_bytes((EVAL_FIXTURES / "gsm" / "test.jsonl").read_bytes())
    with zipfile.ZipFile(d / "BIG-Bench-Hard-main.zip", "w") as zf:
        zf.writestr("BIG-Bench-Hard-main/", "")  # GitHub's archives list their directories too
        zf.writestr("BIG-Bench-Hard-main/README.md", "readme")
        zf.writestr("BIG-Bench-Hard-main/bbh/extra/notes.json", "{}")  # deeper than a task file: not laid out
        for sub, ext in (("bbh", "json"), ("cot-prompts", "txt")):
            zf.writestr(f"BIG-Bench-Hard-main/{sub}/", "")
            for path in (EVAL_FIXTURES / "bbh" / sub).glob(f"*.{ext}"):
                zf.writestr(f"BIG-Bench-Hard-main/{sub}/{path.name}", path.read_bytes())
    for split in ("dev", "train"):
        name = f"tydiqa-goldp-v1.1-{split}.json"
        (d / name).write_bytes((EVAL_FIXTURES / "tydiqa" / name).read_bytes())
    return d


def test_archives_are_laid_out_as_the_loaders_read_them(tmp_path, archives, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("tried to download")

    monkeypatch.setattr(prep.urllib.request, "urlopen", no_network)
    out = tmp_path / "eval"
    rc = prep.main(["--data-dir", str(out), "--archive-dir", str(archives)])
    assert rc == 1  # laid out, but the fixtures are not the full benchmarks: --check reports it
    assert not (out / "mmlu" / "auxiliary_train").exists()
    assert mmlu.subjects(out) == mmlu.subjects(EVAL_FIXTURES)
    assert gsm.load_gsm(out, None) == gsm.load_gsm(EVAL_FIXTURES, None)
    assert bbh.load_tasks(out) == bbh.load_tasks(EVAL_FIXTURES)
    assert sorted(p.name for p in (out / "bbh" / "bbh").iterdir()) == [
        f"{t}.json" for t in bbh.task_names(EVAL_FIXTURES)
    ]
    assert bbh.load_cot_prompt(out, "date_understanding") == bbh.load_cot_prompt(
        EVAL_FIXTURES, "date_understanding"
    )
    assert tydiqa.load_tydiqa(out) == tydiqa.load_tydiqa(EVAL_FIXTURES)
    problems = prep.check("gsm", out)
    assert problems and "expected 1319" in problems[0]


def test_check_accepts_complete_looking_data(tmp_path):
    gsm_dir = tmp_path / "gsm"
    gsm_dir.mkdir()
    (gsm_dir / "test.jsonl").write_text(
        "".join(json.dumps({"question": "q", "answer": "#### 1"}) + "\n" for _ in range(1319))
    )
    assert prep.check("gsm", tmp_path) == []
    assert prep.main(["--data-dir", str(tmp_path), "--bench", "gsm", "humaneval", "--check"]) == 0


def test_archive_members_outside_the_archive_are_refused(tmp_path):
    with tarfile.open(tmp_path / "data.tar", "w") as tar:
        _add(tar, "data/../../evil.csv", b"x")
    with pytest.raises(ValueError, match="outside the archive"):
        mmlu.lay_out([tmp_path / "data.tar"], tmp_path / "out")
