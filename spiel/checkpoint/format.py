"""The SpIEL checkpoint's header, ``spiel_config.json``: its fields, their types and checks, described once.

A checkpoint is a directory with ``spiel_config.json`` (this header), ``spiel_delta.safetensors`` (the
tensors, see ``codec``) and, when given, the tokenizer files. :class:`CheckpointHeader` is the header's one
description: ``write`` builds it, ``read`` parses and checks it (:meth:`CheckpointHeader.check`). Adding a
header field: one field here (with its check) and its value where ``write.checkpoint_header`` builds it.
No torch here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

FORMAT_VERSION = 3  # 3: compact positions Elias–Fano coded; 2 (compact as CSR) and 1 (flat only) still read
CONFIG_NAME = "spiel_config.json"
DELTA_NAME = "spiel_delta.safetensors"
FINGERPRINT_SIZE = 32  # base-weight entries sampled per module (see ``fingerprint``)


class InvalidCheckpointError(ValueError):
    """A checkpoint file is damaged or malformed; the message names the file and the problem."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class ModuleEntry:
    """One target module: its entry count, its weight's ``[out_features, in_features]``, the base-weight
    fingerprint (required to load, unless the reader lifts that) and, for a float32/bfloat16 base, the SHA-256
    of sampled base entries (``fingerprint.base_sample_digest``; absent in older checkpoints)."""

    k: int
    shape: list[int]
    fingerprint: Optional[list[float]] = None
    base_sample_sha256: Optional[str] = None

    def check(self, where: str, bad: Callable[[str], Exception]) -> None:
        shape = self.shape
        if not (isinstance(shape, list) and len(shape) == 2 and all(_is_int(s) and s > 0 for s in shape)):
            raise bad(f"{where}.shape must be [out_features, in_features] (positive integers), got {shape!r}")
        if not (_is_int(self.k) and 1 <= self.k <= shape[0] * shape[1]):
            raise bad(f"{where}.k must be an integer in [1, {shape[0] * shape[1]}], got {self.k!r}")
        fingerprint = self.fingerprint
        if fingerprint is not None and not (
            isinstance(fingerprint, list)
            and len(fingerprint) == FINGERPRINT_SIZE
            and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in fingerprint
            )
        ):
            raise bad(f"{where}.fingerprint must be {FINGERPRINT_SIZE} finite numbers")
        digest = self.base_sample_sha256
        if digest is not None and not (isinstance(digest, str) and len(digest) == 64):
            raise bad(f"{where}.base_sample_sha256 must be a 64-character hex digest, got {digest!r}")


@dataclass(kw_only=True)
class CheckpointHeader:
    """``spiel_config.json``, in the order written. ``delta_sha256`` is the delta file's SHA-256 (readers refuse
    a damaged delta); the header is written last, so a directory without it is never taken for a checkpoint."""

    format_version: int = FORMAT_VERSION  # 0 when absent (the first checkpoints)
    spiel_version: Optional[str] = None
    spiel_config: dict  # SpielConfig.to_dict()
    base_model: Any = None  # {"name_or_path", "class", "dtype", "revision"} (a name in old checkpoints)
    modules: dict[str, ModuleEntry] = field(default_factory=dict)
    delta_sha256: Optional[str] = None

    def to_dict(self) -> dict:
        out = asdict(self)
        for entry in out["modules"].values():
            for key in ("fingerprint", "base_sample_sha256"):
                if entry[key] is None:
                    del entry[key]
        if out["delta_sha256"] is None:
            del out["delta_sha256"]
        return out

    @classmethod
    def check(cls, data: dict, bad: Callable[[str], Exception]) -> None:
        """Raise ``bad(problem)`` for the first field of ``data`` (a parsed header) that is malformed."""
        from spiel.spiel_config import SpielConfig

        if not isinstance(data, dict):
            raise bad(f"expected a JSON object, got a {type(data).__name__}")
        version = data.get("format_version", 0)
        if not _is_int(version):
            raise bad(f"format_version must be an integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise bad(f"checkpoint format {version}; this spiel reads up to {FORMAT_VERSION}: upgrade spiel")
        if not isinstance(data.get("spiel_config"), dict):
            raise bad("no 'spiel_config' object")
        try:
            SpielConfig.from_dict(data["spiel_config"])
        except (TypeError, ValueError) as e:
            raise bad(f"spiel_config: {e}") from None
        if "base_model" in data and not isinstance(data["base_model"], (dict, str)):
            raise bad(f"base_model must be an object, got {data['base_model']!r}")
        sha = data.get("delta_sha256")
        if sha is not None and not (isinstance(sha, str) and len(sha) == 64):
            raise bad(f"delta_sha256 must be a 64-character hex digest, got {sha!r}")
        modules = data.get("modules")
        if not isinstance(modules, dict) or not modules:
            raise bad("'modules' must be a non-empty object (module name -> k, shape, fingerprint)")
        for name, entry in modules.items():
            if not isinstance(entry, dict):
                raise bad(f"modules[{name!r}] must be an object, got {entry!r}")
            for key in (
                "fingerprint",
                "base_sample_sha256",
            ):  # absent is allowed (and refused elsewhere), null not
                if key in entry and entry[key] is None:
                    raise bad(
                        f"modules[{name!r}].{key} is null; give what spiel wrote, or remove the key (and load "
                        "with the unverified-base override)"
                    )
            ModuleEntry(**{f.name: entry.get(f.name) for f in fields(ModuleEntry)}).check(
                f"modules[{name!r}]", bad
            )


HEADER_FIELDS = tuple(f.name for f in fields(CheckpointHeader))
MODULE_FIELDS = tuple(f.name for f in fields(ModuleEntry))
