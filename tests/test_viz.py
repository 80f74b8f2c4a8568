"""Figures: palettes, colourised label maps, difference boxes, PNG files of the expected size."""

from __future__ import annotations

import re
import struct
import warnings

import numpy as np
import pytest
import torch

from dropclass_fast.data import SyntheticStreets
from dropclass_fast.train.logger import CsvLog
from dropclass_fast.viz import (
    PALETTES,
    colorize,
    difference_boxes,
    plot_iou_bars,
    plot_predictions,
    plot_training_curves,
    plot_unbiased_comparison,
)


def _png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk of a PNG file, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_palettes_hold_the_official_colours():
    assert PALETTES["cityscapes"].shape == (19, 3)
    assert PALETTES["cityscapes"][0].tolist() == [128, 64, 128]  # road
    assert PALETTES["cityscapes"][18].tolist() == [119, 11, 32]  # bicycle
    assert PALETTES["voc"].shape == (21, 3)
    assert PALETTES["voc"][:3].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]  # background, aeroplane, bicycle
    assert PALETTES["voc"][15].tolist() == [192, 128, 128]  # person
    assert PALETTES["synthetic"].shape == (8, 3)


def test_colorize_maps_ids_to_colours_and_ignore_to_black():
    palette = np.array([(10, 20, 30), (40, 50, 60)], dtype=np.uint8)
    out = colorize(torch.tensor([[0, 1], [255, 1]]), palette)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out.tolist() == [[[10, 20, 30], [40, 50, 60]], [[0, 0, 0], [40, 50, 60]]]
    with pytest.raises(ValueError, match=r"label has values \[2\] outside \[0, 2\)"):
        colorize(np.array([[0, 2]]), palette)
    assert colorize(np.array([[1]]), [[10, 20, 30], [40, 50, 60]]).tolist() == [[[40, 50, 60]]]  # a list of ints


@pytest.mark.parametrize(
    ("palette", "message"),
    [
        (  # a float palette in [0, 1] was cast to black
            [[1.0, 0.5, 0.0], [0.2, 0.4, 0.6]],
            r"^palette must be \[K, 3\] integer RGB values, got dtype float64, shape \(2, 3\)$",
        ),
        ([[300, 0, 0], [0, 0, 0]], r"^palette values must be in \[0, 255\], got values from 0 to 300$"),  # was 44
        ([[-1, 0, 0], [0, 0, 0]], r"^palette values must be in \[0, 255\], got values from -1 to 0$"),  # was 255
        ([[10, 20], [30, 40]], r"^palette must be \[K, 3\] integer RGB values, got dtype int64, shape \(2, 2\)$"),
    ],
)
def test_colorize_refuses_a_palette_that_is_not_uint8_rgb(palette, message):
    with pytest.raises(ValueError, match=message):
        colorize(np.array([[0, 1]]), np.array(palette))


def test_difference_boxes_by_hand():
    first = np.zeros((16, 24), dtype=np.int64)
    second = first.copy()
    assert difference_boxes(first, second, cell=4) == []
    second[5:7, 9:11] = 1  # cells (1, 2) only
    second[14:16, 0:2] = 1  # cell (3, 0), the bottom-left corner
    assert difference_boxes(first, second, cell=4) == [(4, 8, 8, 12), (12, 0, 16, 4)]
    second[8:12, 12:16] = 1  # cell (2, 3): diagonal neighbour of (1, 2), joins its box
    assert difference_boxes(first, second, cell=4) == [(4, 8, 12, 16), (12, 0, 16, 4)]
    # a 1-pixel difference in a 16-pixel cell is below a 20% threshold, unless most of the cell is unlabelled
    sparse = first.copy()
    sparse[0, 0] = 1
    assert difference_boxes(first, sparse, cell=4) == []
    valid = np.ones_like(first, dtype=bool)
    valid[0:4, 0:4] = False
    valid[0, 0] = True
    assert difference_boxes(first, sparse, valid=valid, cell=4) == [(0, 0, 4, 4)]
    with pytest.raises(ValueError, match="must be \\[H, W\\] maps of one shape"):
        difference_boxes(first, second[:8])
    with pytest.raises(ValueError, match=r"valid must be an \[H, W\] mask of the maps' shape \(16, 24\), got \(4, 4\)"):
        difference_boxes(first, sparse, valid=valid[:4, :4])
    with pytest.raises(ValueError, match=r"min_fraction must be a number in \[0, 1\], got -1"):
        difference_boxes(first, sparse, min_fraction=-1)
    with pytest.raises(ValueError, match="cell must be a positive int, got 2.0"):
        difference_boxes(first, sparse, cell=2.0)


def test_figures_are_written_as_png(tmp_path):
    dataset = SyntheticStreets("val", length=2, size=(32, 64), seed=0)
    (image, label), (image2, label2) = dataset.load_raw(0), dataset.load_raw(1)
    pred_a = np.where(label == 255, 0, label).astype(np.int64)
    pred_b = pred_a.copy()
    pred_b[8:16, 8:24] = 4
    names = dataset.class_names
    path = plot_predictions([image, image2], [label, label2], {"Baseline": [pred_a, pred_a], "Ours": [pred_b, pred_a]},
                            dataset.palette, tmp_path / "pred.png", class_names=names)
    width, height = _png_size(path)
    assert width > 800 and 200 < height < width  # four columns, two rows, a legend
    path = plot_unbiased_comparison(image, image2, label, label2, {"Baseline": (pred_a, pred_b)}, dataset.palette,
                                    tmp_path / "b2.png", class_names=names)
    width, height = _png_size(path)
    assert width > 600 and height > 300
    bars = plot_iou_bars(names, {"a": torch.rand(8), "b": torch.rand(8)}, tmp_path / "bars.png")
    assert _png_size(bars)[0] > 700
    with pytest.raises(TypeError, match=r"ious\['b'\] must be a 1-D floating tensor \[K\], got shape \(8,\), dtype"):
        plot_iou_bars(names, {"a": torch.rand(8), "b": torch.ones(8, dtype=torch.int64)}, tmp_path / "int.png")
    with pytest.raises(ValueError, match=r"ious\['b'\] has 7 entries for 8 classes"):
        plot_iou_bars(names, {"a": torch.rand(8), "b": torch.rand(7)}, tmp_path / "short.png")
    assert not (tmp_path / "int.png").exists() and not (tmp_path / "short.png").exists()
    with pytest.raises(ValueError, match="one entry per image"):
        plot_predictions([image], [label], {"Baseline": [pred_a, pred_a]}, dataset.palette, tmp_path / "x.png")
    with pytest.raises(ValueError, match="class_names has 9 entries but the palette only 8 colours"):
        plot_predictions([image], [label], {"Baseline": [pred_a]}, dataset.palette, tmp_path / "x.png",
                         class_names=(*names, "extra"))


def test_plot_iou_bars_draws_an_iou_tensor_that_requires_grad(tmp_path):
    iou = torch.tensor([0.5, float("nan"), 0.25], requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = plot_iou_bars(["a", "b", "c"], {"model": iou}, tmp_path / "bars.png")
    assert _png_size(path)[0] > 500


def test_plot_training_curves_draws_the_engine_log(tmp_path):
    log = CsvLog(tmp_path / "run" / "log.csv")
    for iteration, loss in ((10, 2.5), (20, 1.75)):
        log.write({"iteration": iteration, "loss": loss})
    assert _png_size(plot_training_curves({"run": log.path}, tmp_path / "curves.png"))[0] > 500


NEEDS_LOSS_COLUMNS = r"needs the columns \['iteration', 'loss'\], its columns are "


@pytest.mark.parametrize(("text", "message"), [
    ("step,loss\n1,2.0\n", NEEDS_LOSS_COLUMNS + r"\['step', 'loss'\]"),
    ("iteration,total\n1,2.0\n", NEEDS_LOSS_COLUMNS + r"\['iteration', 'total'\]"),
    ("iteration,loss\n", "has no rows"),
    ("", "has no rows"),
], ids=["no_iteration", "no_loss", "header_only", "empty"])
def test_plot_training_curves_refuses_a_log_without_loss_rows(tmp_path, text, message):
    log = tmp_path / "log.csv"
    log.write_text(text)
    with pytest.raises(ValueError, match=rf"^training log {re.escape(str(log))} {message}"):
        plot_training_curves({"run": log}, tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()
