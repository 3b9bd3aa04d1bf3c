"""The smoke switch, and the setup call every lesson starts with."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

import vae_course
from vae_course import runtime


@pytest.fixture
def environment(monkeypatch):
    """Start from neither variable set; return a setter for the test."""
    monkeypatch.delenv("VAE_COURSE_SMOKE", raising=False)
    monkeypatch.delenv("CI", raising=False)

    def set_variables(**values):
        for name, value in values.items():
            monkeypatch.setenv(name, value)
    return set_variables


@pytest.fixture
def restore_global_state(monkeypatch):
    """setup() changes process-wide settings; put them back afterwards."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    numpy_options = np.get_printoptions()
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark
    torch.set_printoptions(profile="default")
    np.set_printoptions(**numpy_options)


@pytest.mark.parametrize(("variables", "smoke"), [
    ({}, False),
    ({"CI": "true"}, True),
    ({"CI": "1"}, True),
    ({"CI": "false"}, False),
    ({"CI": ""}, False),
    ({"VAE_COURSE_SMOKE": "1"}, True),
    ({"VAE_COURSE_SMOKE": "yes"}, True),
    ({"VAE_COURSE_SMOKE": "0"}, False),
    ({"VAE_COURSE_SMOKE": "0", "CI": "true"}, False),  # explicit beats CI
    ({"VAE_COURSE_SMOKE": "false", "CI": "true"}, False),
    ({"VAE_COURSE_SMOKE": "1", "CI": "false"}, True),
    ({"VAE_COURSE_SMOKE": "", "CI": "true"}, True),  # empty counts as unset
    ({"VAE_COURSE_SMOKE": " TRUE "}, True),
])
def test_budget_follows_the_smoke_switch(environment, variables, smoke):
    environment(**variables)
    assert runtime.smoke_test() is smoke
    assert runtime.budget(full=16, smoke=1) == (1 if smoke else 16)
    assert vae_course.budget("full", "smoke") == ("smoke" if smoke else "full")


def test_budget_reads_the_environment_at_call_time(environment):
    assert runtime.budget(100, 3) == 100
    environment(VAE_COURSE_SMOKE="1")
    assert runtime.budget(100, 3) == 3


def test_setup_seeds_every_generator(restore_global_state, capsys):
    draws = []
    for _ in range(2):
        runtime.setup(seed=3, verbose=False)
        draws.append((torch.rand(4), np.random.rand(2), random.random()))
    runtime.setup(seed=4, verbose=False)
    other = torch.rand(4)
    assert torch.equal(draws[0][0], draws[1][0])
    assert np.array_equal(draws[0][1], draws[1][1])
    assert draws[0][2] == draws[1][2]
    assert not torch.equal(draws[0][0], other)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(4), draws[0][0])  # setup(3) is manual_seed(3)
    assert capsys.readouterr().out == ""  # verbose=False prints nothing


def test_setup_turns_on_deterministic_algorithms(restore_global_state):
    torch.use_deterministic_algorithms(False)
    runtime.setup(seed=0, verbose=False)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.benchmark is False
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")


def test_setup_returns_the_device(restore_global_state, monkeypatch):
    device = runtime.setup(seed=0, verbose=False)
    assert isinstance(device, torch.device)
    assert device == runtime.default_device()
    assert runtime.setup(seed=0, device="cpu", verbose=False) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.setup(seed=0, verbose=False) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.default_device() == torch.device("cuda")


@pytest.mark.parametrize(("variables", "mode"), [({}, "full"), ({"CI": "true"},
                                                              "smoke")])
def test_setup_says_what_it_chose(restore_global_state, environment, capsys,
                                  variables, mode):
    environment(**variables)
    runtime.setup(seed=7, device="cpu")
    line = capsys.readouterr().out.strip()
    assert f"torch {torch.__version__}" in line
    assert "device cpu" in line and "seed 7" in line
    assert mode in line
