"""The model registry: the one place lib learns which models exist and what it
must know about each.

A model is a folder (`<name>/`: Kconfig, model.py, train.py) plus one entry
here. The entry names the folder's Kconfig symbols that become the run's model
parameters, the trainer module the runner starts (`python -m <trainer> --run-dir
D`, whose `prepare_data(hyperparams)` is the model's data step), and the
figures lib uses on the model's behalf: the task its metrics belong to, the LR
decay and gradient clipping of its upstream recipe, and the activation memory
per sample the automatic batch plan starts from. lib asks here and never
imports a model folder; the data step runs through the trainer module's name.

A model living elsewhere (tests/toy_model) registers itself with `register()`
when its package is imported, which the trainer process does first.
"""
from __future__ import annotations

from dataclasses import dataclass

from lib.errors import UserError

CLASSIFICATION = "classification"
LANGUAGE_MODELING = "language_modeling"
TASKS = (CLASSIFICATION, LANGUAGE_MODELING)
PARAM_KINDS = ("int", "bool", "string", "number", "choice")


@dataclass(frozen=True)
class ModelParam:
    """One model parameter of a run, read from the model's Kconfig symbols.

    kind "choice": the value whose choice entry is selected; `choices` maps
    each value to its entry, or, when empty, `symbol` is the entries' prefix and
    each entry's prompt starts with its value ("124M: 12 layers, ...")."""

    name: str
    symbol: str = ""
    kind: str = "int"
    choices: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ModelEntry:
    name: str  # folder, run-ID prefix, Kconfig suffix (MODEL_SELECT_<NAME>, MODEL_ENABLE_<NAME>)
    title: str  # for menus and reports
    task: str  # CLASSIFICATION or LANGUAGE_MODELING: which metrics its runs report
    trainer: str  # module run as `python -m <trainer> --run-dir D`; has main() and prepare_data(hyperparams)
    params: tuple[ModelParam, ...] = ()
    lr_schedule: str = "cosine"  # what LR_SCHEDULE_PER_MODEL gives it: its upstream recipe's decay
    grad_clip_norm: float = 0.0  # gradient clipping when GRADIENT_CLIP_NORM is empty (0 = off)
    activation_mib_per_sample: float = 1.0  # training activations of one sample (batch plan, auto mode)
    activation_scales_with_width: bool = False  # the figure above is for GPT-2 124M: scale by layers x width
    bitter_variants: bool = False  # AdamWPrune state runs multiply by the enabled GPT2_ADAMWPRUNE_VARIANT_*s
    tf32_setting: bool = False  # CUDA matmuls follow GPT2_TF32_ALLOWED (others keep torch's default)
    # What upstream's trainer for the model hard-codes, applied to upstream defconfigs only (lib/matrix.py),
    # whose values are written for that trainer. It multiplies LEARNING_RATE by upstream_adam_lr_scale for
    # every optimizer but SGD; it builds its magnitude and movement pruners with only PRUNING_WARMUP, so they
    # keep their own ramp end and mask interval (optimizer steps; 0: the file's PRUNING_RAMP_END_EPOCH and
    # PRUNING_FREQUENCY); with upstream_clips False it clips no gradient (GRADIENT_CLIP_NORM, AdamWAdv's clip).
    upstream_adam_lr_scale: float = 1.0
    upstream_pruner_ramp_end_step: int = 0
    upstream_pruner_frequency: int = 0
    upstream_clips: bool = True

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"model {self.name!r}: task {self.task!r} is not one of {TASKS}")
        bad = [p.name for p in self.params if p.kind not in PARAM_KINDS or not (p.symbol or p.choices)
               or (p.choices and p.kind != "choice")]
        if bad:
            raise ValueError(f"model {self.name!r}: parameters {bad} have no valid kind/choices")


def _image_params(prefix: str) -> tuple[ModelParam, ...]:
    return (ModelParam("train_limit", f"{prefix}_TRAIN_LIMIT"), ModelParam("test_limit", f"{prefix}_TEST_LIMIT"),
            ModelParam("augment", f"{prefix}_AUGMENT", "bool"))


_REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    """Add (or replace, by name) a model; returns it."""
    _REGISTRY[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def model_names() -> tuple[str, ...]:
    """Every registered model, in registration order (the order of matrices and menus)."""
    return tuple(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    """The model's entry; a UserError naming the known models otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"model {name!r} is not registered in this version (have: {', '.join(_REGISTRY)})") from None


def task_of(name: str | None) -> str | None:
    """The task of a model named in a result directory (None when unknown there)."""
    found = _REGISTRY.get(name or "")
    return found.task if found else None


register(ModelEntry("lenet5", "LeNet-5 (MNIST)", CLASSIFICATION, "lenet5.train", _image_params("LENET5"),
                    lr_schedule="constant", activation_mib_per_sample=0.2))
# Upstream resnet18/train.py: scaled_lr = lr * 0.001 for the Adam family; MagnitudePruning(model,
# target_sparsity, warmup_steps) and MovementPruning(...) alike, whose defaults are ramp_end_step=3000 and
# pruning_frequency=100 (upstream lib/magnitude_pruning.py, lib/movement_pruning.py); it discards the clip norm
# create_optimizer returns (`optimizer, _, _, _, adamprune_state = ...`) and never calls clip_grad_norm_.
register(ModelEntry("resnet18", "ResNet-18 (CIFAR-10)", CLASSIFICATION, "resnet18.train", _image_params("RESNET18"),
                    activation_mib_per_sample=12.0, upstream_adam_lr_scale=0.001,
                    upstream_pruner_ramp_end_step=3000, upstream_pruner_frequency=100, upstream_clips=False))
register(ModelEntry(
    "resnet50", "ResNet-50 (CIFAR-100)", CLASSIFICATION, "resnet50.train",
    _image_params("RESNET50") + (
        ModelParam("dataset", kind="choice", choices=(("cifar100", "RESNET50_DATASET_CIFAR100"),
                                                      ("imagenet", "RESNET50_DATASET_IMAGENET"))),
        ModelParam("stem", kind="choice", choices=(("cifar", "RESNET50_STEM_CIFAR"),
                                                   ("imagenet", "RESNET50_STEM_IMAGENET"))),
        ModelParam("image_size", "RESNET50_IMAGE_SIZE")),
    activation_mib_per_sample=48.0))
register(ModelEntry(
    "gpt2", "GPT-2 (language modelling)", LANGUAGE_MODELING, "gpt2.train",
    (ModelParam("model_size", "GPT2_SIZE_", "choice"),
     ModelParam("dataset", kind="choice", choices=tuple(
         (d, f"GPT2_DATASET_{d.upper()}") for d in ("finewebedu", "shakespeare", "tinystories", "local"))),
     ModelParam("data_path", "GPT2_DATA_PATH", "string"), ModelParam("token_cap", "GPT2_TOKEN_CAP"),
     ModelParam("gpus_per_run", "GPT2_GPUS_PER_RUN"), ModelParam("block_size", "GPT2_BLOCK_SIZE"),
     ModelParam("max_time_s", "GPT2_MAX_TIME"), ModelParam("max_iters", "GPT2_MAX_ITERS"),
     ModelParam("eval_interval", "GPT2_EVAL_INTERVAL"), ModelParam("eval_samples", "GPT2_EVAL_SAMPLES"),
     ModelParam("warmup_steps", "GPT2_WARMUP_STEPS"), ModelParam("min_lr", "GPT2_MIN_LR", "number"),
     ModelParam("dropout", "GPT2_DROPOUT", "number"), ModelParam("bias", "GPT2_BIAS", "bool"),
     ModelParam("lr_decay_iters", "GPT2_LR_DECAY_ITERS"),
     ModelParam("variant_budgets", "GPT2_VARIANT_BUDGETS", "bool")),
    grad_clip_norm=1.0,  # nanoGPT's and upstream's
    # one 1024-token sequence of the 124M model, bf16 autocast, flash attention (docs/performance.md)
    activation_mib_per_sample=850.0, activation_scales_with_width=True, bitter_variants=True, tf32_setting=True))
