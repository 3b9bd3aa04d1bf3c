"""The smoke switch, and the setup call every lesson starts with."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time

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


# --- threads --------------------------------------------------------------------

@pytest.mark.parametrize(("cores", "load", "threads"), [
    (2, 0.0, 2),  # a quiet machine: every core
    (2, 0.3, 2),
    (2, 0.8, 1),
    (2, 2.0, 1),
    (2, 12.5, 1),  # far more work than cores: still one thread
    (16, 3.2, 13),
    (16, 0.0, 16),
    (1, 0.0, 1),
])
def test_threads_follow_the_idle_cores(cores, load, threads):
    assert runtime.choose_num_threads(cores, load) == threads


def test_a_requested_thread_count_wins_over_the_load():
    assert runtime.choose_num_threads(2, 10.0, requested=4) == 4
    assert runtime.choose_num_threads(16, 0.0, requested=1) == 1


@pytest.mark.parametrize(("arguments", "name"), [
    ((0, 0.0), "cores"), ((2.5, 0.0), "cores"), ((2, -1.0), "load"),
    ((2, float("nan")), "load"), ((2, 0.0, 0), "threads"), ((2, 0.0, True), "threads"),
])
def test_bad_thread_arguments_are_refused(arguments, name):
    with pytest.raises(ValueError, match=name):
        runtime.choose_num_threads(*arguments)


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_set_threads_reads_cores_load_and_the_environment(monkeypatch, restore_threads):
    monkeypatch.delenv(runtime.THREADS_ENV_VAR, raising=False)
    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)
    monkeypatch.setattr(runtime, "machine_load", lambda: 5.0)
    assert runtime.set_threads() == 1
    assert torch.get_num_threads() == 1
    monkeypatch.setattr(runtime, "machine_load", lambda: 0.0)
    assert runtime.set_threads() == 2
    assert torch.get_num_threads() == 2
    monkeypatch.setenv(runtime.THREADS_ENV_VAR, "1")
    assert runtime.set_threads() == 1
    assert runtime.set_threads(3) == 3  # an argument beats the environment
    assert torch.get_num_threads() == 3
    for text in ("zero", "0", "-2"):
        monkeypatch.setenv(runtime.THREADS_ENV_VAR, text)
        with pytest.raises(ValueError, match=runtime.THREADS_ENV_VAR):
            runtime.set_threads()


def test_setup_sets_and_reports_the_threads(restore_global_state, restore_threads,
                                            capsys):
    runtime.setup(seed=0, device="cpu", threads=1)
    assert torch.get_num_threads() == 1
    assert "| 1 thread |" in capsys.readouterr().out


def test_usable_cores_and_load_are_sane():
    assert 1 <= runtime.usable_cores() <= (os.cpu_count() or 1)
    assert runtime.machine_load() >= 0


def test_the_command_line_takes_a_thread_count(monkeypatch, restore_threads, capsys):
    from vae_course import cli

    parser = cli.build_parser()
    for command in (["train"], ["evaluate", "checkpoint.pt"]):
        assert parser.parse_args([*command, "--threads", "1"]).threads == 1
        assert parser.parse_args(command).threads is None
    with pytest.raises(SystemExit) as stopped:
        parser.parse_args(["train", "--threads", "0"])
    assert stopped.value.code == 2
    assert "--threads" in capsys.readouterr().err
    # The flag reaches torch before any work starts (a missing checkpoint stops it),
    # on a machine where the automatic choice would be two threads.
    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)
    monkeypatch.setattr(runtime, "machine_load", lambda: 0.0)
    monkeypatch.delenv(runtime.THREADS_ENV_VAR, raising=False)
    status = cli.main(["evaluate", "missing.pt", "--threads", "1", "--no-progress"])
    assert status != 0 and torch.get_num_threads() == 1
    monkeypatch.setenv(runtime.THREADS_ENV_VAR, "many")
    with pytest.raises(SystemExit) as stopped:
        cli.main(["evaluate", "missing.pt"])
    assert stopped.value.code == 2
    assert runtime.THREADS_ENV_VAR in capsys.readouterr().err


def test_busy_cores_reads_the_ticks_that_were_not_idle(monkeypatch):
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 2)
    # user nice system idle iowait irq softirq: 300 of 400 ticks busy on 2 cores
    before = [100, 0, 50, 1000, 0, 0, 0]
    after = [350, 0, 100, 1090, 10, 0, 0]
    assert runtime.busy_cores(before, after) == pytest.approx(1.5)
    assert runtime.busy_cores(before, before) == 0.0
    with pytest.raises(ValueError, match="readings"):
        runtime.busy_cores([1, 2], [3, 4])


def test_machine_load_sees_a_core_kept_busy_now():
    if not os.path.exists("/proc/stat"):
        pytest.skip("needs /proc/stat")
    spin = "import time\nend = time.time() + 3\nwhile time.time() < end:\n    pass"
    spinner = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.5)  # let it start spinning
        busy = runtime.machine_load(window=1.0)
    finally:
        spinner.wait()
    assert busy >= 0.5  # the spinner alone keeps one core busy


# --- work on several threads ----------------------------------------------------

def test_map_in_threads_keeps_the_order_and_runs_the_items_side_by_side(
        restore_threads):
    torch.set_num_threads(2)
    both_started = threading.Barrier(2, timeout=10)  # broken if run one by one
    seen = []

    def square(item):
        if item < 2:
            both_started.wait()
        seen.append((torch.get_num_threads(), torch.is_grad_enabled()))
        return item * item

    with torch.no_grad():  # grad mode is per thread: the caller's must carry over
        results = list(runtime.map_in_threads(square, range(6), threads=2))
    assert results == [0, 1, 4, 9, 16, 25]
    assert seen == [(1, False)] * 6  # one intra-op thread each, no gradients
    assert torch.get_num_threads() == 2  # given back


def test_map_in_threads_passes_errors_on_and_restores_the_threads(restore_threads):
    torch.set_num_threads(2)

    def fail_on_three(item):
        if item == 3:
            raise ValueError("item 3 is bad")
        return item

    with pytest.raises(ValueError, match="item 3"):
        list(runtime.map_in_threads(fail_on_three, range(8), threads=2))
    assert torch.get_num_threads() == 2
    # One thread, or one item: computed here, with the threads as they are.
    assert list(runtime.map_in_threads(lambda item: torch.get_num_threads(),
                                       range(3), threads=1)) == [2, 2, 2]
