"""Training an image classifier end to end: the part LeNet-5, ResNet-18 and ResNet-50 share.

A `<model>/train.py` loads its data and builds its network; this module
sizes the batch, builds optimizer, pruner and schedule from the run spec,
runs the shared loop with evaluation each epoch and writes metrics.json.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from lib.data.augment import random_crop, random_flip
from lib.data.imagefolder import ImageFolderData
from lib.data.mnist import ImageClassificationData
from lib.optim import build_optimizer
from lib.spec import RunSpec
from lib.train.batch_plan import free_gpu_mib, plan_batch
from lib.train.harness import RunContext, build_pruner, loop_config, schedule_for, start_run, train_and_record
from lib.train.loop import TrainingLoop
from lib.train.tasks import ClassificationTask, FolderClassificationTask

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
Data = Union[ImageClassificationData, ImageFolderData]


def crop_and_flip(padding: int = 4) -> Augment:
    """The standard CIFAR augmentation: random crop of the padded image, then a random mirror."""
    return lambda x, g: random_flip(random_crop(x, padding, g), g)


def train_image_classifier(run: RunContext, data: Data,
                           model: nn.Module, augment: Optional[Augment]) -> dict[str, Any]:
    """Train `model` on in-memory tensors or an image folder; write metrics.json."""
    spec = run.spec
    plan = plan_batch(spec.model, spec.training, free_gpu_mib=free_gpu_mib(run.device),
                      num_params=sum(p.numel() for p in model.parameters()))
    print(plan.describe())
    if isinstance(data, ImageFolderData):
        task = FolderClassificationTask(data=data, batch_size=plan.micro_batch, seed=spec.seed, augment=augment,
                                        grad_accum=plan.grad_accum, num_workers=min(8, os.cpu_count() or 1))
    else:
        task = ClassificationTask(train_x=data.train_images, train_y=data.train_labels, test_x=data.test_images,
                                  test_y=data.test_labels, batch_size=plan.micro_batch, seed=spec.seed, augment=augment,
                                  grad_accum=plan.grad_accum)
    steps_per_epoch = task.steps_per_epoch
    total_steps = spec.training.epochs * steps_per_epoch
    schedule = schedule_for(spec, total_steps)
    optimizer = build_optimizer(spec.optimizer, model, schedule.peak, spec.optimizer_params)
    pruner = build_pruner(spec, model, optimizer, total_steps, steps_per_epoch)
    config = loop_config(spec, run.run_dir, plan, total_steps=total_steps, eval_every=steps_per_epoch)
    loop = TrainingLoop(model, task, optimizer, pruner, schedule, config, device=run.device)
    metrics = train_and_record(run.run_dir, spec, loop, started=run.started, note=run.device_note, plan=plan,
                               dataset=data.info)
    best = metrics["best_accuracy_pct"]
    print(f"best test accuracy {'-' if best is None else f'{best:.2f}%'} ({metrics['best_scope'].split(':')[0]})  "
          f"final {metrics['final_accuracy_pct']:.2f}%  sparsity {metrics['sparsity']['global_pct']:.2f}%")
    return metrics


@dataclass(frozen=True)
class ImageTrainer:
    """What a classifier's `<model>/train.py` supplies: how to load its data
    (run spec, device, may download), build its network and augment, each from the run spec."""

    load: Callable[[RunSpec, Any, bool], Data]
    build: Callable[[Data, RunSpec], nn.Module]
    augment: Callable[[RunSpec], Optional[Augment]]

    def prepare_data(self, spec: RunSpec) -> str:
        """Download or locate the data once, before a matrix; say what was found."""
        data = self.load(spec, "cpu", True)
        return f"{data.info['name']}: {data.info['split']}"

    def main(self, description: str) -> None:
        run = start_run(description)
        data = self.load(run.spec, run.device, run.download)
        print(f"data: {data.info['split']}")
        train_image_classifier(run, data, self.build(data, run.spec).to(run.device), self.augment(run.spec))
