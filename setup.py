from setuptools import find_packages, setup

setup(
    name="jaxlm",
    version="0.1.0",
    description="Train large language models from scratch in JAX: raw text to an evaluated model.",
    python_requires=">=3.10",
    packages=find_packages(include=["jaxlm", "jaxlm.*", "data_prep", "data_prep.*"]),
    package_data={"data_prep": ["configs/*.yaml"], "jaxlm": ["eval/templates/*.yaml"]},
    install_requires=[
        "jax>=0.7,<0.13",
        "flax>=0.11,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "grain>=0.2.12,<0.3",
        "array-record>=0.7,<0.9",
        "sentencepiece>=0.2,<0.3",
        "tensorboardX>=2.6,<3",
        "absl-py>=2.1,<3",
        "pyyaml>=6,<7",
        "numpy>=1.26,<3",
        "tqdm>=4.66,<5",
        "scipy>=1.11,<2",
        "protobuf>=4,<8",
        # data_prep: cleaning, language id, parquet sources
        "trafilatura>=2.0,<3",
        "lxml_html_clean>=0.4,<1",  # trafilatura needs it; older pips miss lxml's [html-clean] extra
        "ftfy>=6.2,<7",
        "emoji>=2.12,<3",
        "py3langid>=0.3,<1",
        "pyarrow>=15,<30",
        "warcio>=1.7,<2",
        "zstandard>=0.22,<1",
    ],
    extras_require={
        "ray": ["ray>=2.40,<3"],
        "hf": ["transformers>=4.45,<6", "safetensors>=0.4,<1", "torch==2.13.0", "datasets>=2.18,<6"],
        "wandb": ["wandb>=0.18,<1"],
        # libtpu, pinned by jax to its own version: runs on Cloud TPU, and compiles for TPU slices
        # anywhere (python -m jaxlm.plan compile)
        "tpu": ["jax[tpu]>=0.7,<0.13"],
        "plan": ["matplotlib>=3.8,<4"],
        "lmeval": ["lm-eval>=0.4.9,<0.5"],
        "dev": ["pytest>=8,<10", "tensorboard>=2.16,<3", "nbclient>=0.10,<1", "nbformat>=5.9,<6", "ipykernel>=6,<8",
                "matplotlib>=3.8,<4", "resiliparse>=0.14,<3", "datasketch>=1.6,<3"],
    },
)
