"""Datasets and joint transforms of ``dropclass_fast.data`` on tiny trees written by the tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dropclass_fast.data import (
    DATASET_NAMES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    VOC,
    Cityscapes,
    EvalTransform,
    SceneConfig,
    SyntheticStreets,
    TrainTransform,
    build_dataset,
)
from dropclass_fast.data.synthetic import BICYCLE, PERSON, RIDER
from dropclass_fast.data.voc import voc_palette

IGNORE = 255


def denormalize(image: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """float32 ``[3, H, W]`` -> float ``[H, W, 3]`` in 0..255."""
    mean_t, std_t = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    return ((image * std_t + mean_t) * 255).permute(1, 2, 0).numpy()


# ------------------------------------------------------------------ Cityscapes tree


def write_cityscapes(root: Path, split: str = "train", cities=("bremen", "aachen"), per_city: int = 2, size=(6, 10)):
    """Writes a Cityscapes-layout tree; returns ``[(image, label_ids)]`` in the expected item order."""
    rng = np.random.default_rng(1)
    items = {}
    for city in cities:
        for k in range(per_city):
            name = f"{city}_{k:06d}_000019"
            image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            ids = rng.integers(0, 34, size, dtype=np.uint8)
            image_dir, label_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
            image_dir.mkdir(parents=True, exist_ok=True)
            label_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(image_dir / f"{name}_leftImg8bit.png")
            Image.fromarray(ids, mode="L").save(label_dir / f"{name}_gtFine_labelIds.png")
            items[(city, name)] = (image, ids)
    return [items[key] for key in sorted(items)]


def label_path(root: Path, split: str, city: str, k: int) -> Path:
    return root / "gtFine" / split / city / f"{city}_{k:06d}_000019_gtFine_labelIds.png"


def test_cityscapes_items_and_train_ids(tmp_path):
    expected = write_cityscapes(tmp_path)
    ds = Cityscapes(tmp_path, "train")
    assert len(ds) == 4 and ds.num_classes == 19 and len(ds.class_names) == 19
    assert ds.class_names[0] == "road" and ds.class_names[13] == "car" and ds.class_names[18] == "bicycle"
    assert ds.palette.shape == (19, 3) and ds.palette.dtype == np.uint8
    # by hand from the official table (cityscapesScripts labels.py)
    official = {0: 255, 1: 255, 6: 255, 7: 0, 8: 1, 9: 255, 11: 2, 17: 5, 23: 10, 24: 11, 25: 12, 26: 13, 29: 255}
    official |= {30: 255, 31: 16, 32: 17, 33: 18}
    for index, (image, ids) in enumerate(expected):  # sorted by city: aachen first
        raw_image, train_ids = ds.load_raw(index)
        assert raw_image.dtype == np.uint8 and raw_image.shape == (6, 10, 3)
        np.testing.assert_array_equal(raw_image, image)
        assert train_ids.dtype == np.uint8 and train_ids.shape == (6, 10)
        for label_id, train_id in official.items():
            assert np.all(train_ids[ids == label_id] == train_id), label_id
        tensor_image, tensor_label = ds[index]
        assert tensor_image.dtype == torch.float32 and tensor_image.shape == (3, 6, 10)
        assert tensor_label.dtype == torch.int64 and tensor_label.shape == (6, 10)
        np.testing.assert_allclose(denormalize(tensor_image), image, atol=1e-3)
        np.testing.assert_array_equal(tensor_label.numpy(), train_ids)
    all_ids = np.arange(34, dtype=np.uint8).reshape(2, 17)
    Image.fromarray(all_ids, mode="L").save(label_path(tmp_path, "train", "aachen", 0))
    Image.fromarray(np.zeros((2, 17, 3), np.uint8)).save(
        tmp_path / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    )
    mapped = ds.load_raw(0)[1].ravel()
    assert sorted(set(mapped.tolist())) == list(range(19)) + [255]
    assert [int(mapped[i]) for i in (7, 26, 33, 0, 9)] == [0, 13, 18, 255, 255]


def test_cityscapes_label_id_outside_table(tmp_path):
    write_cityscapes(tmp_path)
    bad = np.full((6, 10), 7, np.uint8)
    bad[0, 0], bad[1, 1] = 34, 200
    path = label_path(tmp_path, "train", "aachen", 1)
    Image.fromarray(bad, mode="L").save(path)
    ds = Cityscapes(tmp_path, "train")
    with pytest.raises(ValueError, match=rf"label file {path} contains ids \[34, 200\].*valid ids: 0..33"):
        ds.load_raw(1)


def test_cityscapes_layout_errors(tmp_path):
    missing = tmp_path / "nowhere"
    layout = (
        rf"expected {missing}/leftImg8bit/train/<city>/\*_leftImg8bit.png and "
        rf"{missing}/gtFine/train/<city>/\*_gtFine_labelIds.png"
    )
    with pytest.raises(FileNotFoundError, match=rf"Cityscapes root {missing} is not a directory; {layout}"):
        Cityscapes(missing, "train")
    write_cityscapes(tmp_path)
    (tmp_path / "leftImg8bit" / "val").mkdir()
    with pytest.raises(FileNotFoundError, match=rf"directory {tmp_path}/gtFine/val not found; expected"):
        Cityscapes(tmp_path, "val")
    (tmp_path / "gtFine" / "val").mkdir()
    with pytest.raises(FileNotFoundError, match=rf"no Cityscapes images found under {tmp_path}/leftImg8bit/val"):
        Cityscapes(tmp_path, "val")
    path = label_path(tmp_path, "train", "bremen", 1)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=rf"bremen_000001_000019_leftImg8bit.png has no label file {path}"):
        Cityscapes(tmp_path, "train")
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'val', 'test'\) for cityscapes, got 'tran'"):
        Cityscapes(tmp_path, "tran")


def test_cityscapes_unreadable_and_malformed_files(tmp_path):
    write_cityscapes(tmp_path)
    ds = Cityscapes(tmp_path, "train")
    image_path, label_file = ds.items[0]
    image_path.write_bytes(b"not a png at all")
    with pytest.raises(OSError, match=rf"cannot read image file {image_path}"):
        ds.load_raw(0)
    image_path, label_file = ds.items[1]
    Image.fromarray(np.zeros((6, 10, 3), np.uint8)).save(label_file)  # an RGB label map
    with pytest.raises(ValueError, match=rf"label file {label_file} has Pillow mode 'RGB'; expected a single-channel"):
        ds.load_raw(1)
    image_path, label_file = ds.items[2]
    Image.fromarray(np.zeros((5, 10), np.uint8), mode="L").save(label_file)
    with pytest.raises(ValueError, match=rf"image {image_path} is 6x10 but its label {label_file} is 5x10"):
        ds.load_raw(2)
    with pytest.raises(IndexError, match="index 4 out of range for Cityscapes of length 4"):
        ds[4]


# ------------------------------------------------------------------------- VOC tree


def write_voc(root: Path, lists: dict[str, list[str]], size=(7, 9), aug_ids=()):
    """Writes a VOC2012-layout tree: JPEGs, palette PNGs with 255 borders, list files, optional SBD labels.

    Returns ``{id: stored label indices}`` (palette labels and, under ``"aug/<id>"``, SBD labels).
    """
    rng = np.random.default_rng(2)
    labels = {}
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationClassAug"):
        (root / folder).mkdir()
    palette = voc_palette().ravel().tolist()
    all_ids = sorted({i for ids in lists.values() for i in ids} | set(aug_ids))
    for image_id in all_ids:
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
        label = rng.integers(0, 21, size, dtype=np.uint8)
        label[0, :] = IGNORE  # object borders / difficult regions
        stored = Image.fromarray(label, mode="P")
        stored.putpalette(palette)
        stored.save(root / "SegmentationClass" / f"{image_id}.png")
        labels[image_id] = label
        aug = rng.integers(0, 21, size, dtype=np.uint8)
        Image.fromarray(aug, mode="L").save(root / "SegmentationClassAug" / f"{image_id}.png")
        labels[f"aug/{image_id}"] = aug
    for name, ids in lists.items():
        (root / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return labels


def test_voc_palette_indices_and_no_background(tmp_path):
    labels = write_voc(tmp_path, {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"]})
    ds = VOC(tmp_path, "train")
    assert len(ds) == 2 and ds.num_classes == 21 and ds.class_names[0] == "background"
    assert ds.class_names[15] == "person" and ds.class_names[20] == "tvmonitor"
    # the VOC colour map, by hand: background black, aeroplane dark red, person (15) pinkish
    assert ds.palette[0].tolist() == [0, 0, 0] and ds.palette[1].tolist() == [128, 0, 0]
    assert ds.palette[15].tolist() == [192, 128, 128] and ds.palette.shape == (21, 3)
    image, label = ds.load_raw(1)
    assert image.shape == (7, 9, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(label, labels["2007_000039"])  # indices, not colours; 255 borders kept

    nobg = VOC(tmp_path, "val", no_background=True)
    assert nobg.num_classes == 20 and nobg.class_names[0] == "aeroplane" and nobg.palette[0].tolist() == [128, 0, 0]
    stored, mapped = labels["2007_000033"], nobg.load_raw(0)[1]
    expected = np.where((stored == 0) | (stored == IGNORE), IGNORE, stored.astype(int) - 1)
    np.testing.assert_array_equal(mapped, expected)
    assert np.all(mapped[stored == 15] == 14) and np.all(mapped[stored == 0] == IGNORE)
    np.testing.assert_array_equal(nobg[0][1].numpy(), expected)


def test_voc_sbd_lists(tmp_path):
    aug_lines = ["/JPEGImages/2008_000001.jpg /SegmentationClassAug/2008_000001.png", "2007_000032", ""]
    labels = write_voc(tmp_path, {"train": ["2007_000032"], "val": ["2007_000033"]}, aug_ids=["2008_000001"])
    (tmp_path / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("\n".join(aug_lines))
    ds = VOC(tmp_path, "train", sbd=True)
    assert [p.name for p, _ in ds.items] == ["2008_000001.jpg", "2007_000032.jpg"]
    assert all(q.parent.name == "SegmentationClassAug" for _, q in ds.items)
    np.testing.assert_array_equal(ds.load_raw(1)[1], labels["aug/2007_000032"])
    val = VOC(tmp_path, "val", sbd=True)  # evaluation keeps the official labels
    np.testing.assert_array_equal(val.load_raw(0)[1], labels["2007_000033"])
    (tmp_path / "ImageSets" / "Segmentation" / "train_aug.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"train_aug.txt not found; expected .*SegmentationClassAug/<id>.png"):
        VOC(tmp_path, "train", sbd=True)


def test_voc_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"VOC root .* is not a directory; expected .*JPEGImages/<id>.jpg"):
        VOC(tmp_path / "VOC2012", "train")
    labels = write_voc(tmp_path, {"train": ["a", "b"]})
    list_path = tmp_path / "ImageSets" / "Segmentation" / "val.txt"
    with pytest.raises(FileNotFoundError, match=rf"VOC list file {list_path} not found; expected {list_path}"):
        VOC(tmp_path, "val")
    list_path.write_text("\n")
    with pytest.raises(ValueError, match=rf"VOC list file {list_path} lists no image ids"):
        VOC(tmp_path, "val")
    list_path.write_text("a\nmissing\n")
    with pytest.raises(FileNotFoundError, match=rf"VOC file {tmp_path}/JPEGImages/missing.jpg \(listed in {list_path}"):
        VOC(tmp_path, "val")
    bad = labels["b"].copy()
    bad[2, 2], bad[3, 3] = 21, 254
    path = tmp_path / "SegmentationClass" / "b.png"
    Image.fromarray(bad, mode="L").save(path)
    with pytest.raises(ValueError, match=rf"label file {path} contains ids \[21, 254\].*valid ids: 0..20, 255"):
        VOC(tmp_path, "train").load_raw(1)
    with pytest.raises(TypeError, match="no_background must be a bool, got 'yes'"):
        VOC(tmp_path, "train", no_background="yes")
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'val', 'trainval'\) for voc, got 'test'"):
        VOC(tmp_path, "test")


# ------------------------------------------------------------------- build_dataset


def test_build_dataset(tmp_path):
    assert DATASET_NAMES == ("cityscapes", "voc", "synthetic")
    write_cityscapes(tmp_path / "cs")
    write_voc(tmp_path / "voc", {"train": ["x"]})
    assert isinstance(build_dataset("cityscapes", "train", root=str(tmp_path / "cs")), Cityscapes)
    voc = build_dataset("voc", "train", tmp_path / "voc", no_background=True, seed=3)
    assert isinstance(voc, VOC) and voc.num_classes == 20 and voc.seed == 3
    transform = EvalTransform()
    synthetic = build_dataset("synthetic", "val", transform=transform, length=3, size=(32, 48), p_bicycle=0.5)
    assert isinstance(synthetic, SyntheticStreets) and len(synthetic) == 3 and synthetic.transform is transform
    assert synthetic.config.p_bicycle == 0.5 and synthetic.load_raw(0)[0].shape == (32, 48, 3)
    with pytest.raises(ValueError, match=r"name must be one of \('cityscapes', 'voc', 'synthetic'\), got 'kitti'"):
        build_dataset("kitti", "train")
    with pytest.raises(ValueError, match="dataset 'voc' needs root=<dataset directory>, got None"):
        build_dataset("voc", "train")
    with pytest.raises(ValueError, match="root must be None, got '/data'"):
        build_dataset("synthetic", "train", root="/data")
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'val'\) for synthetic, got 'test'"):
        build_dataset("synthetic", "test")


# ---------------------------------------------------------------------- transforms

# well-separated colours, all far from the mean colour used for padding
COLOURS = np.array([(230, 20, 20), (20, 230, 20), (20, 20, 230), (230, 230, 20), (20, 230, 230), (230, 20, 230)])


def colour_coded_pair(height=48, width=72, block=12, seed=0):
    """A label of random 12x12 blocks of classes 0..5 and an image whose colour encodes the label."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, len(COLOURS), (height // block, width // block))
    label = np.kron(blocks, np.ones((block, block), dtype=np.int64)).astype(np.uint8)
    return COLOURS[label].astype(np.uint8), label


def decode(image: torch.Tensor) -> np.ndarray:
    pixels = denormalize(image)
    return np.linalg.norm(pixels[:, :, None, :] - COLOURS[None, None], axis=-1).argmin(-1)


def interior(label: np.ndarray, radius: int = 2) -> np.ndarray:
    """Pixels whose (2 radius + 1)^2 neighbourhood has one label (bilinear blending cannot reach them)."""
    padded = np.pad(label.astype(int), radius, constant_values=-1)
    same = np.ones(label.shape, dtype=bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            same &= padded[dy : dy + label.shape[0], dx : dx + label.shape[1]] == label
    return same


def test_train_transform_keeps_image_and_label_aligned():
    image, label = colour_coded_pair()
    transform = TrainTransform((48, 64), scale_range=(0.5, 2.0))
    padded_crops = checked = 0
    for seed in range(24):
        out_image, out_label = transform(image, label, np.random.default_rng(seed))
        assert out_image.shape == (3, 48, 64) and out_image.dtype == torch.float32
        assert out_label.shape == (48, 64) and out_label.dtype == torch.int64
        out = out_label.numpy()
        valid = out != IGNORE
        # the scaled image sits at the top left; the rest is padding: ignore label, mean colour (0)
        rows, cols = valid.any(1), valid.any(0)
        np.testing.assert_array_equal(valid, rows[:, None] & cols[None, :])
        np.testing.assert_array_equal(rows, np.arange(48) < rows.sum())
        np.testing.assert_array_equal(cols, np.arange(64) < cols.sum())
        assert torch.all(out_image[:, ~torch.from_numpy(valid)] == 0)
        padded_crops += not valid.all()
        check = interior(out) & valid
        np.testing.assert_array_equal(decode(out_image)[check], out[check])
        checked += check.sum()
        assert check.sum() > 0.1 * valid.sum()
    assert 0 < padded_crops < 24 and checked > 10_000


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_train_transform_label_is_nearest_neighbour_of_source(scale):
    """Each label value names its source pixel: check the pixel-centre nearest-neighbour map and the flip."""
    height, width = 12, 20  # 240 distinct ids below 255; exact sizes at both scales
    label = np.arange(height * width, dtype=np.uint8).reshape(height, width)
    image = np.zeros((height, width, 3), np.uint8)
    crop = (6, 7)
    transform = TrainTransform(crop, scale_range=(scale, scale))
    # pixel p of the scaled image, p = offset + output index, samples source pixel floor((p + 0.5) / scale)
    expected_y = [np.floor((t + np.arange(crop[0]) + 0.5) / scale) for t in range(int(height * scale) - crop[0] + 1)]
    expected_x = [np.floor((s + np.arange(crop[1]) + 0.5) / scale) for s in range(int(width * scale) - crop[1] + 1)]
    flips = set()
    for seed in range(16):
        ids = transform(image, label, np.random.default_rng(seed))[1].numpy()
        ys, xs = ids // width, ids % width
        flipped = bool(xs[0, 0] > xs[0, -1])
        flips.add(flipped)
        xs = xs[:, ::-1] if flipped else xs
        assert any(np.array_equal(ys, np.broadcast_to(e[:, None], ys.shape)) for e in expected_y)
        assert any(np.array_equal(xs, np.broadcast_to(e[None, :], xs.shape)) for e in expected_x)
    assert flips == {False, True}


def test_train_transform_without_flip_or_scale_is_a_crop():
    image, label = colour_coded_pair(seed=3)
    transform = TrainTransform((16, 24), scale_range=(1.0, 1.0), flip=False)
    out_image, out_label = transform(image, label, np.random.default_rng(5))
    matches = [
        (t, s)
        for t in range(48 - 16 + 1)
        for s in range(72 - 24 + 1)
        if np.allclose(denormalize(out_image), image[t : t + 16, s : s + 24], atol=1e-3)
    ]
    assert len(matches) >= 1
    t, s = matches[0]
    np.testing.assert_array_equal(out_label.numpy(), label[t : t + 16, s : s + 24])


def test_eval_transform_normalises():
    image, label = colour_coded_pair()
    mean, std = (0.5, 0.25, 0.1), (0.2, 0.3, 0.4)
    out_image, out_label = EvalTransform(mean, std)(image, label, None)
    expected = (image / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(out_image.permute(1, 2, 0).numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out_label.numpy(), label)


def test_transform_argument_errors():
    image, label = colour_coded_pair()
    with pytest.raises(ValueError, match=r"crop_size must be two positive ints \(height, width\), got \(0, 4\)"):
        TrainTransform((0, 4))
    with pytest.raises(ValueError, match=r"scale_range must be \(low, high\) with 0 < low <= high, got \(2.0, 0.5\)"):
        TrainTransform((4, 4), scale_range=(2.0, 0.5))
    with pytest.raises(ValueError, match=r"scale_range must be .* got \(True, True\)"):
        TrainTransform((4, 4), scale_range=(True, True))
    with pytest.raises(TypeError, match="flip must be a bool, got 'no'"):  # bool('no') is True
        TrainTransform((4, 4), flip="no")
    with pytest.raises(ValueError, match=r"std must be three numbers in \(0, 1\] \(R, G, B;.*got \(1, 0, 1\)"):
        TrainTransform((4, 4), std=(1, 0, 1))
    with pytest.raises(ValueError, match=r"mean must be three numbers in \[0, 1\] .*divide 0-255 constants by 255"):
        TrainTransform((4, 4), mean=(123.675, 116.28, 103.53))
    with pytest.raises(ValueError, match=r"ignore_index must be an int in \[0, 255\] \(labels are uint8\), got -1"):
        TrainTransform((4, 4), ignore_index=-1)
    with pytest.raises(ValueError, match=r"ignore_index must be an int .*got True"):
        TrainTransform((4, 4), ignore_index=True)
    transform = TrainTransform((4, 4))
    with pytest.raises(TypeError, match="image must be a uint8 numpy array \\[H, W, 3\\], got dtype float32"):
        transform(image.astype(np.float32), label, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"label must be \[H, W\] = \(48, 72\) like the image, got shape \(48, 71\)"):
        transform(image, label[:, :-1], np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator, got int"):
        transform(image, label, 0)


# -------------------------------------------------------- determinism and workers


def small_synthetic(**kwargs) -> SyntheticStreets:
    transform = TrainTransform((40, 72), mean=SyntheticStreets.mean, std=SyntheticStreets.std)
    return SyntheticStreets("train", length=kwargs.pop("length", 8), size=(48, 96), transform=transform, **kwargs)


def test_items_depend_only_on_seed_epoch_and_index():
    ds = small_synthetic()
    first = ds[3]
    ds[5]
    again = small_synthetic()[3]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    ds.set_epoch(1)
    other_epoch = ds[3]
    assert not torch.equal(first[1], other_epoch[1])
    ds.set_epoch(0)
    assert torch.equal(ds[3][0], first[0])
    assert not torch.equal(small_synthetic(seed=1)[3][1], first[1])
    with pytest.raises(ValueError, match="epoch must be a non-negative int, got -1"):
        ds.set_epoch(-1)
    restored = pickle.loads(pickle.dumps(ds))
    assert all(torch.equal(a, b) for a, b in zip(restored[3], first))


def epoch_batches(loader, dataset, epochs):
    out = []
    for epoch in epochs:
        dataset.set_epoch(epoch)
        out.append([batch for batch in loader])
    return out


def test_multi_worker_loading_matches_single_process():
    ds = small_synthetic()
    single = epoch_batches(torch.utils.data.DataLoader(ds, batch_size=4), ds, (0, 1))
    workers = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True)
    multi = epoch_batches(workers, ds, (0, 1))
    for single_epoch, multi_epoch in zip(single, multi):
        assert len(single_epoch) == len(multi_epoch) == 2
        for (x0, y0), (x1, y1) in zip(single_epoch, multi_epoch):
            assert x0.shape == (4, 3, 40, 72) and y0.dtype == torch.int64
            assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert not torch.equal(single[0][0][1], single[1][0][1])  # epochs differ, workers saw set_epoch


# -------------------------------------------------------------------- synthetic


def test_synthetic_scenes_are_deterministic_per_item():
    ds = SyntheticStreets("train", length=10, size=(32, 64), seed=4)
    image, label = ds.load_raw(7)
    assert image.shape == (32, 64, 3) and image.dtype == np.uint8 and label.dtype == np.uint8
    assert set(np.unique(label).tolist()) <= set(range(8)) | {IGNORE}
    other = SyntheticStreets("train", length=10, size=(32, 64), seed=4)
    other.load_raw(2)
    np.testing.assert_array_equal(other.load_raw(7)[0], image)
    np.testing.assert_array_equal(other.load_raw(-3)[1], label)
    assert not np.array_equal(SyntheticStreets("val", length=10, size=(32, 64), seed=4).load_raw(7)[0], image)
    assert not np.array_equal(SyntheticStreets("train", length=10, size=(32, 64), seed=5).load_raw(7)[0], image)
    assert ds.num_classes == 8 and ds.class_names[RIDER] == "rider" and ds.palette.shape == (8, 3)


def test_synthetic_scene_is_the_same_at_any_resolution():
    small = SyntheticStreets("train", length=10, size=(32, 64))
    large = SyntheticStreets("train", length=10, size=(64, 128))
    for i in range(10):
        coarse, fine = small.load_raw(i)[1], large.load_raw(i)[1][::2, ::2]
        labelled = (coarse != IGNORE) & (fine != IGNORE)
        assert (coarse == fine)[labelled].mean() > 0.9


def test_synthetic_bias_statistics():
    """The promises of the module docstring, on 300 scenes: bicycles rare, riders only (and mostly) on them."""
    ds = SyntheticStreets("train", length=300, size=(32, 64))
    labels = np.stack([ds.load_raw(i)[1] for i in range(len(ds))])
    present = np.stack([(labels == c).any((1, 2)) for c in range(ds.num_classes)], axis=1)
    bicycle, rider = present[:, BICYCLE], present[:, RIDER]
    config = SceneConfig()
    assert abs(bicycle.mean() - config.p_bicycle) < 0.08
    assert abs(rider[bicycle].mean() - config.p_rider_on_bicycle) < 0.08
    assert rider.sum() > 50 and not np.any(rider & ~bicycle)
    assert abs(present[:, PERSON].mean() - config.p_person) < 0.1
    pixels = np.bincount(labels[labels != IGNORE], minlength=ds.num_classes) / (labels != IGNORE).sum()
    assert set(np.argsort(pixels)[:2].tolist()) == {BICYCLE, RIDER} and pixels[BICYCLE] < 0.01

    no_bias = SyntheticStreets("train", length=60, size=(32, 64), p_rider_on_bicycle=0.0)
    assert not any((no_bias.load_raw(i)[1] == RIDER).any() for i in range(60))


def test_synthetic_erased_bicycles_leave_the_rest_of_the_scene():
    plain = SyntheticStreets("val", length=40, size=(32, 64))
    erased = SyntheticStreets("val", length=40, size=(32, 64), erase_bicycles=True)
    riders = 0
    for i in range(40):
        (image, label), (image_star, label_star) = plain.load_raw(i), erased.load_raw(i)
        assert not (label_star == BICYCLE).any()
        np.testing.assert_array_equal(label_star == RIDER, label == RIDER)
        kept = (label != BICYCLE) & (label != IGNORE)  # a bicycle may reach into the ignored hood strip
        np.testing.assert_array_equal(image_star[kept], image[kept])
        riders += (label == RIDER).any()
    assert riders > 5


def test_synthetic_argument_errors():
    with pytest.raises(ValueError, match="length must be a positive int, got 0"):
        SyntheticStreets("train", length=0)
    with pytest.raises(ValueError, match="height must be an int of at least 16, got 8"):
        SyntheticStreets("train", size=(8, 64))
    with pytest.raises(ValueError, match=r"size must be two positive ints \(height, width\), got \(32, 64, 3\)"):
        SyntheticStreets("train", size=(32, 64, 3))
    with pytest.raises(ValueError, match=r"p_bicycle must be a probability in \[0, 1\], got 1.5"):
        SyntheticStreets("train", p_bicycle=1.5)
    with pytest.raises(TypeError, match=r"unknown scene options \['p_bike'\]"):
        SyntheticStreets("train", p_bike=0.1)
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*32\), got -2"):
        SyntheticStreets("train", seed=-2)
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*32\), got 4294967296"):
        SyntheticStreets("train", seed=2**32)
    with pytest.raises(TypeError, match="transform must be callable"):
        SyntheticStreets("train", transform="train")
