"""SpIEL checkpoints by Hub repo id (offline, from a local Hub cache laid out as huggingface_hub writes
it) and push_to_hub (only huggingface_hub's HfApi calls are stubbed: the Hub is unreachable here)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import huggingface_hub
import pytest
import torch

from spiel import SpielConfig, SpielModel, compose, get_spiel_model
from spiel.checkpoint.format import CONFIG_NAME, DELTA_NAME
from spiel.eval.loader import CheckpointError, load_for_eval
from spiel.io.base_model import load_base_model
from spiel.io.hub import split_revision
from spiel.testing import tiny_model, tiny_tokenizer

REPO = "someorg/tiny-spiel"


def trained_looking(seed: int = 0) -> SpielModel:
    """A delta large enough to change the tiny model's outputs, on the base named "tiny" (as spiel-train
    records it, so spiel-eval finds the base without model=)."""
    model = get_spiel_model(
        load_base_model("tiny", dtype="float32", device="cpu"), SpielConfig(rank_equiv=4, seed=seed)
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.deltas.values():
            layer.values.copy_(torch.randn(layer.k, generator=gen) * 0.05)
    return model


def put_in_hub_cache(cache: Path, repo_id: str, folder: Path, refs=("main",)) -> str:
    """``folder`` as a snapshot of ``repo_id`` in the layout huggingface_hub writes: blobs named by their
    hash, snapshots/<commit>/ of relative links to them, refs/<name> holding the commit."""
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    files = sorted(p for p in folder.iterdir() if p.is_file())
    commit = hashlib.sha1(b"".join(p.read_bytes() for p in files)).hexdigest()
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in files:
        data = path.read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo_dir / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo_dir / "refs" / ref).write_text(commit)
    return commit


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf_home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert huggingface_hub.constants.HF_HUB_OFFLINE  # tests/conftest.py
    return cache


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_loads_by_repo_id_offline_like_its_directory(tmp_path, hub_cache):
    trained_looking().save_pretrained(tmp_path / "ckpt", tokenizer=tiny_tokenizer())
    commit = put_in_hub_cache(hub_cache, REPO, tmp_path / "ckpt", refs=("main", "v1"))
    ids = torch.randint(4, 250, (2, 12), generator=torch.Generator().manual_seed(0))
    want = logits(SpielModel.from_pretrained(tiny_model(), tmp_path / "ckpt"), ids)
    assert not torch.allclose(want, logits(tiny_model(), ids))  # the delta matters
    for revision in (None, "v1", commit):
        got = logits(SpielModel.from_pretrained(tiny_model(), REPO, revision=revision), ids)
        assert torch.equal(got, want), revision
    composed = compose([f"{REPO}@v1"], tiny_model())
    torch.testing.assert_close(logits(composed, ids), want, rtol=1e-5, atol=1e-5)


def test_missing_repo_or_revision_fails_clearly(tmp_path, hub_cache):
    trained_looking().save_pretrained(tmp_path / "ckpt")
    put_in_hub_cache(hub_cache, REPO, tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE=1 and it is not in the local Hub cache"):
        SpielModel.from_pretrained(tiny_model(), "someorg/absent")
    with pytest.raises(FileNotFoundError, match="at revision 'nope'"):
        SpielModel.from_pretrained(tiny_model(), REPO, revision="nope")
    with pytest.raises(ValueError, match="is a local directory"):
        SpielModel.from_pretrained(tiny_model(), tmp_path / "ckpt", revision="v1")
    with pytest.raises(CheckpointError, match="ckpt=someorg/absent@v2: .*at revision 'v2'"):
        load_for_eval("someorg/absent@v2", device="cpu")


def test_a_local_directory_wins_over_the_hub(tmp_path, hub_cache, monkeypatch):
    trained_looking(seed=1).save_pretrained(tmp_path / "ckpt")
    put_in_hub_cache(hub_cache, REPO, tmp_path / "ckpt")
    local = tmp_path / REPO  # a directory with the repo id's name
    trained_looking(seed=2).save_pretrained(local)
    monkeypatch.chdir(tmp_path)
    ids = torch.randint(4, 250, (1, 8), generator=torch.Generator().manual_seed(1))
    got = logits(SpielModel.from_pretrained(tiny_model(), REPO), ids)
    assert torch.equal(got, logits(SpielModel.from_pretrained(tiny_model(), local), ids))
    assert split_revision(f"{REPO}@v1") == (REPO, "v1")
    (tmp_path / "a@b").mkdir()
    assert split_revision("a@b") == ("a@b", None)


@pytest.mark.slow
def test_spiel_eval_by_repo_id_scores_like_the_directory(tmp_path):
    """Through the real CLI in a fresh process, with the cache found through HF_HOME."""
    trained_looking().save_pretrained(tmp_path / "ckpt", tokenizer=tiny_tokenizer())
    hf_home = tmp_path / "hf_home"
    put_in_hub_cache(hf_home / "hub", REPO, tmp_path / "ckpt", refs=("main", "v1"))
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_CACHE"}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", HYDRA_FULL_ERROR="0")

    def run(name, *args):
        out = subprocess.run(
            [
                "spiel-eval",
                *args,
                "bench=demo",
                f"eval.output_dir={tmp_path / name}",
                "eval.limit=6",
                "eval.progress=false",
                "eval.device=cpu",
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return (
            json.loads((tmp_path / name / "metrics.json").read_text()),
            (tmp_path / name / "predictions.jsonl").read_text(),
        )

    by_dir = run("dir", f"ckpt={tmp_path / 'ckpt'}")
    by_id = run("id", f"ckpt={REPO}")  # no model=: the checkpoint names its base
    by_rev = run("rev", f"ckpt={REPO}@v1")
    base = run("base", "ckpt=null", "model=tiny")
    assert by_id == by_dir and by_rev == by_dir
    assert base[1] != by_dir[1]  # the delta changes the predictions, so equality above means something
    info = json.loads((tmp_path / "id" / "run_info.json").read_text())
    assert info["ckpt"] == [REPO] and info["base"] == "tiny"


def test_push_to_hub_uploads_exactly_the_delta_and_a_card(tmp_path, monkeypatch):
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        copy = tmp_path / f"uploaded{len(calls)}"
        shutil.copytree(folder_path, copy)  # the folder is temporary: keep what was sent
        calls.append(("upload_folder", repo_id, copy, kwargs))
        return "commit-info"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(
        type(tiny_model()), "push_to_hub", lambda *a, **k: pytest.fail("the base model was pushed")
    )
    model = trained_looking()
    assert (
        model.push_to_hub(REPO, tokenizer=tiny_tokenizer(), private=True, metrics={"demo_exact_match": 0.5})
        == "commit-info"
    )

    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    assert calls[0][1] == REPO and calls[0][2]["private"] is True
    sent = calls[1][2]
    model.save_pretrained(tmp_path / "saved", tokenizer=tiny_tokenizer())
    expected = sorted(p.name for p in (tmp_path / "saved").iterdir()) + ["README.md"]
    assert sorted(p.name for p in sent.iterdir()) == sorted(expected)
    for name in (CONFIG_NAME, DELTA_NAME):
        assert (sent / name).read_bytes() == (tmp_path / "saved" / name).read_bytes()
    size = sum(p.stat().st_size for p in sent.iterdir())
    assert size < sum(p.numel() * p.element_size() for p in tiny_model().parameters()) / 4
    card = (sent / "README.md").read_text()
    assert "base_model: tiny" in card and "SpIEL-AG" in card and "demo_exact_match | 0.5" in card
    assert f'SpielModel.from_pretrained(base, "{REPO}")' in card
    reloaded = SpielModel.from_pretrained(tiny_model(), sent)
    assert all(
        torch.equal(a, b)
        for a, b in zip(reloaded.delta_state().values(), model.delta_state().values(), strict=True)
    )


def test_push_of_a_run_directory_reads_its_data_and_metrics(tmp_path, monkeypatch):
    sent = {}
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: None)
    monkeypatch.setattr(
        huggingface_hub.HfApi,
        "upload_folder",
        lambda self, *, repo_id, folder_path, **kw: sent.update(
            files=sorted(p.name for p in Path(folder_path).iterdir()),
            card=(Path(folder_path) / "README.md").read_text(),
        ),
    )
    run = tmp_path / "run"
    trained_looking().save_pretrained(run / "final")
    (run / "final" / "checkpoint_complete.json").write_text("{}")  # spiel-train's marker: not uploaded
    (run / "summary.json").write_text(
        json.dumps({"final_checkpoint": str(run / "final"), "steps": 40, "final_loss": 1.2345})
    )
    (run / "config.yaml").write_text("data:\n  name: demo\n")
    from spiel.io.hub import push_checkpoint

    push_checkpoint(run / "final", REPO)
    assert sent["files"] == sorted([CONFIG_NAME, DELTA_NAME, "README.md"])
    assert "| data | `demo` |" in sent["card"] and "| final_loss | 1.234 |" in sent["card"]
    assert "| steps | 40 |" in sent["card"]
    with pytest.raises(FileNotFoundError, match="not a complete SpIEL checkpoint"):
        push_checkpoint(run, REPO)


def test_checkpoint_records_the_base_commit_and_eval_loads_that_commit(tmp_path, hub_cache):
    """The base repo's main branch moved on to other weights: spiel-eval must load the commit the
    delta was trained on (recorded in the checkpoint), or the weight check would refuse the base."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from spiel.testing import TINY_MODEL_DIR

    base_repo = "someorg/tiny-base"
    trained_on = put_in_hub_cache(hub_cache, base_repo, TINY_MODEL_DIR, refs=())
    torch.manual_seed(0)
    other = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY_MODEL_DIR))
    other.save_pretrained(tmp_path / "other")
    tiny_tokenizer().save_pretrained(tmp_path / "other")
    put_in_hub_cache(hub_cache, base_repo, tmp_path / "other", refs=("main",))

    base = load_base_model(base_repo, dtype="float32", device="cpu", revision=trained_on)
    model = get_spiel_model(base, SpielConfig(rank_equiv=4))
    model.save_pretrained(tmp_path / "ckpt", tokenizer=tiny_tokenizer())
    recorded = json.loads((tmp_path / "ckpt" / CONFIG_NAME).read_text())["base_model"]
    assert recorded["name_or_path"] == base_repo and recorded["revision"] == trained_on
    put_in_hub_cache(hub_cache, REPO, tmp_path / "ckpt")

    loaded = load_for_eval(REPO, device="cpu", dtype="float32")  # no model=, no revision=
    assert loaded.info["base"] == base_repo and loaded.info["ckpt"] == [REPO]
    ids = torch.randint(4, 250, (1, 8), generator=torch.Generator().manual_seed(2))
    want = logits(
        SpielModel.from_pretrained(
            load_base_model(str(TINY_MODEL_DIR), dtype="float32", device="cpu"), tmp_path / "ckpt"
        ).merge_and_unload(),
        ids,
    )
    torch.testing.assert_close(logits(loaded.model, ids), want)
    from spiel.model.spiel_model import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError, match="the base weights differ"):
        load_for_eval(REPO, device="cpu", dtype="float32", revision="main")


@pytest.mark.parametrize(
    "revision",
    [
        "../../../../x",
        "main/../../x",
        ".hidden",
        "v1..v2",
        "a//b",
        "v1/",
        "/abs",
        "a b",
        "x.lock",
        "-rf",
        "v1:2",
        "",
        "a\\b",
    ],
)
def test_a_revision_that_is_not_a_commit_or_ref_name_is_refused_before_any_lookup(
    hub_cache, revision, monkeypatch
):
    from spiel.io.model_source import RevisionError

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("looked up"))
    with pytest.raises(RevisionError, match="is not a commit hash .* or a valid branch/tag name"):
        SpielModel.from_pretrained(tiny_model(), REPO, revision=revision)
    if revision:  # ckpt=org/name@<revision> (an empty one means no revision)
        with pytest.raises(CheckpointError, match=f"ckpt={REPO}@.*is not a commit hash"):
            load_for_eval(f"{REPO}@{revision}", device="cpu")


def test_a_revision_path_cannot_reach_a_checkpoint_outside_the_cache(tmp_path, hub_cache):
    """The attack: refs/<revision> read outside the cache names a directory loaded as the repo."""
    trained_looking(seed=1).save_pretrained(tmp_path / "ckpt")
    put_in_hub_cache(hub_cache, REPO, tmp_path / "ckpt")
    trained_looking(seed=2).save_pretrained(tmp_path / "planted")
    repo_dir = hub_cache / f"models--{REPO.replace('/', '--')}"
    (tmp_path / "x").write_text(os.path.relpath(tmp_path / "planted", repo_dir / "snapshots"))
    revision = os.path.relpath(tmp_path / "x", repo_dir / "refs")
    with pytest.raises(CheckpointError, match="is not a commit hash"):
        load_for_eval(f"{REPO}@{revision}", device="cpu")


@pytest.mark.parametrize("revision", ["main", "v1.0", "refs/pr/1", "release_2-b+c", "a" * 40, "0123abcd" * 5])
def test_commit_hashes_and_ref_names_pass_the_revision_check(revision):
    from spiel.io.model_source import check_revision

    assert check_revision(revision) == revision and check_revision(None) is None


def test_a_base_model_name_cannot_inject_card_metadata():
    from huggingface_hub import ModelCard

    from spiel.io.hub import model_card

    evil = "org/base\nlicense: mit\npipeline_tag: text-generation\n---\nfake: body"
    saved = {"base_model": {"name_or_path": evil}, "spiel_config": {"method": "ag"}, "modules": {}}
    card = ModelCard(model_card(saved, REPO))
    assert card.data.to_dict() == {
        "library_name": "spiel",
        "tags": ["spiel", "sparse-fine-tuning"],
        "base_model": evil,
    }
    assert "load_base_model('org/base\\nlicense: mit" in card.text  # a Python string literal in the snippet
