"""``attach_dropclass``: DropClass for any segmentation model, given the name of its final classifier."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..module import DropClass, DropClassOutput
from .base import check_dropclass_call


@dataclass
class _ForwardCall:
    """What one forward of :class:`DropClassModel` hands to its classifier slot, and gets back from it."""

    progress: float | None
    keep: torch.Tensor | None
    sample_index: torch.Tensor | None
    drop_logits: torch.Tensor | None = None
    used_keep: torch.Tensor | None = None


class AttachedClassifier(nn.Module):
    """Takes the place of the model's classifier: returns ``h(A)`` to the model in training (``h(A_drop)``
    in evaluation) and hands ``drop_logits``/``keep`` to the :class:`DropClassModel` around the model.

    It only works inside a forward of that wrapper in training mode (which
    supplies ``progress``); in eval mode it also works on its own.
    """

    def __init__(self, dropclass: DropClass) -> None:
        super().__init__()
        self.dropclass = dropclass
        self.call: _ForwardCall | None = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        call = self.call
        if not self.training:
            return self.dropclass(features, keep=None if call is None else call.keep)
        if call is None:
            raise RuntimeError(
                "the classifier replaced by attach_dropclass was called in training mode outside the wrapper: "
                "call the model returned by attach_dropclass, model(x, progress=t)"
            )
        if call.drop_logits is not None:
            raise RuntimeError("the classifier replaced by attach_dropclass was called more than once in one forward")
        out = self.dropclass(features, progress=call.progress, keep=call.keep, sample_index=call.sample_index)
        call.drop_logits, call.used_keep = out.drop_logits, out.keep
        return out.logits


class DropClassModel(nn.Module):
    """A user model whose classifier :func:`attach_dropclass` put inside a :class:`DropClass`.

    ``forward(x, *args, progress=None, keep=None, sample_index=None, **kwargs)``
    runs ``model(x, *args, **kwargs)`` (``sample_index``: the global indices
    ``[B]`` of the batch's samples for per-sample masks, as in
    :meth:`DropClass.forward`). In training it returns
    ``DropClassOutput(model_output, drop_logits, keep)``: ``model_output`` is
    what the model returns (computed with the original classifier ``h(A)``),
    ``drop_logits`` = ``h(A_drop)`` at the classifier's own resolution, even if
    the model post-processes (for example upsamples) its logits, and ``keep``
    the mask used. ``progress`` (or ``keep``) is required then. In eval mode it
    returns the model's output computed with the drop path ``h(select(A))``
    (every class kept unless ``keep`` is given).

    The per-forward hand-over lives only for the duration of one forward, so
    the wrapper works under DDP (one process per device) and across replicas.
    Its parameters, the DropClass ``select`` layer included, are those of
    ``self.model``; ``self.dropclass`` is the :class:`DropClass`.
    """

    def __init__(self, model: nn.Module, classifier: str) -> None:
        super().__init__()
        slot = model.get_submodule(classifier)
        if not isinstance(slot, AttachedClassifier):
            raise TypeError(f"model.{classifier} must be an AttachedClassifier, got {type(slot).__name__}")
        self.model = model
        self.classifier_name = classifier

    @property
    def attached(self) -> AttachedClassifier:
        """The module that replaced the classifier: the classifier with its :class:`DropClass`."""
        return self.model.get_submodule(self.classifier_name)

    @property
    def dropclass(self) -> DropClass:
        """The attached :class:`DropClass`."""
        return self.attached.dropclass

    def forward(
        self,
        x: Any,
        *args: Any,
        progress: float | None = None,
        keep: torch.Tensor | None = None,
        sample_index: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> DropClassOutput | Any:
        """The wrapped model's forward on ``x`` (and ``*args``, ``**kwargs``), its classifier call going through
        :class:`DropClass` with ``progress``, ``keep`` and ``sample_index``. Training: a ``DropClassOutput`` of the
        model's output (``logits``), the drop path's classifier output (``drop_logits``) and the mask;
        evaluation: the model's output with the drop-path classifier in place of its own."""
        attached = self.attached
        check_dropclass_call(attached, progress, keep)
        if attached.call is not None:
            raise RuntimeError(f"a forward of this model is already running through {self.classifier_name!r}")
        call = _ForwardCall(progress, keep, sample_index)
        attached.call = call
        try:
            output = self.model(x, *args, **kwargs)
        finally:
            attached.call = None
        if not attached.training:
            return output
        if call.drop_logits is None:
            raise RuntimeError(f"the model did not call its classifier {self.classifier_name!r} during the forward")
        return DropClassOutput(output, call.drop_logits, call.used_keep)

    def extra_repr(self) -> str:
        return f"classifier={self.classifier_name!r}"


def attach_dropclass(model: nn.Module, classifier: str, **dropclass_kwargs: Any) -> DropClassModel:
    """Puts a :class:`DropClass` around ``model``'s classifier and returns the wrapper that drives it.

    Args:
        model: any ``nn.Module``; it is modified in place (the classifier
            module is replaced) and becomes ``wrapper.model``.
        classifier: dotted name of the final ``nn.Conv2d(C, K, k)`` in
            ``model`` (as in ``model.named_modules()``), e.g. ``"head.cls"`` or
            ``"classifier.4"``. Its input is taken as ``A``.
        **dropclass_kwargs: ``per_sample``, ``seed``, ``bn_momentum`` of ``DropClass``.

    Returns:
        :class:`DropClassModel`; in training ``wrapper(x, progress=t)`` gives a
        ``DropClassOutput`` for :class:`~dropclass_fast.DropClassLoss`, in eval
        mode the model's usual output. Parameter names gain the prefix
        ``model.``, and the classifier's become ``<classifier>.dropclass.classifier.*``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(classifier, str) or not classifier:
        raise ValueError(f"classifier must be the dotted name of a submodule, got {classifier!r}")
    modules = dict(model.named_modules())
    if classifier not in modules:
        convs = [name for name, module in modules.items() if isinstance(module, nn.Conv2d)]
        raise ValueError(f"model has no submodule named classifier={classifier!r}; its Conv2d layers: {convs[-5:]}")
    conv = modules[classifier]
    if isinstance(conv, AttachedClassifier):
        raise ValueError(f"DropClass is already attached at classifier={classifier!r}")
    parts = classifier.split(".")
    for depth in range(len(parts)):  # the model and the classifier's ancestors
        name = ".".join(parts[:depth])
        if isinstance(modules[name], (DropClass, AttachedClassifier)):
            raise ValueError(
                f"classifier={classifier!r} is inside the DropClass at {name or 'the model itself'!r}: the model "
                f"already has DropClass"
            )
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"classifier={classifier!r} must name an nn.Conv2d, got {type(conv).__name__}")
    parent_name, _, child_name = classifier.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    dropclass = DropClass(conv, **dropclass_kwargs).to(device=conv.weight.device, dtype=conv.weight.dtype)
    setattr(parent, child_name, AttachedClassifier(dropclass))
    return DropClassModel(model, classifier)
