"""End-to-end training step of HRNet-W18-small-v2 (``dropclass_fast.models``), with and without DropClass.

A training-step case::

    {"op": "train_step", "variant": "dropclass_fast", "precision": "float32", "device": "cpu",
     "B": 2, "K": 19, "H": 256, "W": 512, "threads": 2}

One step is forward, loss, backward and an SGD update (momentum 0.9, weight decay 5e-4, the paper's
recipe) on random images ``[B, 3, H, W]`` and labels ``[B, H, W]`` (logits at ``H/4 x W/4``). The
variants (:data:`VARIANTS`):

* ``baseline`` -- no DropClass; the loss is ``dcf.seg_cross_entropy`` under the ``"eager"`` backend,
  i.e. ``F.interpolate`` + ``F.cross_entropy`` as the official HRNet code trains: the baseline of the targets;
* ``baseline_fused`` -- the same model with the fused loss (backend ``"auto"``), for reference;
* ``official`` -- DropClass as the official code writes it (``official_dropclass.py``), all eager;
* ``dropclass_fast`` -- ``build_model(..., dropclass=True)`` + ``DropClassLoss``, backend ``"auto"``.

DropClass variants drop class 3 at progress 0.5 in every step (the most work a step can do).
``precision``: ``"float32"`` or ``"bf16-autocast"`` (forward and loss under ``torch.autocast(bfloat16)``).
Every variant starts from the same seeded weights.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from official_dropclass import OfficialDropClassHead, official_dropclass_loss
from torch import nn

import dropclass_fast
from dropclass_fast import functional as dcf
from dropclass_fast._checks import check_choice
from dropclass_fast.models import build_model

VARIANTS = ("baseline", "baseline_fused", "official", "dropclass_fast")
PRECISIONS = ("float32", "bf16-autocast")
#: What a training-step case gets for each of these fields it leaves out (:func:`build_step` fills them in).
STEP_CASE_DEFAULTS: dict[str, Any] = {"precision": "float32", "device": "cpu", "threads": 2, "seed": 0}
MODEL = "hrnet_v2"

#: Image shapes by name: ``cpu`` a small crop, ``cityscapes`` the paper's per-GPU crop and batch.
STEP_SHAPES: dict[str, dict[str, int]] = {
    "smoke": {"B": 2, "K": 19, "H": 32, "W": 32},
    "cpu": {"B": 2, "K": 19, "H": 256, "W": 512},
    "cityscapes": {"B": 12, "K": 19, "H": 512, "W": 1024},
}

DROPPED_CLASS = 3
PROGRESS = 0.5
IGNORE_INDEX = 255


def _check_step_case(case: dict[str, Any]) -> None:
    check_choice("case variant", case.get("variant"), VARIANTS)
    check_choice("case precision", case["precision"], PRECISIONS)


def _autocast(case: dict[str, Any]) -> Callable[[], AbstractContextManager[Any]]:
    if case["precision"] == "float32":
        return nullcontext
    device_type = torch.device(case["device"]).type
    return lambda: torch.autocast(device_type, dtype=torch.bfloat16)


def _variant(
    case: dict[str, Any], images: torch.Tensor, target: torch.Tensor, keep: torch.Tensor
) -> tuple[nn.Module, Callable[[], torch.Tensor]]:
    """The variant's trainable module (on the case's device, training mode) and its ``forward + loss`` (0-dim)."""
    variant, classes = case["variant"], int(case["K"])
    if variant == "official":
        head = OfficialDropClassHead(build_model(MODEL, classes, dropclass=False)).to(images.device)

        def official() -> torch.Tensor:
            logits, drop_logits = head(images, keep)
            return official_dropclass_loss(logits, drop_logits, target, keep, PROGRESS)

        return head, official
    if variant == "dropclass_fast":
        model = build_model(MODEL, classes, dropclass=True).to(images.device)
        loss_fn = dropclass_fast.DropClassLoss()

        def fast() -> torch.Tensor:
            return loss_fn(model(images, keep=keep), target, progress=PROGRESS)[0]

        return model, fast
    model = build_model(MODEL, classes, dropclass=False).to(images.device)
    backend = "eager" if variant == "baseline" else "auto"

    def baseline() -> torch.Tensor:
        with dropclass_fast.set_backend(backend):
            return dcf.seg_cross_entropy(model(images), target, ignore_index=IGNORE_INDEX)

    return model, baseline


def build_step(case: dict[str, Any]) -> tuple[Callable[[], None], Callable[[], None]]:
    """Model, optimizer and seeded inputs of a training-step case; ``(run, clear)``: one step, and freeing its grads."""
    case = {**STEP_CASE_DEFAULTS, **case}
    _check_step_case(case)
    torch.set_num_threads(int(case["threads"]))
    device = torch.device(case["device"])
    generator = torch.Generator().manual_seed(int(case["seed"]))
    batch, classes = int(case["B"]), int(case["K"])
    images = torch.randn(batch, 3, case["H"], case["W"], generator=generator).to(device)
    target = torch.randint(0, classes, (batch, case["H"], case["W"]), generator=generator)
    target[:, : max(1, case["H"] // 32)] = IGNORE_INDEX
    target = target.to(device)
    keep = torch.ones(classes, device=device)
    keep[DROPPED_CLASS] = 0.0

    torch.manual_seed(int(case["seed"]))  # the same initial weights for every variant
    module, loss_closure = _variant(case, images, target, keep)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    autocast = _autocast(case)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def clear() -> None:
        optimizer.zero_grad(set_to_none=True)

    def run() -> None:
        clear()
        with autocast():
            loss = loss_closure()
        loss.backward()
        optimizer.step()
        synchronize()

    return run, clear


def effective_backend(case: dict[str, Any]) -> str:
    """The implementations ``"auto"`` resolves to for the DropClass ops on ``case["device"]``, e.g. ``"cpp"``."""
    device_type = torch.device(case.get("device", STEP_CASE_DEFAULTS["device"])).type
    with dropclass_fast.set_backend("auto"):
        return "/".join(sorted({dropclass_fast._backend.resolve(device_type, op) for op in dcf.__all__}))
