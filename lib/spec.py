"""What one run trains: the RunSpec and its settings, typed and frozen, read and written as JSON.

The RunSpec is the contract between the runner and a trainer process: lib/matrix
builds it from the configuration (lib/config reads Kconfig), the runner writes
it into matrix.json and run.json (`to_json`), and the trainer reads it back
(`RunSpec.from_json`) and uses typed fields (`spec.training.data_dir`,
`spec.optimizer_params.betas`). This module imports nothing from lib, only the
standard library, so a trainer reads its run.json without the configuration
code or kconfiglib.

The JSON shape is that of every matrix.json and run.json written so far:

    {run_id, model, optimizer, pruning, variant, target_sparsity_pct, seed,
     hyperparams: {training, pruning, optimizer, model}}

The model's parameters stay a read-only mapping: each model declares its own.
The GPT-2 per-variant training budget (lib/variant_budgets) is a typed field
here and sits in JSON as hyperparams.model.budget, where it always did.

Defaults: no field below stands for a Kconfig default; every value comes from
the configuration. The only fallbacks are LEGACY_*, for keys that files
written by earlier versions lack, each the value the code of this version has
always used for a file without that key (what such a run did when it was
read back), so old result directories continue, reproduce and report.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from types import MappingProxyType
from typing import Any, Mapping, Optional

MAX_SEED = 2**32 - 1  # numpy's seed range; every run seeds random, numpy and torch alike
# What a run's `pruning` can be: the methods of the menu (lib/pruning/Kconfig) and of run IDs
PRUNING_METHODS = ("none", "magnitude", "movement", "movement-upstream", "state")


class SpecError(ValueError):
    """A RunSpec's JSON lacks a key or holds a value of the wrong type; the message names the key."""


# Keys that earlier versions did not write (added in the commit named), with the value
# this code has always read for a file without them. Not Kconfig defaults: what such a
# run did. Every other key has been in every file and is required.
LEGACY_TRAINING: dict[str, Any] = {
    "lr_warmup_steps": 0, "lr_step_every": 0, "lr_step_gamma": 0.1,  # 281f26c: no warm-up, no step decay
    "resume": True, "grad_accum": 1, "hyper_param_auto": False, "log_every": 0,  # 7e56834
    "target_effective_batch": 0,  # 7e56834; read only in auto mode, which such files never are
    "grad_clip_norm": None, "tf32": True,  # 6921d5f: the model's clip; TF32 allowed
}
LEGACY_PRUNING: dict[str, Any] = {"ramp_fit": False,  # 6921d5f
                                  "mask_storage": "bool",  # 0fbf9e3
                                  "ramp_end_step": 0}  # upstream ResNet-18 ramp: the end from ramp_end_epoch
LEGACY_OPTIMIZER: dict[str, Any] = {"learning_rate": None,  # 281f26c (sgd) / 6921d5f: LEARNING_RATE
                                    "state_score": "bitter0"}  # 281f26c
LEGACY_SPAM: dict[str, Any] = {"clip_delay_steps": 20}  # 6921d5f: the SPAM authors' delay


class _Record:
    """JSON in and out for a flat settings record: `JSON_PATH` names it in errors, `LEGACY` fills
    the keys that files of earlier versions lack. A key in `OPTIONAL` (added after lib/spec.py fixed
    the layout) is written only when its value differs from LEGACY's, so the files of every run that
    does not use it, and the identity of their resume checkpoints (a hash of this JSON), stay as
    they were."""

    JSON_PATH = ""
    LEGACY: Mapping[str, Any] = MappingProxyType({})
    OPTIONAL: frozenset[str] = frozenset()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)  # subclasses are dataclasses
        for key in self.OPTIONAL:
            if data[key] == self.LEGACY[key]:
                del data[key]
        return data

    @classmethod
    def from_json(cls, data: Any, where: str | None = None) -> Any:
        return _read(cls, data, where or cls.JSON_PATH, cls.LEGACY)


@dataclass(frozen=True)
class TrainingSettings(_Record):
    batch_size: int
    epochs: int
    learning_rate: float
    lr_schedule: str  # per-model | constant | cosine | step (lib/optim/lr_schedules.py)
    lr_warmup_steps: int
    lr_step_every: int  # 0 outside the step schedule
    lr_step_gamma: float
    device: str
    data_dir: str
    compile_model: bool
    mixed_precision: bool
    save_checkpoint: bool
    resume: bool
    grad_accum: int
    hyper_param_auto: bool
    target_effective_batch: int
    log_every: int
    grad_clip_norm: Optional[float]  # None: the model's default (GPT-2 1.0, others off); 0: off
    tf32: bool  # CUDA matmuls may use TF32 (GPT2_TF32_ALLOWED)

    JSON_PATH = "hyperparams.training"
    LEGACY = LEGACY_TRAINING


@dataclass(frozen=True)
class PruningSettings(_Record):
    """When magnitude and movement runs prune (state runs take AdamWPrune's own warm-up, frequency
    and ramp end: RunSpec.pruning_timing), on which curve, and how masks are held."""

    warmup_steps: int
    frequency: int
    ramp_end_epoch: int
    schedule: str  # a curve of lib/pruning/schedules.py, or "per-method" (upstream's)
    ramp_fit: bool  # move a ramp that ends at/after the last step to 75% of the run
    mask_storage: str  # "bool" (a byte per weight) or "bits" (eight per byte): lib/pruning/bitmask.py
    # The optimizer step the ramp ends at, instead of the end of epoch ramp_end_epoch; 0: that epoch.
    # Set only for an upstream defconfig's runs whose upstream trainer fixes it (lib/models.py).
    ramp_end_step: int

    JSON_PATH = "hyperparams.pruning"
    LEGACY = LEGACY_PRUNING
    OPTIONAL = frozenset({"ramp_end_step"})


@dataclass(frozen=True)
class SpamParams(_Record):
    """AdamWSPAM's settings (SPAM_*), alone or as AdamWPrune's base."""

    theta: float
    enable_clip: bool
    periodic_reset: bool
    interval: int
    warmup: bool
    warmup_steps: int
    clip_delay_steps: int

    JSON_PATH = "spam"
    LEGACY = LEGACY_SPAM


@dataclass(frozen=True)
class AdvParams(_Record):
    """AdamWAdv's settings (ADV_*), alone or as AdamWPrune's base."""

    amsgrad: bool
    weight_decay: float
    cosine_annealing: bool
    eta_min: float
    grad_clip: float

    JSON_PATH = "adv"


@dataclass(frozen=True)
class OptimizerParams:
    """The settings of a run's optimizer (lib/optim builds it from them).

    Which fields an optimizer has is its JSON layout (OPTIMIZER_LAYOUTS). A
    field the optimizer does not have is None, and `amsgrad` False for SGD,
    Adam and AdamW, which have no AMSGrad setting: absent, not a default value.
    AdamWAdv's and AdamWSPAM's own settings sit in `adv` and `spam` (flat in
    their JSON; AdamWAdv's `amsgrad` and `weight_decay` are also the fields
    here); AdamWPrune carries both for its base (`base`).
    """

    learning_rate: Optional[float]  # None: the shared LEARNING_RATE
    weight_decay: float
    betas: Optional[tuple[float, float]] = None
    eps: Optional[float] = None
    momentum: Optional[float] = None  # SGD
    amsgrad: bool = False
    spam: Optional[SpamParams] = None
    adv: Optional[AdvParams] = None
    # AdamWPrune
    base: Optional[str] = None
    state_score: Optional[str] = None
    warmup_steps: Optional[int] = None
    frequency: Optional[int] = None
    ramp_end_step: Optional[int] = None

    def to_json(self, optimizer: str) -> dict[str, Any]:
        """The JSON block of this optimizer, in the layout (keys and order) matrix.json has always had."""
        out: dict[str, Any] = {}
        for key in _layout(optimizer, "optimizer"):
            if key in ("*adv", "*spam"):
                if key == "*adv" and (self.amsgrad, self.weight_decay) != (self.adv.amsgrad, self.adv.weight_decay):
                    raise ValueError("AdamWAdv's amsgrad and weight_decay differ from its adv settings")
                out.update(getattr(self, key[1:]).to_json())
            elif key in ("adv", "spam"):
                out[key] = getattr(self, key).to_json()
            else:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_json(cls, optimizer: str, data: Any, where: str = "hyperparams.optimizer") -> "OptimizerParams":
        if not isinstance(data, Mapping):
            raise SpecError(f"{where}: not an object")
        values: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(cls)}
        for key in _layout(optimizer, where):
            if key == "*adv":
                values["adv"] = AdvParams.from_json(data, where)
                values["amsgrad"], values["weight_decay"] = values["adv"].amsgrad, values["adv"].weight_decay
            elif key == "*spam":
                values["spam"] = SpamParams.from_json(data, where)
            elif key in ("adv", "spam"):
                reader = AdvParams if key == "adv" else SpamParams
                values[key] = reader.from_json(data.get(key), f"{where}.{key}")
            else:
                raw = data[key] if key in data else _legacy(LEGACY_OPTIMIZER, key, where)
                kind = types[key]
                if key != "learning_rate" and kind.startswith("Optional["):
                    kind = kind[len("Optional["):-1]  # in its layout a field is set; the learning rate may be None
                values[key] = _typed(raw, kind, f"{where}.{key}")
        return cls(**values)


# Each optimizer's JSON block: its keys in order; "*adv" / "*spam" inline that block's keys.
OPTIMIZER_LAYOUTS: dict[str, tuple[str, ...]] = {
    "sgd": ("momentum", "weight_decay", "learning_rate"),
    "adam": ("betas", "eps", "weight_decay", "learning_rate"),
    "adamw": ("betas", "eps", "weight_decay", "learning_rate"),
    "adamwadv": ("betas", "eps", "*adv", "learning_rate"),
    "adamwspam": ("betas", "eps", "weight_decay", "*spam", "learning_rate"),
    "adamwprune": ("base", "learning_rate", "betas", "eps", "weight_decay", "amsgrad", "state_score",
                   "warmup_steps", "frequency", "ramp_end_step", "spam", "adv"),
}


def _layout(optimizer: str, where: str) -> tuple[str, ...]:
    if optimizer not in OPTIMIZER_LAYOUTS:
        raise SpecError(f"{where}: optimizer {optimizer!r} is unknown (have: {', '.join(OPTIMIZER_LAYOUTS)})")
    return OPTIMIZER_LAYOUTS[optimizer]


@dataclass(frozen=True)
class VariantBudget(_Record):
    """A GPT-2 AdamWPrune variant's extended training (lib/variant_budgets.py): the model's
    max_iters is already the budgeted count; this records from what and why."""

    base_max_iters: int
    extra_pct: int
    variant: str

    JSON_PATH = "hyperparams.model.budget"


@dataclass(frozen=True)
class RunSpec:
    """What to run: one cell of the test matrix with its resolved settings."""

    run_id: str
    model: str
    optimizer: str
    pruning: str  # the method: none, magnitude, movement, movement-upstream, state
    variant: Optional[str]
    target_sparsity_pct: float
    seed: int
    training: TrainingSettings
    pruning_settings: PruningSettings
    optimizer_params: OptimizerParams
    model_params: Mapping[str, Any] = field(hash=False)  # the model's own parameters, read-only
    variant_budget: Optional[VariantBudget] = None  # a GPT-2 variant's extended budget, else None

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_params", MappingProxyType(dict(self.model_params)))

    def __reduce__(self) -> tuple:
        # a mappingproxy does not pickle (submitit pickles each run's task): rebuild from a dict
        return (type(self), tuple(dict(v) if isinstance(v, MappingProxyType) else v
                                  for v in (getattr(self, f.name) for f in fields(self))))

    def pruning_timing(self) -> tuple[int, int, int]:
        """(warm-up steps, ramp-end step or 0 for the end of epoch pruning_settings.ramp_end_epoch, steps
        between mask updates) of a pruned run: state runs follow AdamWPrune's own settings (as upstream),
        magnitude and movement runs the general ones."""
        if self.pruning == "state":
            opt = self.optimizer_params
            return opt.warmup_steps, opt.ramp_end_step, opt.frequency
        p = self.pruning_settings
        return p.warmup_steps, p.ramp_end_step, p.frequency

    @property
    def gpus(self) -> int:
        """GPUs the run asks for (more than one: DDP through torchrun); models without the setting use one."""
        return max(1, int(self.model_params.get("gpus_per_run") or 1))

    def to_json(self) -> dict[str, Any]:
        model = dict(self.model_params)
        if self.variant_budget is not None:
            model["budget"] = self.variant_budget.to_json()
        return {"run_id": self.run_id, "model": self.model, "optimizer": self.optimizer, "pruning": self.pruning,
                "variant": self.variant, "target_sparsity_pct": self.target_sparsity_pct, "seed": self.seed,
                "hyperparams": {"training": self.training.to_json(), "pruning": self.pruning_settings.to_json(),
                                "optimizer": self.optimizer_params.to_json(self.optimizer), "model": model}}

    @classmethod
    def from_json(cls, data: Any) -> "RunSpec":
        """The spec of a matrix.json entry or run.json "spec"; SpecError names what is missing or wrong.
        Names are not checked for use in paths here (lib/matrix.spec_from_entry does, with lib/names)."""
        if not isinstance(data, Mapping):
            raise SpecError("not an object")
        values = {key: _typed(data.get(key), kind, key) for key, kind in
                  (("run_id", "str"), ("model", "str"), ("optimizer", "str"), ("pruning", "str"),
                   ("variant", "Optional[str]"), ("target_sparsity_pct", "float"), ("seed", "int"))}
        hp = data.get("hyperparams")
        if not isinstance(hp, Mapping) or not isinstance(hp.get("model"), Mapping):
            raise SpecError("hyperparams lack their 'model' object")
        model = dict(hp["model"])
        budget = model.pop("budget", None)
        return cls(**values,
                   training=TrainingSettings.from_json(hp.get("training")),
                   pruning_settings=PruningSettings.from_json(hp.get("pruning")),
                   optimizer_params=OptimizerParams.from_json(values["optimizer"], hp.get("optimizer")),
                   model_params=model,
                   variant_budget=None if budget is None else VariantBudget.from_json(budget))


def _legacy(legacy: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in legacy:
        raise SpecError(f"{where}: lacks {key!r}")
    return legacy[key]


def _read(cls: type, data: Any, where: str, legacy: Mapping[str, Any]) -> Any:
    """A flat settings dataclass from its JSON object: every field, typed; extra keys ignored."""
    if not isinstance(data, Mapping):
        raise SpecError(f"{where}: not an object")
    return cls(**{f.name: _typed(data[f.name] if f.name in data else _legacy(legacy, f.name, where), f.type,
                                 f"{where}.{f.name}") for f in fields(cls)})


def is_finite_number(value: Any) -> bool:
    """A JSON number that is a finite float: not a bool, NaN, an infinity, nor an integer too large for
    a float (10**400 in a stranger's file, where math.isfinite raises OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _typed(value: Any, kind: str, where: str) -> Any:
    """`value` checked against a field's annotation (as written above); floats may be written as ints."""
    if kind.startswith("Optional[") and value is None:
        return None
    kind = kind.removeprefix("Optional[").removesuffix("]") if kind.startswith("Optional[") else kind
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and is_finite_number(value):
        return float(value)
    if kind == "tuple[float, float]" and isinstance(value, (list, tuple)) and len(value) == 2:
        return tuple(_typed(v, "float", where) for v in value)
    raise SpecError(f"{where}: {shown(value)} is not {_KINDS.get(kind, kind)}")


_KINDS = {"bool": "true or false", "str": "a string", "int": "an integer", "float": "a finite number",
          "tuple[float, float]": "a pair of numbers"}


def shown(value: Any) -> str:
    """repr(value) cut to 60 characters: a message about a stranger's value stays one readable line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
