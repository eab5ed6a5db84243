"""Distribution `actsearch`: automatic activation-function discovery for Keras."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "tensorflow>=2.21,<2.22",
    "keras>=3.10,<4",
    "keras-tuner>=1.4.7,<1.5",
    "tensorboard>=2.20",
    "tensorflow-datasets>=4.9,<5",
    "importlib_resources",  # tensorflow-datasets imports it on download but does not declare it
    "apache-beam>=2.60,<3",
    "absl-py>=2",
    "kfp>=2.16,<2.17",
    "scipy>=1.11",
    "matplotlib>=3.8",
    "scikit-learn>=1.4",
    "numpy",
    "pillow",
]

setup(
    name="actsearch",
    version="0.1.0",
    description="Evolve, train and compare activation functions for Keras models.",
    python_requires=">=3.10",
    packages=find_packages(include=["activations*", "trainer*", "components*", "pipeline*"]),
    install_requires=INSTALL_REQUIRES,
    # jax: the layer is tested on a second Keras backend (tests/test_backends.py).
    extras_require={"test": ["pytest>=8", "pytest-timeout", "hypothesis>=6", "jax[cpu]>=0.6,<0.11"]},
    entry_points={"console_scripts": ["actsearch=pipeline.cli:run_main"]},
)
