from setuptools import find_packages, setup

# Workdirs and datasets on Cloud Storage (gs://): fsspec's gcsfs for jaxlm's own files (through
# etils.epath, as Orbax reads and writes), google-cloud-storage for tensorboardX's event files.
GCS = ["gcsfs>=2024.2,<2027", "google-cloud-storage>=2.14,<4"]

setup(
    name="jaxlm",
    version="0.1.0",
    description="Train large language models from scratch in JAX: raw text to an evaluated model.",
    python_requires=">=3.10",
    packages=find_packages(include=["jaxlm", "jaxlm.*", "data_prep", "data_prep.*"]),
    package_data={"data_prep": ["configs/*.yaml"],
                  "jaxlm": ["eval/templates/*.yaml", "humaneval/templates/*.html", "humaneval/static/*"]},
    install_requires=[
        "jax>=0.7,<0.13",
        "flax>=0.11,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "etils[epath]>=1.5,<2",  # jaxlm.storage: the path layer (local and gs://) Orbax uses too
        "grain>=0.2.12,<0.3",
        "array-record>=0.7,<0.9",
        "sentencepiece>=0.2,<0.3",
        "tensorboardX>=2.6,<3",
        "absl-py>=2.1,<3",
        "pyyaml>=6,<7",
        "numpy>=1.26,<3",
        "tqdm>=4.66,<5",
        "tensorboard>=2.16,<3",  # the `tensorboard --logdir runs/` the README shows (the writer is tensorboardX)
        "scipy>=1.11,<2",
        "protobuf>=4,<8",
        "jinja2>=3.1,<4",  # chat templates (jaxlm/data/chat.py), rendered as transformers renders them
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
        "hf": ["transformers>=4.45,<6", "safetensors>=0.4,<1", "tokenizers>=0.19,<1", "torch==2.13.0",
               "datasets>=2.18,<6"],
        "wandb": ["wandb>=0.18,<1"],
        # libtpu, pinned by jax to its own version: runs on Cloud TPU, and compiles for TPU slices
        # anywhere (python -m jaxlm.plan compile)
        # (with the Cloud Storage packages: a slice's workdir is on Cloud Storage)
        "tpu": ["jax[tpu]>=0.7,<0.13", *GCS],
        "gcs": GCS,
        "plan": ["matplotlib>=3.8,<4"],
        "lmeval": ["lm-eval>=0.4.9,<0.5"],
        "safety": ["vaderSentiment>=3.3,<4"],  # BOLD's sentiment scorer
        # python -m jaxlm.humaneval: the rating web app
        "humaneval": ["starlette>=0.37,<2", "uvicorn>=0.29,<1", "python-multipart>=0.0.9,<1", "jinja2>=3.1,<4"],
        "dev": ["pytest>=8,<10", "nbclient>=0.10,<1", "nbformat>=5.9,<6", "ipykernel>=6,<8",
                "matplotlib>=3.8,<4", "resiliparse>=0.14,<3", "datasketch>=1.6,<3",
                "selenium>=4.20,<5",  # drives Debian's chromium in the humaneval browser test
                "gcp-storage-emulator>=2024.8,<2028"],  # the Cloud Storage API, locally, for the gs:// tests
    },
)
