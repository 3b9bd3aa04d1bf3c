"""Shared fixtures of the unit tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's top folder."""
    return REPO


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """A torchvision root holding the real MNIST files, from ``$VAE_COURSE_DATA``.

    Tests that need the real data skip, with the reason, when it is not there
    (CI sets the variable; so can you: ``VAE_COURSE_DATA=/path/to/root make test``).
    """
    value = os.environ.get("VAE_COURSE_DATA", "").strip()
    if not value:
        pytest.skip("real MNIST needed: set VAE_COURSE_DATA to a torchvision root "
                    "holding MNIST/raw/")
    root = Path(value).expanduser().resolve()
    raw = root / "MNIST" / "raw"
    missing = [name for name in MNIST_FILES if not (raw / name).is_file()]
    if missing:
        pytest.skip(f"real MNIST needed: VAE_COURSE_DATA={value} lacks "
                    f"{', '.join(missing)} in MNIST/raw/")
    return root


@pytest.fixture
def graph_compiler(monkeypatch):
    """torch.compile through dynamo and AOTAutograd, without Inductor's C++ build.

    The graphs fit builds run as the ATen operators they trace to, so the test
    takes seconds; the records say what fit asked torch.compile for.
    """
    import torch

    real_compile, requests = torch.compile, []

    def compile_graphs(function, **options):
        requests.append({"function": function.__name__, **options})
        return real_compile(function, backend="aot_eager",
                            dynamic=options["dynamic"])

    monkeypatch.setattr(torch, "compile", compile_graphs)
    return requests
