"""The reconstruction probe of supplementary section A: can a fresh classifier recover a dropped class from ``A_drop``?

The trained model is frozen. A freshly initialised classifier ``h'`` is
trained on ``A_drop`` with a fixed class ``z`` dropped at every step, against
all labels, ``z`` included. If the representation is disentangled, ``A_drop``
holds no evidence of ``z`` and ``h'`` cannot predict it. A control classifier,
trained the same way on ``A_drop`` with nothing dropped, shows what ``h'``
could reach on ``z`` with the same budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import functional as dcf
from .._checks import check_int, check_int_in
from ..data import SegmentationDataset
from ..models import SegmentationModel
from ..train import ResumableSampler, check_learning_rate, poly_lr
from ._evaluation import DEFAULT_EVAL, EvalOptions, confusion_of


class DropPathClassifier(nn.Module):
    """``classifier(select(A * s(keep)))`` of a frozen DropClass ``model``: logits ``[B, K, h, w]`` from images.

    Always in eval mode (the frozen model's BatchNorm uses running statistics).
    """

    def __init__(self, model: SegmentationModel, classifier: nn.Conv2d, keep: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.classifier = classifier
        self.register_buffer("keep", keep)

    def train(self, mode: bool = True) -> DropPathClassifier:
        """Stays in eval mode whatever ``mode`` says: the frozen model's BatchNorm uses its running statistics."""
        return super().train(False)

    def drop_path(self, features: torch.Tensor) -> torch.Tensor:
        """``A_drop`` ``[B, C, h, w]`` of the model's features ``A`` ``[B, C, h, w]``, without gradient."""
        with torch.no_grad():
            return self.model.dropclass.drop_path(features, self.keep)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K, h, w]`` of ``images`` ``[B, 3, H, W]`` (gradient only into ``classifier``)."""
        with torch.no_grad():
            features = self.model.features(images)
        return self.classifier(self.drop_path(features))


@dataclass(frozen=True)
class ProbeResult:
    """The probe's outcome for one dropped class ``z`` (IoUs as fractions, NaN if ``z`` is absent).

    Attributes:
        dropped_class, class_name: ``z``.
        iou_model: IoU of ``z`` by the trained model (nothing dropped).
        iou_dropped: IoU of ``z`` by the model's own classifier ``h`` on ``A_drop`` with ``z`` dropped.
        iou_probe: IoU of ``z`` by the new classifier ``h'`` trained on ``A_drop`` with ``z`` dropped.
        iou_control: IoU of ``z`` by a new classifier trained on ``A_drop`` with nothing dropped.
        losses: the probe classifier's training loss per iteration.
    """

    dropped_class: int
    class_name: str
    iou_model: float
    iou_dropped: float
    iou_probe: float
    iou_control: float
    losses: tuple[float, ...]


def _fresh_classifier(like: nn.Conv2d, seed: int) -> nn.Conv2d:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = nn.Conv2d(like.in_channels, like.out_channels, like.kernel_size, padding=like.padding)
    return classifier.to(like.weight.device)


def reconstruction_probe(
    model: SegmentationModel,
    train_set: SegmentationDataset,
    val_set: SegmentationDataset,
    dropped_class: int,
    iters: int = 200,
    batch_size: int = 8,
    lr: float = 0.01,
    seed: int = 0,
    options: EvalOptions = DEFAULT_EVAL,
) -> ProbeResult:
    """Trains the probe classifier (and its control) for ``iters`` SGD steps and evaluates them on ``val_set``.

    Args:
        model: a trained model with DropClass (``model.dropclass``); it is
            frozen (eval mode, no gradient) and left unchanged.
        train_set: items ``(image float [3, H, W], label int64 [H, W])`` with the
            transform the caller chose (e.g. a ``TrainTransform``).
        val_set: evaluation images.
        dropped_class: ``z``, dropped at every step.
        iters, batch_size, lr: SGD (momentum 0.9, weight decay 5e-4, poly schedule) on
            the softmax cross-entropy against all labels.
        seed: seeds the new classifiers' initialisation and the data order.
    """
    if not isinstance(model, SegmentationModel) or model.dropclass is None:
        raise TypeError(f"model must be a SegmentationModel with DropClass, got {type(model).__name__} without one")
    k = model.num_classes
    dropped_class = check_int_in("dropped_class", dropped_class, 0, k - 1, "a class index")
    iters, batch_size = check_int("iters", iters), check_int("batch_size", batch_size)
    check_learning_rate("lr", lr)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    keep = torch.ones(k, device=device)
    keep[dropped_class] = 0.0
    own = model.dropclass.classifier
    probe = DropPathClassifier(model, _fresh_classifier(own, seed), keep)
    control = DropPathClassifier(model, _fresh_classifier(own, seed), torch.ones(k, device=device))
    parameters = [*probe.classifier.parameters(), *control.classifier.parameters()]
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=5e-4)
    sampler = ResumableSampler(len(train_set), batch_size, seed=seed)
    ignore = train_set.ignore_index
    losses: list[float] = []
    epoch = 0
    while len(losses) < iters:
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        for images, labels in DataLoader(train_set, batch_size=batch_size, sampler=sampler, drop_last=True):
            images, labels = images.to(device), labels.to(device)
            for group in optimizer.param_groups:
                group["lr"] = poly_lr(lr, len(losses), iters)
            with torch.no_grad():
                features = model.features(images)
            probe_loss, control_loss = (
                dcf.seg_cross_entropy(net.classifier(net.drop_path(features)), labels, ignore_index=ignore)
                for net in (probe, control)
            )
            optimizer.zero_grad(set_to_none=True)
            (probe_loss + control_loss).backward()
            optimizer.step()
            losses.append(float(probe_loss.detach()))
            if len(losses) == iters:
                break
        epoch += 1

    def iou_of(net: nn.Module) -> float:
        return float(confusion_of(net, val_set, k, options).iou()[dropped_class])

    result = ProbeResult(
        dropped_class, val_set.class_names[dropped_class], iou_of(model),
        iou_of(DropPathClassifier(model, own, keep)), iou_of(probe), iou_of(control), tuple(losses),
    )
    model.train(was_training)
    return result
