"""Install popt_jax: `pip install -e .[test]` (CPU) or `pip install -e .[gpu]` (CUDA 12)."""

from setuptools import find_packages, setup

REQUIRED = [
    "jax>=0.4.35",
    "flax>=0.10.0",
    "optax",
    "orbax-checkpoint",
    "grain",
    "h5py",
    "numpy",
    "scipy",
    "ml_collections",
    "clu",
    "safetensors",
    "absl-py",
    "matplotlib",
]

setup(
    name="popt_jax",
    version="0.1.0",
    description=(
        "JAX/Flax NNX ports of BrainBERT, the Population Transformer (PopT) and the "
        "transformer brain encoder, with converters for the published PyTorch weights."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["popt_jax", "popt_jax.*"]),
    # Upstream's trial and electrode selections (popt_jax/ieeg/selections/SOURCES.md).
    package_data={"popt_jax.ieeg": ["selections/*.json", "selections/*.md"]},
    python_requires=">=3.10",
    install_requires=REQUIRED,
    extras_require={
        # torch is only needed for the parity tests and the optional PyTorch export check.
        # open_clip_torch and torchvision: references of the CLIP / ResNet-50 parity tests.
        "test": ["pytest", "pytest-xdist", "torch", "omegaconf", "ruff", "neuroprobe",
                 "scikit-learn", "pandas", "mne", "mne-bids", "edfio", "pybv", "pynwb",
                 "open_clip_torch", "torchvision"],
        # Neuroprobe's own splits and labels (the package imports torch, pandas, sklearn).
        "neuroprobe": ["neuroprobe", "torch", "scikit-learn", "pandas"],
        # NVIDIA GPUs (jax 0.10 publishes both CUDA extras): driver >= 525 -> cuda12,
        # a CUDA 13 driver (>= 580) can also take jax[cuda13].
        "gpu": ["jax[cuda12]"],
        "gpu-cuda13": ["jax[cuda13]"],
        # Your own recordings: BIDS-iEEG through mne-bids (EDF via edfio, BrainVision via
        # pybv), NWB through pynwb.
        "bids": ["mne", "mne-bids", "edfio", "pybv"],
        "nwb": ["pynwb"],
    },
)
