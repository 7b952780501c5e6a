"""SpielModel: a model whose target linear layers carry sparse deltas, and its public API.

spiel_model = get_spiel_model(hf_model, SpielConfig(method="ag", rank_equiv=64))
optimizer = spiel_model.make_optimizer(lr=1e-4, weight_decay=30.0)
selector = spiel_model.make_selector(optimizer, total_steps=1000)
for batch in data:  # forward, backward, step, zero_grad, then selector.step()
    ...
spiel_model.save_pretrained("out/final", tokenizer=tokenizer)
"""

from __future__ import annotations

import contextlib
import inspect
import math
import types
import weakref
from collections import Counter
from pathlib import Path

import torch
import torch.nn as nn

from spiel.checkpoint.fingerprint import (
    CheckpointMismatchError,
    DeltaValueError,
    base_fingerprint,
    check_against_base,
)
from spiel.checkpoint.read import InvalidCheckpointError, read_checkpoint, read_spiel_config
from spiel.checkpoint.write import checkpoint_header, delta_tensors, write_checkpoint
from spiel.delta.bounds import delta_value_problem
from spiel.delta.indices import check_indices
from spiel.delta.layer import SparseDeltaLinear
from spiel.delta.weights import is_quantized, weight_shape
from spiel.model.delta_sets import weighted_sum
from spiel.model.peft_names import NO_SPIEL_EQUIVALENT, peft_name_error
from spiel.model.targets import allocate, find_targets, model_numel, total_budget
from spiel.selection import Selector, method_spec
from spiel.selection.global_budget import resize_entries
from spiel.spiel_config import SpielConfig

__all__ = [
    "CheckpointMismatchError",
    "InvalidCheckpointError",
    "SpielConfig",
    "SpielModel",
    "compose",
    "get_spiel_model",
    "read_spiel_config",
]


def _replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


STATIC_TRAINING_MESSAGE = (
    "this SpielModel is being trained without a selector, which would silently be static sparse training "
    "(the initial random positions are never reselected). With a transformers or TRL Trainer, build it with "
    "spiel's Trainer support: `spiel_trainer(Trainer)(model=model, ...)` or `spiel_trainer(SFTTrainer)(...)` "
    "(from spiel import spiel_trainer). In a plain PyTorch loop, create `selector = "
    "model.make_selector(optimizer, total_steps)` and call `selector.step()` after each optimizer step. For "
    "static sparse training on purpose, call `model.allow_static_training()` first."
)


class SpielModel(nn.Module):
    """Wraps ``model`` (``.model``); forward, generate and unknown attributes go to it."""

    # transformers' Trainer refuses a 4-bit model unless it carries trainable adapters, which it reads
    # from this attribute; the sparse deltas are such adapters.
    _hf_peft_config_loaded = True

    def __init__(self, model: nn.Module, config: SpielConfig):
        super().__init__()
        self.model = model
        self.spiel_config = config
        self.training = model.training  # the wrapper starts in the wrapped model's mode
        self._selector_ref = None  # weak: a selector dropped by its owner no longer counts
        self._static_training = False
        self._deltas_disabled = False  # inside disable_delta()
        self._delta_sets = {}  # name -> spiel.model.delta_sets.DeltaSet, once load_delta is used
        self._active_delta = "default"  # the delta the model was built or loaded with
        self._show_wrapped_signature()

    def _show_wrapped_signature(self) -> None:
        """transformers' Trainer keeps only the dataset columns named in ``forward``'s signature (and reads
        it for loss arguments): give this instance a ``forward`` bound method with the wrapped model's."""
        try:
            inner = inspect.signature(self.model.forward)
        except (TypeError, ValueError):
            return

        def forward(self, *args, **kwargs):
            return type(self).forward(self, *args, **kwargs)

        self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
        forward.__signature__ = inner.replace(parameters=[self_param, *inner.parameters.values()])
        self.forward = types.MethodType(forward, self)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in NO_SPIEL_EQUIVALENT:  # not the wrapped model's peft integration: its messages mislead
                raise peft_name_error(name) from None
            return getattr(super().__getattr__("model"), name)

    def forward(self, *args, **kwargs):
        if self._deltas_disabled:
            return self.model(*args, **kwargs)  # disable_delta(): the base alone, nothing to select
        if (
            self.training
            and torch.is_grad_enabled()
            and not self._static_training
            and not self.has_selector()
        ):
            if any(layer.values.requires_grad for layer in self.deltas.values()):
                raise RuntimeError(STATIC_TRAINING_MESSAGE)
        return self.model(*args, **kwargs)

    def has_selector(self) -> bool:
        """Whether a live selector (``make_selector``) reselects this model's positions."""
        return self._selector_ref is not None and self._selector_ref() is not None

    def allow_static_training(self) -> SpielModel:
        """Train without reselection on purpose (static sparse fine-tuning, a baseline)."""
        self._static_training = True
        return self

    def generate(self, *args, **kwargs):
        return self.model.generate(*args, **kwargs)

    @property
    def deltas(self) -> dict[str, SparseDeltaLinear]:
        """The sparse-delta layers by module name (relative to ``.model``)."""
        return {n: m for n, m in self.model.named_modules() if isinstance(m, SparseDeltaLinear)}

    def num_tunable(self) -> int:
        return sum(layer.k for layer in self.deltas.values())

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, all)`` as peft counts them: the delta entries that train (``values`` requiring
        grad) and every parameter of the model (4-bit weights at their logical size, deltas included)."""
        trainable = sum(layer.k for layer in self.deltas.values() if layer.values.requires_grad)
        return trainable, model_numel(self.model)

    def print_trainable_parameters(self) -> None:
        """peft's line: ``trainable params: N || all params: M || trainable%: P``."""
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || "
            f"trainable%: {100 * trainable / max(1, total):.4f}"
        )

    @contextlib.contextmanager
    def disable_delta(self):
        """Within the block every forward runs the base model alone (peft's ``disable_adapter``), e.g. for
        a reference model's log-probs; the deltas are untouched and apply again after it."""
        from spiel.model.delta_sets import check_unmerged

        layers = self.deltas
        check_unmerged(layers, "disable the deltas")
        for layer in layers.values():
            layer.restore_base()
            layer.delta_disabled = True
        self._deltas_disabled = True
        try:
            yield self
        finally:
            self._deltas_disabled = False
            for layer in layers.values():
                layer.delta_disabled = False

    # peft's names for what a SpielModel does with its deltas
    disable_adapter = disable_delta

    def set_adapter(self, adapter_name: str) -> SpielModel:
        """peft's name for :meth:`set_delta`."""
        return self.set_delta(adapter_name)

    def load_adapter(
        self, model_id, adapter_name: str, revision: str | None = None, is_trainable: bool = False, **kwargs
    ) -> SpielModel:
        """peft's name for :meth:`load_delta` (a loaded delta is for inference: ``is_trainable`` is refused)."""
        if is_trainable or kwargs:
            raise TypeError(
                "SpielModel.load_adapter keeps a saved delta for inference (load_delta); it takes "
                f"no is_trainable or {sorted(kwargs)}: to train from a checkpoint use "
                "SpielModel.from_pretrained(base, path, is_trainable=True)"
            )
        return self.load_delta(model_id, adapter_name, revision=revision)

    def delete_adapter(self, adapter_name: str) -> SpielModel:
        """peft's name for :meth:`delete_delta`."""
        return self.delete_delta(adapter_name)

    @property
    def active_adapter(self) -> str:
        """peft's name for :attr:`active_delta`."""
        return self.active_delta

    def get_base_model(self) -> nn.Module:
        """The wrapped transformers model (with the delta layers in place, as peft's holds its adapters)."""
        return self.model

    def trainable_summary(self) -> str:
        total = sum(p.numel() for p in self.model.parameters())
        tunable = self.num_tunable()
        return f"tunable entries: {tunable:,} of {total:,} parameters ({100 * tunable / max(1, total):.3f}%)"

    # -- training ------------------------------------------------------------------------------------
    def make_optimizer(self, lr: float, weight_decay: float = 0.0, **kwargs):
        """The method's optimizer (SparseAdamW for ``ag``, SparseSM3 for ``ma``) over every delta's values."""
        spec = method_spec(self.spiel_config.method)
        if spec.adam_options:
            kwargs.setdefault("eps_placement", self.spiel_config.eps_placement)
        build = spec.build_optimizer
        return build(list(self.deltas.values()), lr=lr, weight_decay=weight_decay, **kwargs)

    def make_selector(self, optimizer, total_steps: int, process_group=None) -> Selector:
        c = self.spiel_config
        selector = Selector(
            self.deltas,
            optimizer,
            c,
            method=c.method,
            seed=c.seed,
            total_steps=total_steps,
            process_group=process_group,
        )
        self._selector_ref = weakref.ref(selector)
        return selector

    # -- saving and loading ----------------------------------------------------------------------------
    def delta_state(self) -> dict[str, torch.Tensor]:
        """The training form of the delta (flat indices, values, grown_at), as a checkpoint holds it."""
        return delta_tensors(self.deltas, compact=False)

    def freeze_fingerprints(self) -> None:
        """Take the base-weight fingerprints now and save those (before the base is sharded, e.g. FSDP)."""
        self._fingerprints = {n: base_fingerprint(layer) for n, layer in self.deltas.items()}

    def restore_delta(self, directory) -> None:
        """Load the delta of a training checkpoint into this model in place (resume), after every check of
        ``read_checkpoint`` (no override: spiel writes fingerprints into every checkpoint) and against this
        model's base weights."""
        saved, tensors = read_checkpoint(directory, override=None, delta_override=None)
        check_against_base(directory, saved, self.model, getattr(self, "_fingerprints", None))
        self.load_delta_tensors(tensors, str(directory))

    def save_pretrained(self, directory, tokenizer=None, compact: bool = True) -> Path:
        """Write the delta checkpoint. ``compact`` (default): only what inference needs, the positions
        Elias–Fano coded (about L + 2 bits each, L = log2(1 / density)); ``compact=False``: the training
        form resume needs (with ``grown_at``)."""
        deltas = self.deltas
        self.spiel_config.num_deltas = {
            n: layer.k for n, layer in deltas.items()
        }  # a global budget moves them
        fingerprints = getattr(self, "_fingerprints", None) or {
            n: base_fingerprint(layer) for n, layer in deltas.items()
        }
        header = checkpoint_header(self.spiel_config, self.model, deltas, fingerprints)
        return write_checkpoint(directory, header, delta_tensors(deltas, compact), tokenizer)

    def push_to_hub(
        self,
        repo_id: str,
        tokenizer=None,
        *,
        private: bool | None = None,
        token=None,
        revision: str | None = None,
        commit_message: str | None = None,
        data: str | None = None,
        metrics: dict | None = None,
    ):
        """Upload this model's delta checkpoint (``save_pretrained``'s files) and a generated model card
        to the Hub repo ``repo_id``; the base model is never uploaded (see ``spiel.io.hub``)."""
        import tempfile

        from spiel.io.hub import push_checkpoint

        with tempfile.TemporaryDirectory(prefix="spiel-delta-") as tmp:
            self.save_pretrained(tmp, tokenizer=tokenizer)
            return push_checkpoint(
                tmp,
                repo_id,
                private=private,
                token=token,
                revision=revision,
                commit_message=commit_message,
                data=data,
                metrics=metrics,
            )

    @classmethod
    def from_pretrained(
        cls,
        base_model: nn.Module,
        directory,
        is_trainable: bool = False,
        revision: str | None = None,
        allow_unverified_base: bool = False,
        allow_unverified_delta: bool = False,
    ) -> SpielModel:
        """Wrap ``base_model`` with the deltas saved in ``directory`` (checked, and checked against the
        base). ``allow_unverified_base``: accept a checkpoint without base-weight fingerprints;
        ``allow_unverified_delta``: one without the SHA-256 of its delta file.

        ``directory``: a local checkpoint directory, or a Hub repo id (``revision``: branch, tag or
        commit), fetched through huggingface_hub (its cache and ``HF_HUB_OFFLINE`` apply)."""
        from spiel.io.hub import resolve_checkpoint

        directory = resolve_checkpoint(directory, revision)
        checked = read_checkpoint(
            directory,
            allow_unverified_base=allow_unverified_base,
            allow_unverified_delta=allow_unverified_delta,
        )
        return cls.from_checked(base_model, directory, checked, is_trainable)

    @classmethod
    def from_checked(
        cls, base_model: nn.Module, directory, checked: tuple[dict, dict], is_trainable: bool = False
    ) -> SpielModel:
        """``from_pretrained`` for a checkpoint already read by ``read_checkpoint`` (``checked``: what it
        returned), so a caller that checked it before loading the base does not read it twice."""
        saved, tensors = checked
        config = SpielConfig.from_dict(saved["spiel_config"])
        config.num_deltas = {n: int(m["k"]) for n, m in saved["modules"].items()}
        check_against_base(directory, saved, base_model)  # before base_model is touched
        model = get_spiel_model(base_model, config)
        model.load_delta_tensors(tensors, str(directory))
        model.requires_grad_(False)
        if is_trainable:
            for layer in model.deltas.values():
                layer.values.requires_grad_(True)
        return model

    @torch.no_grad()
    def load_delta_tensors(
        self, tensors: dict[str, dict[str, torch.Tensor]], source: str = "checkpoint"
    ) -> None:
        deltas = self.deltas
        if set(tensors) != set(deltas):
            raise CheckpointMismatchError(
                f"{source} holds deltas for {sorted(set(tensors) - set(deltas))[:3]} and lacks "
                f"{sorted(set(deltas) - set(tensors))[:3]}"
            )
        for name, layer in deltas.items():
            entry = tensors[name]
            check_indices(entry["indices"], layer.out_features * layer.in_features, f"{name}.indices")
            if self.spiel_config.budget == "global" and entry["values"].dim() == 1:
                # matrices' shares move under a global budget: take the saved k (resume)
                resize_entries(layer, entry["indices"].numel())
            if entry["indices"].numel() != layer.k or entry["values"].shape != layer.values.shape:
                raise CheckpointMismatchError(
                    f"{source}: {name} has indices {list(entry['indices'].shape)} and "
                    f"values {list(entry['values'].shape)}, expected [{layer.k}]"
                )
            layer.restore_base()  # the indices change in place
            layer.indices.copy_(entry["indices"])
            layer.values.copy_(entry["values"])
            layer.grown_at.copy_(entry.get("grown_at", torch.zeros_like(layer.grown_at)))
            problem = delta_value_problem(layer.values)  # after the cast to delta_dtype
            if problem:
                raise DeltaValueError(f"{source}: {name} has, in {self.spiel_config.delta_dtype}, {problem}")

    # -- several named deltas over one base (spiel.model.delta_sets) ---------------------------------------
    @property
    def active_delta(self) -> str:
        return self._active_delta

    @property
    def delta_names(self) -> list[str]:
        return list(self._delta_sets) or [self._active_delta]

    def load_delta(
        self,
        path_or_repo,
        name: str,
        revision: str | None = None,
        allow_unverified_base: bool = False,
        allow_unverified_delta: bool = False,
    ) -> SpielModel:
        """Keep the checkpoint ``path_or_repo`` (a directory or Hub repo id) as the delta ``name``, checked
        as ``from_pretrained`` checks it, without activating it. The delta this model was built or loaded
        with is ``"default"``. It must target the same modules; its k may differ."""
        from spiel.model.delta_sets import read_delta_set

        if not isinstance(name, str) or not name:
            raise ValueError(f"a delta name must be a non-empty string, got {name!r}")
        if name in self.delta_names:
            raise ValueError(
                f"a delta named {name!r} is already loaded ({self.delta_names}); pick another name"
            )
        delta = read_delta_set(
            self.deltas, self.model, path_or_repo, revision, allow_unverified_base, allow_unverified_delta
        )
        self._named_sets()[name] = delta
        return self

    def _named_sets(self) -> dict:
        """The named deltas, the one the model was built with taken in as ``"default"`` on first use."""
        from spiel.model.delta_sets import capture

        if not self._delta_sets:
            self._delta_sets[self._active_delta] = capture(self.deltas, "as built", self.spiel_config)
        return self._delta_sets

    def set_delta(self, name: str) -> SpielModel:
        """Make ``name`` the delta every forward applies: O(k) pointer swaps, the base is not touched."""
        from spiel.model.delta_sets import activate

        if name not in self._delta_sets and name != self._active_delta:  # the active one needs no load_delta
            raise KeyError(
                f"no delta named {name!r}; loaded: {self.delta_names} (load_delta(path, name) first)"
            )
        if self.has_selector():
            raise RuntimeError(
                "set_delta is for inference, but this model is being trained (it has a live selector, "
                "whose optimizer state belongs to the active delta); switch before make_selector "
                "or after training"
            )
        sets = self._named_sets()
        activate(self.deltas, sets[name])
        self._active_delta, self.spiel_config = name, sets[name].config
        return self

    def add_weighted_delta(self, names: list[str], weights, name: str) -> SpielModel:
        """Keep ``Σ wᵢ · delta(namesᵢ)`` (fp32 values on the union of their positions) as the delta ``name``,
        without activating it (peft's ``add_weighted_adapter``)."""
        from spiel.model.delta_sets import DeltaSet, as_set

        weights = check_weights(weights, len(names))
        unknown = [n for n in names if n not in self._named_sets()]
        if not names or unknown:
            raise KeyError(f"no delta named {unknown or names!r} to combine; loaded: {self.delta_names}")
        if name in self.delta_names:
            raise ValueError(
                f"a delta named {name!r} is already loaded ({self.delta_names}); pick another name"
            )
        members = [self._delta_sets[n] for n in names]
        summed = weighted_sum([m.tensors for m in members], weights)
        config = SpielConfig.from_dict(members[0].config.to_dict())
        config.num_deltas, config.delta_dtype = (
            {n: int(idx.numel()) for n, (idx, _) in summed.items()},
            "float32",
        )
        self._delta_sets[name] = DeltaSet(
            " + ".join(f"{w:g}*{n}" for w, n in zip(weights, names, strict=True)),
            config,
            as_set(self.deltas, summed),
        )
        return self

    def delete_delta(self, name: str) -> SpielModel:
        """Forget the named delta ``name`` (not the active one)."""
        if name == self._active_delta:
            raise ValueError(f"{name!r} is the active delta; set_delta another one before deleting it")
        if name not in self._delta_sets:
            raise KeyError(f"no delta named {name!r}; loaded: {self.delta_names}")
        del self._delta_sets[name]
        return self

    def unload(self) -> nn.Module:
        """The wrapped model with every delta layer replaced by its untouched base layer (the pristine base)."""
        from spiel.model.delta_sets import check_unmerged

        deltas = self.deltas
        check_unmerged(deltas, "unload")
        for name, layer in deltas.items():
            layer.restore_base()
            _replace_module(self.model, name, layer.base_layer)
        self._delta_sets = {}
        return self.model

    def merge_and_unload(self) -> nn.Module:
        """Add every delta into its base weight and return the plain model (not for 4-bit bases)."""
        for name, layer in self.deltas.items():
            if is_quantized(layer.weight):
                raise RuntimeError(
                    f"{name} has a 4-bit base weight: merging would requantize it (lossy). "
                    "Keep the SpielModel (deltas applied on the fly) instead."
                )
        for name, layer in self.deltas.items():
            layer.merge()
            _replace_module(self.model, name, layer.base_layer)
        return self.model


def get_spiel_model(model: nn.Module, config: SpielConfig | None = None) -> SpielModel:
    """Freeze ``model`` and put a ``SparseDeltaLinear`` in place of each target linear layer."""
    config = config or SpielConfig()
    if config.num_deltas:
        missing = [n for n in config.num_deltas if not isinstance(_get(model, n), nn.Linear)]
        if missing:
            raise CheckpointMismatchError(f"no linear layer named {missing[:3]} in this model")
        targets = {n: _get(model, n) for n in config.num_deltas}
        sizes = dict(config.num_deltas)
    else:
        targets = find_targets(model, config.target_modules)
        shapes = {n: weight_shape(m.weight) for n, m in targets.items()}
        sizes = allocate(total_budget(config, model, shapes), shapes)
        config.num_deltas = sizes
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(config.seed)
    dtype = getattr(torch, config.delta_dtype)
    # A weight tied to another module (e.g. a head tied to the embeddings) must stay pristine between forwards.
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    for name, module in targets.items():
        layer = SparseDeltaLinear(
            module,
            sizes[name],
            delta_dtype=dtype,
            grad_path=config.grad_path,
            generator=generator,
            merged_storage=config.merged_storage and uses[id(module.weight)] == 1,
        )
        _replace_module(model, name, layer)
    return SpielModel(model, config)


def _get(model: nn.Module, name: str):
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def compose(
    ckpt_dirs,
    base_model: nn.Module,
    allow_unverified_base: bool = False,
    weights=None,
    allow_unverified_delta: bool = False,
) -> nn.Module:
    """``θ0 + Σ wᵢ φᵢ``: the base model with the deltas of several checkpoints summed (Table 1's
    "Tülu v2 ⊕ GPT4-Alpaca"), each scaled by its entry of ``weights`` (default: all 1). Full-precision
    bases get the sum merged in and come back plain; 4-bit bases come back as a SpielModel holding the
    union of the positions, unmerged. Every checkpoint is checked as by ``from_pretrained`` before any is
    summed."""
    from spiel.io.hub import resolve_checkpoint, split_revision

    ckpt_dirs = list(ckpt_dirs)
    weights = check_weights(weights, len(ckpt_dirs))
    # local directories, or Hub repo ids ("org/name" or "org/name@revision")
    ckpt_dirs = [str(resolve_checkpoint(*split_revision(d))) for d in ckpt_dirs]
    if not ckpt_dirs:
        raise ValueError("compose needs at least one checkpoint")
    members = [
        read_checkpoint(
            d, allow_unverified_base=allow_unverified_base, allow_unverified_delta=allow_unverified_delta
        )
        for d in ckpt_dirs
    ]
    return compose_checked(ckpt_dirs, members, base_model, weights)


def compose_checked(
    ckpt_dirs: list[str], members: list[tuple[dict, dict]], base_model: nn.Module, weights: list[float]
) -> nn.Module:
    """``compose`` for checkpoints already read by ``read_checkpoint`` (``members``: what it returned for
    each of ``ckpt_dirs``; ``weights``: one float each, as ``check_weights`` gives them)."""
    first = members[0][0]
    for directory, (saved, _) in zip(ckpt_dirs, members, strict=True):
        if {n: m["shape"] for n, m in saved["modules"].items()} != {
            n: m["shape"] for n, m in first["modules"].items()
        }:
            raise CheckpointMismatchError(
                f"{directory} targets other modules than {ckpt_dirs[0]}; cannot sum them"
            )
        check_against_base(directory, saved, base_model)
    merged = weighted_sum([tensors for _, tensors in members], weights)
    config = SpielConfig.from_dict(first["spiel_config"])
    config.num_deltas = {n: int(idx.numel()) for n, (idx, _) in merged.items()}
    model = get_spiel_model(base_model, config)  # every checkpoint was checked against the base above
    tensors = {
        n: {"indices": idx, "values": val, "grown_at": torch.zeros_like(idx)}
        for n, (idx, val) in merged.items()
    }
    model.load_delta_tensors(tensors, " + ".join(ckpt_dirs))
    if any(is_quantized(layer.weight) for layer in model.deltas.values()):
        return model
    return model.merge_and_unload()


def check_weights(weights, count: int) -> list[float]:
    """``weights`` for ``count`` deltas as floats (None: all 1), refused unless one finite number each."""
    if weights is None:
        return [1.0] * count
    if not isinstance(weights, (list, tuple)):  # a bare number (ckpt_weights=0.5) or a string
        raise ValueError(
            f"weights must be a list with one number per checkpoint, got {weights!r}; write "
            f"[{weights}] for one checkpoint"
        )
    weights = list(weights)
    if len(weights) != count:
        raise ValueError(
            f"weights has {len(weights)} entries for {count} checkpoint(s); give one per checkpoint"
        )
    bad = [
        w for w in weights if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w)
    ]
    if bad:
        raise ValueError(f"weights must be finite numbers, got {bad[0]!r} in {weights}")
    return [float(w) for w in weights]
