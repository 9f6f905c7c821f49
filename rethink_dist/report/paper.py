"""The paper's reference numbers, transcribed once from Zhang et al. (ICLR 2017), Tables 1-2 and Figure 1.

Accuracies here are percentages, as printed in the paper. Nothing else in the report holds a
number from the paper: the tables and figures look their reference values up here.
"""

from __future__ import annotations

from dataclasses import dataclass

# Display names of the architectures, keyed by (model.name, reg.batch_norm).
ARCH_LABELS: dict[tuple[str, bool], str] = {
    ("inception_small", True): "Inception",
    ("inception_small", False): "Inception w/o BN",
    ("alexnet_small", True): "AlexNet",
    ("mlp_3x512", True): "MLP 3x512",
    ("mlp_1x512", True): "MLP 1x512",
    ("inception_v3", True): "Inception V3",
}
# The paper's row order in Table 1; architectures not listed come after, by name.
ARCH_ORDER = ["Inception", "Inception w/o BN", "AlexNet", "MLP 3x512", "MLP 1x512", "Inception V3"]

# The architectures of Figures 1b and 1c.
FIG1_ARCHS = ["Inception", "AlexNet", "MLP 1x512"]


def arch_label(model: str, batch_norm: bool = True) -> str:
    """'Inception w/o BN' for ('inception_small', False); the registry name when the paper has none."""
    if (model, bool(batch_norm)) in ARCH_LABELS:
        return ARCH_LABELS[(model, bool(batch_norm))]
    return model if batch_norm else f"{model} w/o BN"


@dataclass(frozen=True)
class Table1Row:
    arch: str  # display name (ARCH_LABELS)
    random_crop: bool
    weight_decay: bool
    random_labels: bool
    train: float  # %
    test: float  # %


# Table 1: CIFAR-10, train / test accuracy (%). Random-label rows use no regularizer.
TABLE1: tuple[Table1Row, ...] = (
    Table1Row("Inception", True, True, False, 100.0, 89.05),
    Table1Row("Inception", True, False, False, 100.0, 89.31),
    Table1Row("Inception", False, True, False, 100.0, 86.03),
    Table1Row("Inception", False, False, False, 100.0, 85.75),
    Table1Row("Inception", False, False, True, 100.0, 9.78),
    Table1Row("Inception w/o BN", False, True, False, 100.0, 83.00),
    Table1Row("Inception w/o BN", False, False, False, 100.0, 82.00),
    Table1Row("Inception w/o BN", False, False, True, 100.0, 10.12),
    Table1Row("AlexNet", True, True, False, 99.90, 81.22),
    Table1Row("AlexNet", True, False, False, 99.82, 79.66),
    Table1Row("AlexNet", False, True, False, 100.0, 77.36),
    Table1Row("AlexNet", False, False, False, 100.0, 76.07),
    Table1Row("AlexNet", False, False, True, 99.82, 9.86),
    Table1Row("MLP 3x512", False, True, False, 100.0, 53.35),
    Table1Row("MLP 3x512", False, False, False, 100.0, 52.39),
    Table1Row("MLP 3x512", False, False, True, 100.0, 10.48),
    Table1Row("MLP 1x512", False, True, False, 99.80, 50.39),
    Table1Row("MLP 1x512", False, False, False, 100.0, 50.51),
    Table1Row("MLP 1x512", False, False, True, 99.34, 10.61),
)
TABLE1_DATASET = "cifar10"


@dataclass(frozen=True)
class Table2Row:
    augment: bool
    dropout: bool
    weight_decay: bool
    random_labels: bool
    train_top1: float | None  # %
    test_top1: float | None  # %
    best_test_top1: float | None  # % (the best value seen during training, where the paper gives it)
    test_top5: float | None  # %
    note: str = ""


# Table 2: ImageNet, Inception V3. 72.95, 59.80, 80.38 and 95.20 are the paper's own; the others come
# from one secondary source, not the paper (TABLE2_NOTE says so in the report). Random labels: test
# accuracy is at chance.
TABLE2: tuple[Table2Row, ...] = (
    Table2Row(True, True, True, False, 92.18, 77.84, None, 93.92),
    Table2Row(True, False, False, False, 92.33, 72.95, None, 90.43),
    Table2Row(False, False, True, False, 90.60, 67.18, 72.57, 86.44),
    Table2Row(False, False, False, False, 99.53, 59.80, 63.16, 80.38),
    Table2Row(False, False, False, True, 95.20, None, None, None, "test at chance (0.1% top-1, 0.5% top-5)"),
)
TABLE2_DATASET = "imagenet"
TABLE2_NOTE = ("Paper values: the paper's own for 72.95, 59.80, 80.38 and 95.20; the rest from one secondary "
               "source, not the paper itself. With random labels and the regularizers on the paper reports about 90% "
               "top-1 train accuracy.")

PAPER_CITATION = ('Zhang, Bengio, Hardt, Recht, Vinyals. "Understanding deep learning requires rethinking '
                  'generalization". ICLR 2017 (arXiv 1611.03530).')
