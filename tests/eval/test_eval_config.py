"""spiel-eval's keys are checked before anything is read (type, range, unknown keys, `+` included), and a
-m sweep with a failed job exits non-zero listing it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers.paths import EVAL_FIXTURES

BAD = [
    (["eval.limit=-1"], "eval.limit: must be a whole number >= 1"),
    (["eval.limit=0"], "eval.limit: must be a whole number >= 1"),  # the boundary: 1 is the least
    (["eval.limit=nan"], "eval.limit: must be a whole number >= 1"),
    (["eval.limit=2.5"], "eval.limit: must be a whole number >= 1"),
    (["+eval.foo=1"], "eval.foo: not a known key"),
    (["+foo=1"], "foo: not a known key"),
    (["+model.trust_remote_code=true"], "model.trust_remote_code: not a known key"),
    (["+bench.foo=1"], "bench.foo: not a known key"),
    (["eval.batch_size=0"], "eval.batch_size: must be a whole number >= 1"),
    (["eval.batch_size=true"], "eval.batch_size: must be a whole number >= 1"),
    (["eval.device=gpu"], "eval.device: must be auto, cpu, cuda or cuda:N"),
    (["eval.progress=3"], "eval.progress: must be true or false"),
    (["seed=1.5"], "seed: must be a whole number"),
    (["model.dtype=int8"], "model.dtype: must be one of"),
    (["bench=gsm", "bench.n_shot=-1"], "bench.n_shot: must be a whole number >= 0"),
    (["bench=gsm", "bench.max_new_tokens=0"], "bench.max_new_tokens: must be a whole number >= 1"),
    (["bench=humaneval", "bench.top_p=1.5"], r"bench.top_p: must be in \(0, 1\]"),
    (["bench=humaneval", "bench.temperature=-0.1"], "bench.temperature: must be >= 0"),
    (
        ["bench=humaneval", "bench.sandbox.memory_mb=0"],
        "bench.sandbox.memory_mb: must be a whole number >= 1",
    ),
    (["bench=humaneval", "bench.sandbox.timeout=nan"], "bench.sandbox.timeout: must be a finite number"),
    (["bench=humaneval", "+bench.sandbox.foo=1"], "bench.sandbox.foo: not a known key"),
]


@pytest.mark.parametrize("overrides,shown", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_a_bad_eval_key_is_refused_before_anything_loads(tmp_path, monkeypatch, capsys, overrides, shown):
    import re

    import spiel.cli.eval as eval_cli

    monkeypatch.setattr(eval_cli, "load_for_eval", lambda *a, **k: pytest.fail("loaded a model"))
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "spiel-eval",
            "model=tiny",
            f"hydra.run.dir={tmp_path / 'run'}",
            f"eval.data_dir={EVAL_FIXTURES}",
            *overrides,
        ],
    )
    with pytest.raises(SystemExit) as exit_:
        eval_cli.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and re.search(shown, err) and "Traceback" not in err, err


@pytest.mark.parametrize(
    "overrides",
    [
        ["eval.limit=1"],
        ["eval.limit=null"],
        ["bench=gsm", "bench.n_shot=0"],
        ["bench=humaneval", "bench.top_p=1.0", "bench.temperature=0.0"],
    ],
)
def test_values_at_the_boundaries_pass(overrides):
    from hydra import compose, initialize_config_dir

    from spiel.eval.config_check import check_eval_config
    from spiel.paths import CONFIG_DIR

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        check_eval_config(compose("eval", overrides=["model=tiny", *overrides]))


def test_a_sweep_with_a_failed_job_exits_non_zero_and_lists_it(tmp_path):
    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "spiel.cli.eval",
            "-m",
            "model=tiny",
            "eval.limit=2",
            "eval.progress=false",
            "eval.device=cpu",
            f"eval.data_dir={tmp_path / 'no-data'}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "bench=demo,mmlu",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert out.returncode == 1, out.stderr[-3000:]
    assert "1 sweep job(s) failed: 1_mmlu" in out.stderr, out.stderr[-3000:]
    assert (tmp_path / "sweep" / "0_demo" / "metrics.json").is_file()  # the other job still ran
    assert "MissingDataError" in (tmp_path / "sweep" / "1_mmlu" / "error.txt").read_text()
