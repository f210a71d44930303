"""coca_jax: CoCa (Contrastive Captioners) in JAX/Flax.

A plain install gives the model, weight conversion and decoding (no TensorFlow, no torch).
Extras:
  train  the input pipeline, training and evaluation (TensorFlow Datasets, Grain, clu)
  test   the test suite, including open_clip + torch as a parity reference (CPU)
  tpu    libtpu, to compile ahead of time for TPU topologies
"""
import setuptools

JAX_VERSION = "0.10.2"

setuptools.setup(
    name="coca_jax",
    version="0.1.0",
    description="CoCa (Contrastive Captioners) in JAX/Flax, exact against open_clip",
    packages=setuptools.find_packages(include=["coca_jax", "coca_jax.*"]),
    package_data={"coca_jax": ["**/*.txt", "**/*.json", "**/*.gz", "**/*.model"]},
    python_requires=">=3.10",
    install_requires=[
        f"jax=={JAX_VERSION}",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "chex==0.1.92",
        "ml-collections==1.1.0",
        "absl-py",
        "etils[epath]",
        "numpy",
        "safetensors",
        "sentencepiece",
        "ftfy",
        "regex",
    ],
    extras_require={
        "train": [
            "tensorflow-cpu==2.21.0",
            "tensorflow-datasets==4.9.10",
            "clu==0.0.12",
            "grain==0.2.18",
            # tfds imports importlib_resources without declaring it on Python >= 3.9;
            # its data sources decode images with pillow; clu's writers need tensorboard.
            "importlib_resources",
            "pillow",
            "tensorboard",
        ],
        "test": [
            "pytest",
            "pytest-xdist",  # the suite runs in 2 processes (.ci/run)
            "torch==2.14.1",
            "torchvision==0.29.1",
            "open_clip_torch",
            # open_clip's generate() needs BeamSearchScorer, gone from later releases.
            "transformers==4.55.4",
            # the reference our CIDEr / BLEU-4 are compared with
            "pycocoevalcap==1.2",
        ],
        "tpu": [f"jax[tpu]=={JAX_VERSION}"],
    },
)
