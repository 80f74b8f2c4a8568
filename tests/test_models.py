"""Reference models: official HRNet / torchvision DeepLabV3 vectors, checkpoint mapping, attach_dropclass, predict."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dropclass_fast import DropClass, DropClassLoss, DropClassOutput
from dropclass_fast.models import (
    HRNET_CONFIGS,
    MODEL_NAMES,
    DeepLabV3,
    HRNet,
    attach_dropclass,
    build_model,
    check_backbone_loaded,
    load_official_checkpoint,
    load_torchvision_checkpoint,
    predict,
    to_official_state_dict,
)

# float32 through a whole network: summation order (the thread count) moves HRNet-v2 features by up to 2e-5
# (one thread against the reference's run); a wrong layer moves them by O(1).
TOL = {"rtol": 1e-4, "atol": 5e-5}


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_hrnet_reproduces_official_dropclass_vectors(reference_vectors, version):
    vectors = reference_vectors("official_dropclass_hrnet_vectors.pt")[version]
    model = build_model(f"hrnet_{version}", num_classes=19, dropclass=True)
    report = load_official_checkpoint(model, vectors["state_dict"], strict=True)
    assert len(report.loaded) == len(vectors["state_dict"])
    assert set(to_official_state_dict(model)) == set(vectors["state_dict"])

    with torch.no_grad():
        torch.testing.assert_close(model.eval()(vectors["input"]), vectors["eval_logits"], **TOL)

    model.train()
    torch.testing.assert_close(model.features(vectors["input"]), vectors["train_features"], **TOL)
    out = model(vectors["input"], keep=vectors["keep"])
    assert isinstance(out, DropClassOutput)
    torch.testing.assert_close(out.logits, vectors["train_logits"], **TOL)
    torch.testing.assert_close(out.drop_logits, vectors["train_drop_logits"], **TOL)
    loss_fn = DropClassLoss(
        alpha=vectors["alpha"], ignore_index=vectors["ignore_index"], align_corners=vectors["align_corners"]
    )
    total, parts = loss_fn(out, vectors["labels"], progress=vectors["progress"])
    torch.testing.assert_close(parts["ce"], vectors["ce_weighted"], **TOL)
    torch.testing.assert_close(parts["ce_drop"], vectors["ce_drop_weighted"], **TOL)
    torch.testing.assert_close(parts["sup"], vectors["sup_weighted"], **TOL)
    torch.testing.assert_close(total, vectors["loss_total"], **TOL)
    total.backward()
    assert model.dropclass.select[0].weight.grad.abs().sum() > 0


def test_hrnet_v2_stages_match_the_vector_file(reference_vectors):
    stages = reference_vectors("official_dropclass_hrnet_vectors.pt")["v2"]["stages"]
    for index, config in enumerate(HRNET_CONFIGS["v2"], start=1):
        official = stages[f"STAGE{index}"]
        assert (config.num_modules, config.block) == (official["NUM_MODULES"], official["BLOCK"])
        assert list(config.num_blocks) == official["NUM_BLOCKS"]
        assert list(config.num_channels) == official["NUM_CHANNELS"]


@pytest.mark.parametrize("dropclass", [False, True])
def test_deeplabv3_reproduces_torchvision_vector(reference_vectors, dropclass):
    vectors = reference_vectors("deeplabv3_mobilenet_v3_large_vector.pt")
    model = build_model("deeplabv3", num_classes=vectors["num_classes"], dropclass=dropclass).eval()
    report = load_torchvision_checkpoint(model, vectors["state_dict_fp16"], strict=not dropclass)
    assert not report.unexpected and not report.shape_mismatch
    assert all(key.startswith("classifier.4.select.") for key in report.missing)
    assert len(report.missing) == (7 if dropclass else 0)  # conv weight/bias, BN affine/stats/count
    with torch.no_grad():
        torch.testing.assert_close(model.features(vectors["input"]), vectors["features"], **TOL)
        if dropclass:  # the loaded classifier sits inside DropClass: h(A)
            logits = model.dropclass.classifier(model.features(vectors["input"]))
        else:
            logits = model(vectors["input"])
            torch.testing.assert_close(predict(model, vectors["input"]), vectors["out"], **TOL)
    torch.testing.assert_close(logits, vectors["low_res_logits"], **TOL)


def _hrnet_v1(dropclass: bool = True, seed: int = 0, **kwargs) -> HRNet:
    torch.manual_seed(seed)
    return build_model("hrnet_v1", num_classes=19, dropclass=dropclass, **kwargs)


def test_official_names_round_trip():
    source = _hrnet_v1(seed=1)
    official = to_official_state_dict(source)
    assert {"_classifier.weight", "clsdrop_conv1.bias", "clsdrop_bn1.running_var", "last_layer.0.weight"} <= set(
        official
    )
    assert not any(key.startswith("last_layer.3") or key.endswith("_extra_state") for key in official)

    target = _hrnet_v1(seed=2)
    target.dropclass.step = 17
    report = load_official_checkpoint(target, official, strict=True)
    assert not (report.missing or report.unexpected or report.shape_mismatch)
    assert target.dropclass.step == 17  # official files carry no DropClass step: it is kept
    back = to_official_state_dict(target)
    assert list(back) == list(official)
    for key, value in official.items():
        assert torch.equal(back[key], value), key


def test_baseline_hrnet_loads_official_classifier_and_reports_dropclass_layers():
    official = to_official_state_dict(_hrnet_v1(seed=1))
    baseline = _hrnet_v1(dropclass=False, seed=2)
    report = load_official_checkpoint(baseline, official)
    assert sorted(report.unexpected) == sorted(k for k in official if k.startswith("clsdrop_"))
    assert not report.missing and not report.shape_mismatch
    torch.testing.assert_close(baseline.last_layer[3].weight, official["_classifier.weight"])


def test_imagenet_style_checkpoint_loads_matching_keys_and_reports_the_rest(tmp_path):
    source = _hrnet_v1(dropclass=False, seed=1)
    backbone = {k: v for k, v in source.state_dict().items() if not k.startswith("last_layer.")}
    extra = {
        "incre_modules.0.0.conv1.weight": torch.randn(32, 16, 1, 1),
        "final_layer.0.weight": torch.randn(2048, 1024, 1, 1),
        "classifier.weight": torch.randn(1000, 2048),
    }
    wrong_size = {"_classifier.weight": torch.randn(21, 240, 1, 1), "_classifier.bias": torch.randn(21)}
    path = tmp_path / "imagenet.pth"
    checkpoint = {f"module.{k}": v for k, v in {**backbone, **extra, **wrong_size}.items()}
    torch.save({"state_dict": checkpoint, "epoch": 90}, path)

    model = _hrnet_v1(seed=2)
    head_before = {k: v.clone() for k, v in model.last_layer.state_dict().items() if isinstance(v, torch.Tensor)}
    report = load_official_checkpoint(model, path)
    assert sorted(report.loaded) == sorted(backbone)
    assert sorted(report.unexpected) == sorted(extra)
    assert report.shape_mismatch == ["last_layer.3.classifier.weight", "last_layer.3.classifier.bias"]
    assert sorted(report.missing) == sorted(
        k for k in model.state_dict() if k.startswith("last_layer.") and not k.startswith("last_layer.3.classifier.")
        and not k.endswith("_extra_state")
    )
    assert "missing 14" in str(report) and "unexpected 3" in str(report)
    own = model.state_dict()
    for key, value in backbone.items():
        assert torch.equal(own[key], value), key
    for key, value in head_before.items():
        assert torch.equal(model.last_layer.state_dict()[key], value), key
    with pytest.raises(ValueError, match=r"state_dict does not match the model \(strict=True\): .*missing"):
        load_official_checkpoint(_hrnet_v1(), path, strict=True)


def test_loaders_reject_what_is_not_a_state_dict(tmp_path):
    path = tmp_path / "not_weights.pt"
    torch.save({"epoch": 3, "lr": 0.01}, path)
    with pytest.raises(ValueError, match="not a state dict"):
        load_official_checkpoint(_hrnet_v1(), path)
    with pytest.raises(ValueError, match="not a state dict"):
        load_torchvision_checkpoint(DeepLabV3(num_classes=3, dropclass=False), {})
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(ValueError, match="not a state dict"):
        load_official_checkpoint(_hrnet_v1(), path)
    with pytest.raises(TypeError, match="path_or_state_dict"):
        load_official_checkpoint(_hrnet_v1(), 42)
    with pytest.raises(TypeError, match="HRNet"):
        load_official_checkpoint(DeepLabV3(num_classes=3, dropclass=False), {})
    with pytest.raises(TypeError, match="DeepLabV3"):
        load_torchvision_checkpoint(_hrnet_v1(), {})


class _Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.cls = nn.Conv2d(8, 5, 1)


class _Toy(nn.Module):
    """A user model with a nested classifier whose logits it upsamples to the input size."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = _Head()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.mix(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.head.cls(self.features(x)), size=x.shape[-2:], mode="bilinear")


def test_attach_dropclass_matches_a_hand_built_dropclass():
    toy = _Toy()
    classifier = toy.head.cls
    wrapper = attach_dropclass(toy, classifier="head.cls", seed=3)
    assert wrapper.dropclass.classifier is classifier
    params = set(wrapper.parameters())
    assert set(wrapper.dropclass.select.parameters()) <= params and classifier.weight in params

    reference = DropClass(nn.Conv2d(8, 5, 1), seed=3).train()
    reference.load_state_dict(wrapper.dropclass.state_dict())
    x = torch.randn(2, 3, 11, 14)
    with torch.no_grad():
        features = toy.features(x)
    wrapper.train()
    out = wrapper(x, progress=1.0)
    expected = reference(features, progress=1.0)
    assert isinstance(out, DropClassOutput)
    torch.testing.assert_close(out.keep, expected.keep)
    assert (out.keep == 0).sum() == 1
    torch.testing.assert_close(out.drop_logits, expected.drop_logits, rtol=1e-5, atol=1e-6)
    assert out.drop_logits.shape == (2, 5, 6, 7)
    torch.testing.assert_close(out.logits, F.interpolate(expected.logits, size=(11, 14), mode="bilinear"))

    keep = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])
    out = wrapper(x, keep=keep)
    torch.testing.assert_close(out.drop_logits, reference(features, keep=keep).drop_logits, rtol=1e-5, atol=1e-6)
    (out.drop_logits.sum() + out.logits.sum()).backward()
    assert wrapper.dropclass.select[0].weight.grad is not None and toy.stem[0].weight.grad is not None

    wrapper.eval()
    reference.load_state_dict(wrapper.dropclass.state_dict())
    reference.eval()
    with torch.no_grad():
        pred = wrapper(x)
        expected_pred = F.interpolate(reference(toy.features(x)), size=(11, 14), mode="bilinear")
    assert isinstance(pred, torch.Tensor)
    torch.testing.assert_close(pred, expected_pred)
    torch.testing.assert_close(predict(wrapper, x), expected_pred)


def test_sample_index_reaches_the_dropclass_of_an_attached_and_a_built_in_model():
    toy = _Toy()
    toy.head.cls = nn.Conv2d(8, 19, 1)
    wrapper = attach_dropclass(toy, classifier="head.cls", per_sample=True, seed=5).train()
    built_in = build_model("hrnet_v1", num_classes=19, dropclass=True, per_sample=True, seed=5).train()
    index = torch.tensor([40, 7, 123])
    for model in (wrapper, built_in):
        expected = model.dropclass.sample_keep(1.0, 3, step=0, sample_index=index)
        assert not torch.equal(expected, model.dropclass.sample_keep(1.0, 3, step=0))  # the default indices 0, 1, 2
        out = model(torch.randn(3, 3, 32, 32), progress=1.0, sample_index=index)
        torch.testing.assert_close(out.keep, expected)


def test_attach_dropclass_to_a_baseline_hrnet_equals_the_built_in_dropclass_hrnet():
    built_in = _hrnet_v1(seed=1)
    baseline = _hrnet_v1(dropclass=False, seed=2)
    report = load_official_checkpoint(baseline, to_official_state_dict(built_in))
    assert sorted(report.unexpected) == sorted(k for k in to_official_state_dict(built_in) if "clsdrop" in k)
    wrapper = attach_dropclass(baseline, classifier="last_layer.3")
    assert baseline.dropclass is wrapper.dropclass and baseline.num_classes == 19
    # an official DropClass file now fills the attached DropClass: classifier and select layer
    report = load_official_checkpoint(baseline, to_official_state_dict(built_in))
    assert not (report.missing or report.unexpected or report.shape_mismatch), report
    assert to_official_state_dict(baseline).keys() == to_official_state_dict(built_in).keys()
    images = torch.randn(2, 3, 32, 32)
    keep = torch.ones(19).index_fill_(0, torch.tensor([4]), 0.0)
    expected, out = built_in.train()(images, keep=keep), wrapper.train()(images, keep=keep)
    for name in ("logits", "drop_logits", "keep"):
        torch.testing.assert_close(getattr(out, name), getattr(expected, name))
    with torch.no_grad():
        torch.testing.assert_close(wrapper.eval()(images), built_in.eval()(images))


def test_check_backbone_loaded_accepts_a_backbone_file_and_refuses_another_model():
    model = _hrnet_v1(dropclass=False)
    backbone = {k: v for k, v in _hrnet_v1(seed=1).state_dict().items()
                if not k.startswith("last_layer.") and not k.endswith("num_batches_tracked")}  # fmt: skip
    check_backbone_loaded(model, load_official_checkpoint(model, backbone), "backbone.pt")  # an ImageNet-like file
    report = load_official_checkpoint(model, build_model("hrnet_v2", num_classes=19, dropclass=False).state_dict())
    assert report.loaded  # the stems agree: some tensors load
    with pytest.raises(ValueError, match=r"v2.pt does not fit this HRNet: \d+ backbone tensors"):
        check_backbone_loaded(model, report, "v2.pt")
    deeplab = build_model("deeplabv3", num_classes=5, dropclass=False)
    head_only = {k: v for k, v in deeplab.state_dict().items() if k.startswith("backbone.")}
    check_backbone_loaded(deeplab, load_torchvision_checkpoint(deeplab, head_only), "mobilenet.pt")


@pytest.mark.parametrize("name", ["hrnet_v1", "deeplabv3"])
def test_reference_models_refuse_bad_options(name):
    with pytest.raises(ValueError, match="num_classes must be an int of at least 2, got 1"):
        build_model(name, num_classes=1, dropclass=True)
    with pytest.raises(ValueError, match="num_classes must be an int of at least 2, got 19.0"):
        build_model(name, num_classes=19.0, dropclass=True)
    with pytest.raises(ValueError, match=r"DropClass options \['seed'\] need dropclass=True"):
        build_model(name, num_classes=19, dropclass=False, seed=0)


def test_attach_dropclass_errors():
    with pytest.raises(ValueError, match="head.missing"):
        attach_dropclass(_Toy(), classifier="head.missing")
    with pytest.raises(TypeError, match="nn.Conv2d"):
        attach_dropclass(_Toy(), classifier="head.mix")
    toy = _Toy()
    wrapper = attach_dropclass(toy, classifier="head.cls").train()
    with pytest.raises(ValueError, match="already attached"):
        attach_dropclass(toy, classifier="head.cls")
    with pytest.raises(ValueError, match="'head.cls.dropclass.classifier' is inside the DropClass at 'head.cls'"):
        attach_dropclass(toy, classifier="head.cls.dropclass.classifier")
    with pytest.raises(ValueError, match="inside the DropClass at 'last_layer.3'"):
        attach_dropclass(_hrnet_v1(), classifier="last_layer.3.classifier")
    with pytest.raises(ValueError, match="progress is required"):
        wrapper(torch.randn(1, 3, 8, 8))
    with pytest.raises(RuntimeError, match="outside the wrapper"):
        toy(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="eval mode"):
        predict(wrapper, torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize(
    ("name", "size", "low_res"), [("hrnet_v1", (37, 53), (10, 14)), ("deeplabv3", (45, 61), (3, 4))]
)
def test_predict_upsamples_to_odd_input_sizes(name, size, low_res):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, dropclass=True).eval()
    images = torch.randn(1, 3, *size)
    with torch.no_grad():
        logits = model(images)
        expected = model.dropclass(model.features(images))
        pred = predict(model, images)
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, 7, *low_res)
    torch.testing.assert_close(logits, expected)
    assert pred.shape == (1, 7, *size)
    torch.testing.assert_close(pred, F.interpolate(logits, size=size, mode="bilinear", align_corners=False))


def test_build_model_names_and_options():
    assert MODEL_NAMES == ("hrnet_v1", "hrnet_v2", "deeplabv3")
    widths = {"hrnet_v1": 240, "hrnet_v2": 270, "deeplabv3": 256}
    for name in MODEL_NAMES:
        model = build_model(name, num_classes=4, dropclass=True, seed=5, per_sample=True)
        assert isinstance(model.dropclass, DropClass)
        assert (model.dropclass.seed, model.dropclass.per_sample) == (5, True)
        assert model.dropclass.classifier.in_channels == widths[name] and model.num_classes == 4
        baseline = build_model(name, num_classes=4, dropclass=False)
        assert baseline.dropclass is None
        assert not any(key.endswith("_extra_state") for key in baseline.state_dict())
    refusal = r"^name must be one of \('hrnet_v1', 'hrnet_v2', 'deeplabv3'\), got 'hrnet_v3'$"
    with pytest.raises(ValueError, match=refusal):
        build_model("hrnet_v3", num_classes=4, dropclass=True)
    with pytest.raises(ValueError, match="dropclass=True"):
        build_model("hrnet_v1", num_classes=4, dropclass=False, seed=1)


def test_forward_contract_in_training():
    images = torch.randn(2, 3, 32, 48)
    model = _hrnet_v1().train()
    with pytest.raises(ValueError, match="progress is required"):
        model(images)
    out = model(images, progress=0.5)
    assert isinstance(out, DropClassOutput) and out.logits.shape == out.drop_logits.shape == (2, 19, 8, 12)
    assert model.dropclass.step == 1
    baseline = _hrnet_v1(dropclass=False).train()
    logits = baseline(images, progress=0.5)
    assert isinstance(logits, torch.Tensor)
    torch.testing.assert_close(logits, baseline(images))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        baseline(torch.randn(2, 4, 32, 48))
