"""Re-estimating BatchNorm running statistics of a trained model (before evaluating a short run)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data import SegmentationDataset
from ..models import SegmentationModel
from ..module import DropClass
from .sampler import ResumableSampler


def recalibrate_batchnorm(
    model: SegmentationModel, dataset: SegmentationDataset, batches: int, batch_size: int = 8, seed: int = 0
) -> SegmentationModel:
    """Replaces every BatchNorm's running mean and variance by their plain average over ``batches`` batches.

    The official HRNet BatchNorm momentum (0.01) makes the running statistics
    trail the network by a few hundred iterations, which the paper's hundreds
    of epochs hide but a short run does not: its eval-mode predictions then
    use statistics of a network that no longer exists. This pass (no
    gradient, weights unchanged) runs the model in training mode over the
    first ``batches`` batches of ``dataset`` (items ``(image [3, H, W],
    label [H, W])``, in the seeded order of
    :class:`ResumableSampler`) with cumulative averaging,
    restores the momenta and returns the model in eval mode. A DropClass
    model runs its drop path with every class kept (its inference path).
    """
    if not isinstance(model, SegmentationModel):
        raise TypeError(f"model must be a SegmentationModel, got {type(model).__name__}")
    if not isinstance(batches, int) or batches < 1:
        raise ValueError(f"batches must be a positive int, got {batches!r}")
    if not isinstance(batch_size, int) or not 1 <= batch_size <= len(dataset):
        raise ValueError(f"batch_size must be an int in [1, {len(dataset)}] (the dataset's items), got {batch_size!r}")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError(f"model {type(model).__name__} has no BatchNorm layer to recalibrate")
    momenta = [m.momentum for m in norms]
    drop_paths = [m for m in model.modules() if isinstance(m, DropClass)]
    steps = [m.step for m in drop_paths]  # the training-step count (a checkpointed state) is not this pass's
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average: the mean over the batches seen
    device = next(model.parameters()).device
    sampler = ResumableSampler(len(dataset), batch_size, seed=seed)
    keep = torch.ones(model.num_classes, device=device)
    model.train()
    seen = 0
    with torch.no_grad():
        epoch = 0
        while seen < batches:
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            for images, _ in DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True):
                model(images.to(device), keep=keep)
                seen += 1
                if seen == batches:
                    break
            epoch += 1
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    for drop_path, step in zip(drop_paths, steps):
        drop_path.step = step
    return model.eval()
