"""seg2: semantic, instance and panoptic segmentation on Detectron2."""
from setuptools import find_packages, setup

setup(
    name="seg2",
    version="0.1.0",
    description=(
        "Detectron2 extension: FCN/U-Net/DeconvNet semantic heads, Mask R-CNN panoptic, "
        "evaluation"
    ),
    packages=find_packages(include=["seg2", "seg2.*"]),
    python_requires=">=3.10",
    # Pinned requirements live in requirements.txt (Detectron2 is not on PyPI under its name).
    install_requires=[],
)
