"""Loading the checkpoints people already have into the reference models, by name, reporting what did not fit.

* :func:`load_official_checkpoint`: official DropClass HRNet checkpoints
  (``_classifier.*``, ``clsdrop_conv1.*``, ``clsdrop_bn1.*``), official
  HRNet-Semantic-Segmentation ones (classifier ``last_layer.3.*``, keys
  possibly prefixed ``model.``) and ImageNet-pretrained HRNet classification
  files (the backbone keys match; their ``incre_modules``, ``classifier`` ...
  are reported as unexpected).
* :func:`load_torchvision_checkpoint`: torchvision's
  ``deeplabv3_mobilenet_v3_large`` files (``aux_classifier.*`` reported as
  unexpected) and ImageNet ``mobilenet_v3_large`` files (``features.*`` go to
  ``backbone.*``).
* :func:`to_official_state_dict`: an HRNet's state dict under the official DropClass names.

Only tensors whose (mapped) name exists in the model with the same shape are
loaded; floating values are cast to the model's dtype. A ``module.`` prefix
(DDP) is stripped from every key.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from .deeplabv3 import DeepLabV3
from .hrnet import HRNet

_EXTRA_STATE = "_extra_state"
_HRNET_CLASSIFIER = "last_layer.3."
_OFFICIAL_CLASSIFIER = "_classifier."
#: official DropClass name -> name inside the model's ``DropClass`` (``last_layer.3.``)
_OFFICIAL_DROPCLASS = {"clsdrop_conv1.": "select.0.", "clsdrop_bn1.": "select.1."}


class LoadReport(NamedTuple):
    """What a loader did, by model key: ``loaded``; ``missing`` (model keys the file lacks, left as they
    were); ``unexpected`` (file keys, after mapping, that the model lacks); ``shape_mismatch`` (in both,
    shapes differ: not loaded)."""

    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    shape_mismatch: list[str]

    def __str__(self) -> str:
        def brief(keys: list[str]) -> str:
            return f"{len(keys)}" + (f" ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})" if keys else "")

        return (
            f"loaded {len(self.loaded)}, missing {brief(self.missing)}, unexpected {brief(self.unexpected)}, "
            f"shape mismatch {brief(self.shape_mismatch)}"
        )


def _is_state_dict(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) for k in value)
        and all(isinstance(v, torch.Tensor) or k.endswith(_EXTRA_STATE) for k, v in value.items())
    )


def read_state_dict(path_or_state_dict: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """The state dict in a file (``torch.load(weights_only=True)``) or mapping.

    Accepts a bare state dict or a training checkpoint holding one under
    ``"state_dict"`` or ``"model"``; strips a ``module.`` prefix (DDP) from
    every key. Raises ``ValueError`` for anything else.
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        source = f"file {os.fspath(path_or_state_dict)!r}"
        try:
            content = torch.load(path_or_state_dict, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            message = f"{source} is not a state dict: torch.load(weights_only=True) refused it: {error}"
            raise ValueError(message) from None
    elif isinstance(path_or_state_dict, Mapping):
        content, source = path_or_state_dict, "the mapping given"
    else:
        raise TypeError(f"path_or_state_dict must be a path or a mapping, got {type(path_or_state_dict).__name__}")
    if not _is_state_dict(content) and isinstance(content, Mapping):
        content = next((content[k] for k in ("state_dict", "model") if _is_state_dict(content.get(k))), content)
    if not _is_state_dict(content):
        found = f"keys {list(content)[:5]}" if isinstance(content, Mapping) else type(content).__name__
        raise ValueError(
            f"{source} is not a state dict (a mapping of names to tensors, bare or under 'state_dict' or "
            f"'model'): found {found}"
        )
    return {k.removeprefix("module."): v for k, v in content.items()}


def load_mapped(
    model: nn.Module, state_dict: Mapping[str, Any], rename: Callable[[str], str], strict: bool = False
) -> LoadReport:
    """Loads ``state_dict`` into ``model`` after renaming with ``rename`` every key that is not already a
    key of the model; see :class:`LoadReport`.

    With ``strict=True`` nothing is loaded unless every model key is matched
    and every file key is used (``ValueError`` otherwise).
    """
    own = model.state_dict()
    loadable: dict[str, Any] = {}
    unexpected, shape_mismatch = [], []
    for key, value in state_dict.items():
        name = key if key in own else rename(key)
        if name not in own:
            unexpected.append(name)
        elif isinstance(value, torch.Tensor) and value.shape != own[name].shape:
            shape_mismatch.append(name)
        else:
            loadable[name] = value
    missing = [k for k in own if k not in loadable and k not in shape_mismatch and not k.endswith(_EXTRA_STATE)]
    report = LoadReport(list(loadable), missing, unexpected, shape_mismatch)
    if strict and (missing or unexpected or shape_mismatch):
        raise ValueError(f"state_dict does not match the model (strict=True): {report}")
    model.load_state_dict(loadable, strict=False)
    return report


def check_backbone_loaded(model: HRNet | DeepLabV3, report: LoadReport, source: str) -> None:
    """``ValueError`` naming ``source`` unless ``report`` (of a load into ``model``) loaded every tensor of the
    backbone: all but the segmentation head (``last_layer.*`` of an HRNet, ``classifier.*`` of a DeepLabV3),
    which a pretrained file may lack or size for other classes. BatchNorm ``num_batches_tracked`` counters,
    absent from older files, do not count."""
    head = "last_layer." if isinstance(model, HRNet) else "classifier."
    gaps = [
        key
        for key in report.missing + report.shape_mismatch
        if not key.startswith(head) and not key.endswith("num_batches_tracked")
    ]
    if gaps:
        raise ValueError(
            f"{source} does not fit this {type(model).__name__}: {len(gaps)} backbone tensors are missing from it "
            f"or have other shapes ({', '.join(gaps[:4])}{', ...' if len(gaps) > 4 else ''}); {report}"
        )


def _dropclass_prefix(model: nn.Module) -> str | None:
    """The name prefix of the model's DropClass (``last_layer.3.`` built in, ``last_layer.3.dropclass.`` put
    there by ``attach_dropclass``), or ``None`` for a baseline."""
    dropclass = model.dropclass
    if dropclass is None:
        return None
    return next(name for name, module in model.named_modules() if module is dropclass) + "."


def _hrnet_classifier_prefix(model: HRNet) -> str:
    prefix = _dropclass_prefix(model)
    return _HRNET_CLASSIFIER if prefix is None else prefix + "classifier."


def load_official_checkpoint(
    model: HRNet, path_or_state_dict: str | os.PathLike | Mapping[str, Any], strict: bool = False
) -> LoadReport:
    """Loads an official DropClass / HRNet-Semantic-Segmentation / ImageNet HRNet checkpoint into an :class:`HRNet`.

    ``_classifier.*`` and ``last_layer.3.*`` go to the classifier
    (``last_layer.3.classifier.*`` with DropClass), ``clsdrop_conv1.*`` /
    ``clsdrop_bn1.*`` to ``last_layer.3.select.0/1.*`` (under
    ``last_layer.3.dropclass.`` when ``attach_dropclass`` put the DropClass
    there); a ``model.`` prefix (HRNet-Semantic-Segmentation's ``FullModel``) is stripped. The DropClass
    ``step``/``seed`` (``_extra_state``, absent from official files) keep their values.
    """
    if not isinstance(model, HRNet):
        raise TypeError(f"model must be an HRNet (build_model('hrnet_v1'/'hrnet_v2')), got {type(model).__name__}")
    classifier, dropclass = _hrnet_classifier_prefix(model), _dropclass_prefix(model)

    def rename(key: str) -> str:
        key = key.removeprefix("model.")
        for official in (_OFFICIAL_CLASSIFIER, _HRNET_CLASSIFIER):
            if key.startswith(official):
                return classifier + key.removeprefix(official)
        for official, ours in _OFFICIAL_DROPCLASS.items():
            if dropclass is not None and key.startswith(official):
                return dropclass + ours + key.removeprefix(official)
        return key

    return load_mapped(model, read_state_dict(path_or_state_dict), rename, strict)


def to_official_state_dict(model: HRNet) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` under the official DropClass names (``_classifier``, ``clsdrop_conv1/bn1``),
    without the DropClass ``_extra_state``; the inverse of :func:`load_official_checkpoint`'s mapping."""
    if not isinstance(model, HRNet):
        raise TypeError(f"model must be an HRNet, got {type(model).__name__}")
    classifier, dropclass = _hrnet_classifier_prefix(model), _dropclass_prefix(model)
    inverse = {dropclass + ours: official for official, ours in _OFFICIAL_DROPCLASS.items() if dropclass is not None}
    inverse[classifier] = _OFFICIAL_CLASSIFIER
    result = {}
    for key, value in model.state_dict().items():
        if key.endswith(_EXTRA_STATE):
            continue
        prefix = next((p for p in inverse if key.startswith(p)), None)
        result[key if prefix is None else inverse[prefix] + key.removeprefix(prefix)] = value
    return result


def load_torchvision_checkpoint(
    model: DeepLabV3, path_or_state_dict: str | os.PathLike | Mapping[str, Any], strict: bool = False
) -> LoadReport:
    """Loads a torchvision ``deeplabv3_mobilenet_v3_large`` (or ImageNet ``mobilenet_v3_large``) state dict.

    Names are torchvision's; with DropClass, ``classifier.4.*`` goes to
    ``classifier.4.classifier.*`` (``classifier.4.dropclass.classifier.*`` when
    ``attach_dropclass`` put it there); ``features.*`` (an ImageNet MobileNetV3)
    to ``backbone.*``. fp16 files load into the model's dtype.
    """
    if not isinstance(model, DeepLabV3):
        raise TypeError(f"model must be a DeepLabV3 (build_model('deeplabv3')), got {type(model).__name__}")
    head, dropclass = "classifier.4.", _dropclass_prefix(model)

    def rename(key: str) -> str:
        if key.startswith("features."):
            return "backbone." + key.removeprefix("features.")
        if dropclass is not None and key.startswith(head):
            return dropclass + "classifier." + key.removeprefix(head)
        return key

    return load_mapped(model, read_state_dict(path_or_state_dict), rename, strict)
