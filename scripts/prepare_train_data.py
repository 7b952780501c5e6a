#!/usr/bin/env python
"""Download the paper's three training sets and write them as canonical JSONL under data/processed/.

Needs internet (run it on a connected machine, then copy data/ over):

    python scripts/prepare_train_data.py                       # all three
    python scripts/prepare_train_data.py --only gpt4_alpaca    # one of tulu2, flan_v2, gpt4_alpaca
    python scripts/prepare_train_data.py --flan-raw            # Flan from the raw 50K inputs/targets file

Sources (the SpIEL paper's three instruction-tuning sets, as open-instruct prepares them):
* tulu2       hub allenai/tulu-v2-sft-mixture (326,154 conversations, already canonical)
* flan_v2     hub ostapeno/tulu_v2_flan_v2_subset (canonical), or with --flan-raw the raw resample
              flan_v2_resampled_50k.jsonl from the hub dataset repo hamishivi/tulu_mix_store, converted
* gpt4_alpaca alpaca_gpt4_data.json from the GPT-4-LLM GitHub repo (instruction/input/output), converted
The outputs are what configs/data/*.yaml point to when set to local paths.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

from spiel.data.prepare import convert_file
from spiel.data.records import RecordError, check_messages

TULU2_HUB = "allenai/tulu-v2-sft-mixture"
FLAN_HUB = "ostapeno/tulu_v2_flan_v2_subset"
FLAN_RAW_REPO, FLAN_RAW_FILE = "hamishivi/tulu_mix_store", "flan_v2_resampled_50k.jsonl"
ALPACA_URL = "https://github.com/Instruction-Tuning-with-GPT-4/GPT-4-LLM/raw/main/data/alpaca_gpt4_data.json"
OUTPUTS = {
    "tulu2": "tulu_v2/tulu_v2_data.jsonl",
    "flan_v2": "flan_v2/flan_v2_data.jsonl",
    "gpt4_alpaca": "gpt4_alpaca/gpt4_alpaca_data.jsonl",
}


# --- fetching (network; replaced by local stand-ins in tests) ---------------------------------------
def load_hub_dataset(hub_id: str):
    import datasets

    return datasets.load_dataset(hub_id, split="train")


def download_url(url: str, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    with urllib.request.urlopen(url) as response, open(tmp, "wb") as out:
        while chunk := response.read(1 << 20):
            out.write(chunk)
    tmp.replace(dst)
    return dst


def download_hub_file(repo: str, filename: str, dst_dir: Path) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo, filename, repo_type="dataset", local_dir=str(dst_dir)))


# --- conversion (offline; tested) --------------------------------------------------------------------
def export_conversations(rows, dst: Path, dataset: str) -> dict:
    """Write hub rows (dataset/id/messages) as canonical JSONL, skipping and counting invalid ones."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    counts = {"read": 0, "written": 0, "skipped": {}}
    tmp = dst.with_name(dst.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for index, row in enumerate(rows):
            counts["read"] += 1
            messages = row.get("messages")
            try:
                check_messages(messages)
            except RecordError as e:
                counts["skipped"][e.kind] = counts["skipped"].get(e.kind, 0) + 1
                continue
            record = {
                "dataset": row.get("dataset") or dataset,
                "id": row.get("id") or f"{dataset}_{index}",
                "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            }
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            counts["written"] += 1
    tmp.replace(dst)
    return counts


def prepare_tulu2(out_dir: Path, raw_dir: Path, flan_raw: bool = False) -> dict:
    return export_conversations(load_hub_dataset(TULU2_HUB), out_dir / OUTPUTS["tulu2"], "tulu_v2")


def prepare_flan_v2(out_dir: Path, raw_dir: Path, flan_raw: bool = False) -> dict:
    dst = out_dir / OUTPUTS["flan_v2"]
    if not flan_raw:
        return export_conversations(load_hub_dataset(FLAN_HUB), dst, "flan_v2")
    raw = download_hub_file(FLAN_RAW_REPO, FLAN_RAW_FILE, raw_dir / "flan_v2")
    return convert_file(raw, dst, fmt="flan_v2", dataset="flan_v2", on_bad_record="skip")


def prepare_gpt4_alpaca(out_dir: Path, raw_dir: Path, flan_raw: bool = False) -> dict:
    raw = raw_dir / "gpt4_alpaca" / "alpaca_gpt4_data.json"
    if not raw.exists():
        download_url(ALPACA_URL, raw)
    return convert_file(raw, out_dir / OUTPUTS["gpt4_alpaca"], fmt="alpaca", dataset="gpt4_alpaca", seed=42)


PREPARERS = {"tulu2": prepare_tulu2, "flan_v2": prepare_flan_v2, "gpt4_alpaca": prepare_gpt4_alpaca}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="data/processed", help="output folder (default: data/processed)")
    parser.add_argument(
        "--raw", default="data/raw_train", help="where raw downloads go (default: data/raw_train)"
    )
    parser.add_argument("--only", nargs="+", choices=sorted(PREPARERS), help="prepare only these datasets")
    parser.add_argument(
        "--flan-raw", action="store_true", help="build Flan v2 from the raw 50K inputs/targets file"
    )
    args = parser.parse_args(argv)
    out_dir, raw_dir = Path(args.out), Path(args.raw)
    for name in args.only or list(PREPARERS):
        print(f"[{name}] preparing ...", flush=True)
        counts = PREPARERS[name](out_dir, raw_dir, flan_raw=args.flan_raw)
        skipped = sum(counts["skipped"].values())
        print(
            f"[{name}] {counts['read']} read, {counts['written']} written to {out_dir / OUTPUTS[name]}, "
            f"{skipped} skipped {counts['skipped'] or ''}".rstrip(),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
