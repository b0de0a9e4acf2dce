"""Where medclassify's paper CNN and paper recipe come from, and how to cite medclassify itself
(the same as CITATION.cff, which a test keeps in step)."""

from __future__ import annotations

PAPER_TITLE = "基于卷积神经网络的医学图像分类研究——以 MedMNIST 数据集为例"
PAPER_TITLE_EN = "CNN-based medical image classification: the case of the MedMNIST datasets"
PAPER = f"“{PAPER_TITLE}” ({PAPER_TITLE_EN})"
SOFTWARE_TITLE = "medclassify: training, evaluating, explaining and deploying CNNs for medical image classification"
SOFTWARE_AUTHOR = "The medclassify developers"


def software_citation(version: str) -> str:
    """medclassify as a reference list cites it."""
    return f"{SOFTWARE_AUTHOR}. {SOFTWARE_TITLE}, version {version}. Software, MIT licence."
