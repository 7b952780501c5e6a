"""spiel-eval's config, checked before any data or model is read: every key known, every value of its
type and in its range. Keys added with ``+`` are checked too. ``EvalConfigError`` names the key.

    check_eval_config(cfg)   # cfg: the composed configs/eval.yaml (a DictConfig or a plain dict)

The keys of ``bench.*`` are those of the benchmark's own file (configs/bench/<name>.yaml): a value must
have the type of the default there (an int where an int is, a finite number where a float is, a bool,
a string, a list); counts are >= 1, shot counts >= 0, probabilities in (0, 1].
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from spiel.paths import CONFIG_DIR

TOP_KEYS = {"ckpt", "ckpt_weights", "label", "seed", "eval", "model", "quant", "bench"}
MODEL_KEYS = {"name_or_path", "dtype", "revision", "preset"}  # preset: the training presets (ignored here)
QUANT = ("none", "nf4")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
# bench keys that may be 0 (a zero-shot prompt, no bootstrap); every other count is >= 1
MAY_BE_ZERO = {"n_shot", "ntrain", "num_fewshot", "bootstrap_iters"}
PROBABILITIES = {"top_p"}


class EvalConfigError(ValueError):
    """A spiel-eval key with a value it cannot take (the message starts with the key)."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _unknown(section: str, node: dict, known) -> None:
    for key in node:
        if key not in known:
            where = f"{section}.{key}" if section else str(key)
            raise EvalConfigError(
                f"{where}: not a known key (keys added with '+' are checked too; known keys"
                f"{' of ' + section if section else ''}: {', '.join(sorted(known))})"
            )


def _need(ok: bool, key: str, message: str, value) -> None:
    if not ok:
        raise EvalConfigError(f"{key}: {message}, got {value!r}")


def _check_eval(section: dict) -> None:
    known = {
        "data_dir",
        "batch_size",
        "device",
        "limit",
        "progress",
        "output_dir",
        "allow_unverified_base",
        "allow_unverified_delta",
    }
    _unknown("eval", section, known)
    _need(
        isinstance(section.get("data_dir"), str) and bool(section["data_dir"]),
        "eval.data_dir",
        "must be a directory path",
        section.get("data_dir"),
    )
    batch = section.get("batch_size")
    _need(_is_int(batch) and batch >= 1, "eval.batch_size", "must be a whole number >= 1", batch)
    device = section.get("device")
    _need(
        isinstance(device, str) and bool(DEVICE.match(device)),
        "eval.device",
        "must be auto, cpu, cuda or cuda:N",
        device,
    )
    limit = section.get("limit")
    _need(
        limit is None or (_is_int(limit) and limit >= 1),
        "eval.limit",
        "must be a whole number >= 1 (items per subject/task/language, or in all), or null for every item",
        limit,
    )
    for key in ("progress", "allow_unverified_base", "allow_unverified_delta"):
        _need(isinstance(section.get(key), bool), f"eval.{key}", "must be true or false", section.get(key))
    out = section.get("output_dir")
    _need(
        out is None or (isinstance(out, str) and bool(out)), "eval.output_dir", "must be a path or null", out
    )


def _bench_defaults(name) -> dict:
    path = Path(CONFIG_DIR) / "bench" / f"{name}.yaml"
    if not isinstance(name, str) or not path.is_file():
        known = sorted(p.stem for p in (Path(CONFIG_DIR) / "bench").glob("*.yaml"))
        raise EvalConfigError(f"bench.name: must be one of {', '.join(known)}, got {name!r}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def _check_value(key: str, value, default) -> None:
    short = key.rsplit(".", 1)[-1]
    if value is None:
        return  # null: the benchmark's (or eval's) default
    if isinstance(default, bool):
        _need(isinstance(value, bool), key, "must be true or false", value)
    elif _is_int(default) or (
        default is None and short in ("batch_size", "n_workers", "num_fewshot", "max_length")
    ):
        least = 0 if short in MAY_BE_ZERO else 1
        _need(_is_int(value) and value >= least, key, f"must be a whole number >= {least}", value)
    elif isinstance(default, float) or (default is None and short.endswith("timeout")):
        _need(_is_number(value), key, "must be a finite number", value)
        if short in PROBABILITIES:
            _need(0 < value <= 1, key, "must be in (0, 1]", value)
        else:
            _need(
                value >= 0 if short == "temperature" else value > 0,
                key,
                "must be >= 0" if short == "temperature" else "must be > 0",
                value,
            )
    elif isinstance(default, str):
        _need(isinstance(value, str), key, "must be a string", value)
    elif isinstance(default, list):
        _need(isinstance(value, (list, str)), key, "must be a list", value)
        if short == "pass_at_k":
            _need(all(_is_int(k) and k >= 1 for k in value), key, "must list whole numbers >= 1", value)


def _check_bench(bench: dict) -> None:
    defaults = _bench_defaults(bench.get("name"))
    _unknown("bench", bench, defaults)
    for key, value in bench.items():
        default = defaults.get(key)
        if isinstance(default, dict):
            _need(isinstance(value, dict), f"bench.{key}", "must be a mapping", value)
            _unknown(f"bench.{key}", value, default)
            for sub, sub_value in value.items():
                _check_value(f"bench.{key}.{sub}", sub_value, default.get(sub))
        elif key != "name":
            _check_value(f"bench.{key}", value, default)


def check_eval_config(cfg) -> None:
    """EvalConfigError naming the first key that is unknown or has a value it cannot take."""
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    plain.pop("hydra", None)
    _unknown("", plain, TOP_KEYS)
    _check_eval(plain.get("eval") or {})
    model = plain.get("model") or {}
    _unknown("model", model, MODEL_KEYS)
    _need(
        model.get("dtype", "auto") in DTYPES,
        "model.dtype",
        f"must be one of {', '.join(DTYPES)}",
        model.get("dtype"),
    )
    quant = plain.get("quant") or {}
    _unknown("quant", quant, {"name"})
    _need(quant.get("name", "none") in QUANT, "quant.name", "must be none or nf4", quant.get("name"))
    _need(_is_int(plain.get("seed")), "seed", "must be a whole number", plain.get("seed"))
    label = plain.get("label")
    _need(label is None or isinstance(label, str), "label", "must be a string or null", label)
    _check_bench(plain.get("bench") or {})
