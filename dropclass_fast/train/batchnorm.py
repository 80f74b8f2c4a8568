"""Re-estimating BatchNorm running statistics of a trained model (before evaluating a short run)."""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .._checks import check_int, check_int_in
from ..models import DropClassModel, SegmentationModel
from ..module import DropClass
from .sampler import ResumableSampler

Model = TypeVar("Model", bound=nn.Module)


def recalibrate_batchnorm(
    model: Model, dataset: Dataset, batches: int, batch_size: int = 8, seed: int = 0
) -> Model:
    """Replaces every BatchNorm's running mean and variance by their plain average over ``batches`` batches.

    The official HRNet BatchNorm momentum (0.01, also the default of the
    DropClass ``select`` layer) makes the running statistics trail the
    network by a few hundred iterations, which the paper's hundreds of epochs
    hide but a short run does not: its eval-mode predictions then use
    statistics of a network that no longer exists. This pass (no gradient,
    weights unchanged) runs the model in training mode over the first
    ``batches`` batches of ``dataset`` (items ``(image [3, H, W], label [H,
    W])``, in the seeded order of :class:`ResumableSampler`; its
    ``set_epoch(epoch)``, if it has one, is called per epoch) with cumulative
    averaging, restores the momenta and returns the model in eval mode.

    ``model``: a reference model (:class:`~dropclass_fast.models.SegmentationModel`),
    the wrapper of :func:`~dropclass_fast.models.attach_dropclass`, or any
    model without DropClass, called as ``model(images)``. DropClass runs its
    drop path with every class kept (its inference path).
    """
    drop_paths = [m for m in model.modules() if isinstance(m, DropClass)] if isinstance(model, nn.Module) else []
    if not isinstance(model, nn.Module) or (drop_paths and not isinstance(model, (SegmentationModel, DropClassModel))):
        raise TypeError(
            f"model must be a SegmentationModel, the DropClassModel of attach_dropclass or a model without DropClass, "
            f"got {type(model).__name__}"
        )
    batches = check_int("batches", batches)
    batch_size = check_int_in("batch_size", batch_size, 1, len(dataset), "the dataset's items")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError(f"model {type(model).__name__} has no BatchNorm layer to recalibrate")
    momenta = [m.momentum for m in norms]
    steps = [m.step for m in drop_paths]  # the training-step count (a checkpointed state) is not this pass's
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average: the mean over the batches seen
    device = next(model.parameters()).device
    sampler = ResumableSampler(len(dataset), batch_size, seed=seed)
    keep = {"keep": torch.ones(drop_paths[0].num_classes, device=device)} if drop_paths else {}
    model.train()
    seen = 0
    with torch.no_grad():
        epoch = 0
        while seen < batches:
            sampler.set_epoch(epoch)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            for images, _ in DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True):
                model(images.to(device), **keep)
                seen += 1
                if seen == batches:
                    break
            epoch += 1
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    for drop_path, step in zip(drop_paths, steps):
        drop_path.step = step
    return model.eval()
