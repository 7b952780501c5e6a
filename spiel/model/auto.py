"""One call from a delta checkpoint to a model, as peft's ``AutoPeftModelForCausalLM``:

    model = AutoSpielModelForCausalLM.from_pretrained("org/delta")     # or a local checkpoint directory

reads the base model's id and revision recorded in the checkpoint (``spiel_config.json``'s ``base_model``),
loads that base, checks the delta against its weights and returns the SpielModel."""

from __future__ import annotations

from spiel.checkpoint.read import read_checkpoint


class AutoSpielModelForCausalLM:
    """Not instantiated: :meth:`from_pretrained` returns a :class:`spiel.SpielModel`."""

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo,
        revision: str | None = None,
        *,
        base_model: str | None = None,
        base_revision: str | None = None,
        dtype="auto",
        quant: str = "none",
        device=None,
        is_trainable: bool = False,
        allow_unverified_base: bool = False,
    ):
        """The SpielModel of the checkpoint ``path_or_repo`` (a directory, or a Hub repo id at ``revision``)
        on the base it records; ``base_model`` / ``base_revision`` point at the base elsewhere (a local copy).
        ``dtype``, ``quant`` ("none" | "nf4") and ``device`` load the base as ``spiel.io.base_model`` does."""
        from spiel.io.base_model import load_base_model
        from spiel.io.hub import resolve_checkpoint
        from spiel.model.spiel_model import SpielModel

        directory = resolve_checkpoint(path_or_repo, revision)
        checked = read_checkpoint(directory, allow_unverified_base=allow_unverified_base)
        recorded = checked[0].get("base_model") or {}
        if not isinstance(recorded, dict):
            recorded = {"name_or_path": str(recorded)}
        name = base_model or recorded.get("name_or_path")
        if not name:
            raise ValueError(
                f"{path_or_repo} does not record its base model; pass base_model=<dir or hub id>"
            )
        if base_model is None and base_revision is None:
            base_revision = recorded.get("revision")  # the commit it was trained on (Hub bases)
        try:
            base = load_base_model(name, dtype=dtype, quant=quant, device=device, revision=base_revision)
        except OSError as e:
            where = "" if base_model else f" (recorded in {path_or_repo})"
            raise OSError(
                f"cannot load the base model {name!r}{where}: {e}. Pass base_model=<dir or hub id> "
                "to point at a copy of it."
            ) from None
        return SpielModel.from_checked(base, directory, checked, is_trainable=is_trainable)
