"""The paper's analysis tools: class frequency, bias vulnerability (Table B-1), the reconstruction probe
(section A), tables in the paper's layouts (Tables B-1 and C-2), BatchNorm re-estimation for short runs and
the synthetic debiasing experiment.

>>> from dropclass_fast.analysis import bias_vulnerability, bias_table, EvalOptions
>>> report = bias_vulnerability({"baseline": base, "DropClass": ours}, val_set, reference="baseline")
>>> print(bias_table([report]).to_markdown())

Command line: ``python -m dropclass_fast.analysis {frequency,bias,probe,synthetic} --help``.
"""

from ..train.batchnorm import recalibrate_batchnorm
from ._evaluation import DEFAULT_EVAL, EvalOptions
from .bias import BiasReport, bias_vulnerability, class_influence, top_influential, unbiased_iou
from .erase import ErasedDataset, erase_classes, fill_colour
from .frequency import FREQUENCY_MODES, class_frequency
from .probe import DropPathClassifier, ProbeResult, reconstruction_probe
from .tables import Table, bias_table, frequency_table, probe_table

__all__ = [
    "DEFAULT_EVAL",
    "FREQUENCY_MODES",
    "BiasReport",
    "DropPathClassifier",
    "ErasedDataset",
    "EvalOptions",
    "ProbeResult",
    "Table",
    "bias_table",
    "bias_vulnerability",
    "class_frequency",
    "class_influence",
    "erase_classes",
    "fill_colour",
    "frequency_table",
    "probe_table",
    "recalibrate_batchnorm",
    "reconstruction_probe",
    "top_influential",
    "unbiased_iou",
]
