"""Saving and loading checkpoints: round trips, atomic writes, refusing bad files."""

from __future__ import annotations

import pytest
import torch

from vae_course import checkpoints
from vae_course.checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_weights_into,
    restore_optimizer,
    save_checkpoint,
)
from vae_course.models import build_vae
from vae_course.train import History


def small_model(latent_dim=4, seed=0, **kwargs):
    torch.manual_seed(seed)
    return build_vae(latent_dim=latent_dim, hidden_sizes=(16,), **kwargs)


def trained_optimizer(model):
    """An Adam optimizer with state (moments, step counts) after two steps."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.bernoulli(torch.full((8, 784), 0.3),
                        generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        loss = -model.decode(model.encode(x).rsample()).log_prob(x).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return optimizer


@pytest.fixture
def images():
    return torch.rand(6, 784, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def saved(tmp_path):
    model = small_model()
    path = save_checkpoint(tmp_path / "run" / "checkpoint.pt", model)
    return model, path


def leftovers(folder, keep):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# --- round trips --------------------------------------------------------------

def test_round_trip_gives_identical_outputs(tmp_path, images):
    model = small_model(likelihood="continuous_bernoulli")
    optimizer = trained_optimizer(model)
    history = History([{"epoch": 1, "seconds": 0.5, "train_loss": 123.25}])
    path = save_checkpoint(tmp_path / "checkpoint.pt", model, optimizer, history,
                           settings={"lr": 1e-2, "seed": 3})
    assert path == tmp_path / "checkpoint.pt"
    loaded, payload = load_checkpoint(path)
    assert loaded is not model
    assert loaded.config == model.config
    assert loaded.likelihood == "continuous_bernoulli"
    assert not loaded.training  # ready for evaluation
    for (name, a), (name_b, b) in zip(model.state_dict().items(),
                                      loaded.state_dict().items(), strict=True):
        assert name == name_b and torch.equal(a, b)
    with torch.no_grad():
        torch.testing.assert_close(loaded.reconstruct(images),
                                   model.reconstruct(images), rtol=0, atol=0)
        z = torch.randn(5, 4)
        assert torch.equal(loaded.decode(z).mean, model.decode(z).mean)
    assert isinstance(payload["history"], History)
    assert payload["history"].rows == history.rows
    assert payload["extra"] == {"settings": {"lr": 1e-2, "seed": 3}}

    fresh = restore_optimizer(torch.optim.Adam(loaded.parameters(), lr=1e-2), payload)
    saved_state, restored_state = optimizer.state_dict(), fresh.state_dict()
    assert saved_state["param_groups"] == restored_state["param_groups"]
    for key, state in saved_state["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value),
                               torch.as_tensor(restored_state["state"][key][name]))


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_discretized_logistic_models_round_trip(tmp_path, images, architecture):
    model = small_model(architecture=architecture, likelihood="discretized_logistic")
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "d.pt", model))
    assert loaded.likelihood == "discretized_logistic"
    assert loaded.config == model.config
    levels = (images * 255).round() / 255
    with torch.no_grad():
        z = torch.randn(3, 4)
        assert torch.equal(loaded.decode(z).log_prob(levels[:3]),
                           model.decode(z).log_prob(levels[:3]))
        assert torch.equal(loaded.reconstruct(images), model.reconstruct(images))


def test_conv_models_round_trip(tmp_path, images):
    model = small_model(architecture="conv")
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "c.pt", model))
    assert loaded.config["architecture"] == "conv"
    assert torch.equal(loaded.reconstruct(images), model.reconstruct(images))


def test_a_conv_model_keeps_its_channels_and_a_file_saved_without_them_means_32(
        tmp_path, images):
    narrow = small_model(architecture="conv", channels=4)
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "narrow.pt", narrow))
    assert loaded.config["channels"] == 4
    assert torch.equal(loaded.reconstruct(images), narrow.reconstruct(images))
    # A conv file from before the config recorded channels: the course's width.
    model = small_model(architecture="conv")
    path = save_checkpoint(tmp_path / "old.pt", model)
    payload = torch.load(path, weights_only=False)
    del payload["config"]["channels"]
    torch.save(payload, path)
    loaded, _ = load_checkpoint(path)
    assert loaded.config["channels"] == 32
    assert torch.equal(loaded.reconstruct(images), model.reconstruct(images))
    other = small_model(architecture="conv", seed=1)
    load_weights_into(other, path)
    assert torch.equal(other.reconstruct(images), model.reconstruct(images))
    with pytest.raises(CheckpointError, match="saved from"):
        load_weights_into(small_model(architecture="conv", channels=4), path)


def test_load_weights_into_a_model_of_the_same_config(saved, images):
    model, path = saved
    other = small_model(seed=1)
    assert not torch.equal(other.reconstruct(images), model.reconstruct(images))
    assert load_weights_into(other, path) is other
    assert torch.equal(other.reconstruct(images), model.reconstruct(images))


def test_restore_optimizer_needs_a_saved_state(saved):
    model, path = saved  # saved without an optimizer
    _, payload = load_checkpoint(path)
    with pytest.raises(CheckpointError, match="optimizer"):
        restore_optimizer(torch.optim.Adam(model.parameters()), payload)


# --- atomic writes ------------------------------------------------------------

def test_a_successful_save_leaves_no_temporary_file(saved):
    _, path = saved
    assert leftovers(path.parent, keep={"checkpoint.pt"}) == []
    save_checkpoint(path, small_model(seed=1))  # overwrite
    assert leftovers(path.parent, keep={"checkpoint.pt"}) == []


def test_a_failed_save_keeps_the_old_checkpoint(saved, monkeypatch, images):
    model, path = saved
    before = path.read_bytes()

    def failing_save(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")  # the write starts, then fails
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, small_model(seed=1))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert leftovers(path.parent, keep={"checkpoint.pt"}) == []
    loaded, _ = load_checkpoint(path)
    assert torch.equal(loaded.reconstruct(images), model.reconstruct(images))


def test_an_interrupted_save_cleans_up_too(saved, monkeypatch):
    _, path = saved
    before = path.read_bytes()

    def interrupted_save(obj, file, *args, **kwargs):
        file.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints.torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, small_model(seed=1))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert leftovers(path.parent, keep={"checkpoint.pt"}) == []


# --- files that must be refused -----------------------------------------------

def test_a_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(CheckpointError):
        load_weights_into(small_model(), tmp_path / "absent.pt")


def test_a_folder_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.5, 0.9, 0.999])
def test_a_truncated_file_is_a_checkpoint_error(saved, fraction):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    words = "not a vae-course" if fraction == 0 else "not a readable"
    with pytest.raises(CheckpointError, match=words):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [
    b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n",
    b"not a checkpoint\n",
    bytes(100),
    # torch's legacy loader raises KeyError / IndexError on these two
    b"hello world" * 10,
    b"epoch,loss\n1,2.0\n",
], ids=["html", "text", "zeros", "repeated-text", "csv"])
def test_a_file_of_other_bytes_is_a_checkpoint_error(tmp_path, content):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    # Said in these words, not torch's ("pop from empty list" for the CSV).
    message = f"{path} is not a vae-course checkpoint (not a file written by torch.save)"
    for load in (load_checkpoint, lambda path: load_weights_into(small_model(), path)):
        with pytest.raises(CheckpointError) as caught:
            load(path)
        assert str(caught.value) == message


class _Exploit:
    """Unpickling this would run open(marker, "w"): a stand-in for any code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickled_object_is_refused_and_never_run(tmp_path, saved):
    model, _ = saved
    marker = tmp_path / "exploit-ran"
    path = tmp_path / "evil.pt"
    payload = {"format": checkpoints.FORMAT, "config": dict(model.config),
               "state_dict": model.state_dict(), "optimizer": None, "history": [],
               "extra": {"gift": _Exploit(marker)}}
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        load_weights_into(small_model(), path)
    assert not marker.exists()
    # The file really is dangerous: an unsafe load runs the code.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_plain_tensor_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="not a vae-course checkpoint"):
        load_checkpoint(path)
    torch.save({"state_dict": small_model().state_dict()}, path)  # no format tag
    with pytest.raises(CheckpointError, match="not a vae-course checkpoint"):
        load_checkpoint(path)


def test_a_config_that_does_not_match_the_weights_is_refused(saved, tmp_path):
    model, path = saved
    payload = torch.load(path, weights_only=True)
    payload["config"]["latent_dim"] = 16  # the weights are for latent_dim 4
    wrong = tmp_path / "wrong.pt"
    torch.save(payload, wrong)
    with pytest.raises(CheckpointError, match="architecture"):
        load_checkpoint(wrong)


@pytest.mark.parametrize("config", [{"architecture": "transformer"},
                                    {"likelihood": "poisson"}, {"depth": 3}])
def test_an_unusable_config_is_refused(saved, tmp_path, config):
    _, path = saved
    payload = torch.load(path, weights_only=True)
    payload["config"].update(config)
    wrong = tmp_path / "wrong.pt"
    torch.save(payload, wrong)
    with pytest.raises(CheckpointError):
        load_checkpoint(wrong)


@pytest.mark.parametrize("kwargs", [{"latent_dim": 8}, {"architecture": "conv"},
                                    {"likelihood": "continuous_bernoulli"}])
def test_load_weights_into_a_different_model_is_refused(saved, kwargs):
    _, path = saved
    other = small_model(**kwargs)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError, match="saved from"):
        load_weights_into(other, path)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


# --- what is saved can be loaded; what is malformed is refused ----------------

def test_numpy_scalars_and_paths_are_saved_as_plain_values(tmp_path):
    import numpy as np

    history = History([{"epoch": 1, "seconds": np.float64(0.5),
                        "train_loss": np.float32(120.5)}])
    path = save_checkpoint(tmp_path / "checkpoint.pt", small_model(), history=history,
                           settings={"output": tmp_path / "run", "seed": np.int64(3),
                                     "sizes": (np.int32(16), 8)})
    _, payload = load_checkpoint(path)
    row = payload["history"].rows[0]
    assert row == {"epoch": 1, "seconds": 0.5, "train_loss": 120.5}
    assert type(row["seconds"]) is float and type(row["train_loss"]) is float
    settings = payload["extra"]["settings"]
    assert settings == {"output": str(tmp_path / "run"), "seed": 3, "sizes": (16, 8)}
    assert type(settings["seed"]) is int


@pytest.mark.parametrize("extra", [{"note": {1, 2}}, {"note": object()},
                                   {"note": {("a", "b"): 1}}],
                         ids=["set", "object", "tuple-key"])
def test_values_a_checkpoint_cannot_hold_are_refused_when_saving(tmp_path, extra):
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(TypeError, match=r"extra\['note'\]"):
        save_checkpoint(path, small_model(), **extra)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("rows", [
    [{"epoch": 1, "loss": "high"}],
    [{"epoch": 2, "loss": 1.0}],
    [["epoch", 1]],
    [{"loss": 1.0}],
], ids=["text-value", "wrong-epoch", "not-a-dict", "no-epoch"])
def test_a_malformed_history_is_refused_when_saving(tmp_path, rows):
    with pytest.raises((TypeError, ValueError), match="history"):
        save_checkpoint(tmp_path / "checkpoint.pt", small_model(),
                        history=History(rows))
    assert list(tmp_path.iterdir()) == []


def rewrite(path, tmp_path, change):
    payload = torch.load(path, weights_only=True)
    change(payload)
    changed = tmp_path / "changed.pt"
    torch.save(payload, changed)
    return changed


@pytest.mark.parametrize("field", ["config", "state_dict", "optimizer", "history",
                                   "extra"])
def test_a_checkpoint_missing_a_field_is_refused(saved, tmp_path, field):
    _, path = saved
    changed = rewrite(path, tmp_path, lambda payload: payload.pop(field))
    with pytest.raises(CheckpointError, match=field):
        load_checkpoint(changed)


@pytest.mark.parametrize("history", [5, "abc", [1, 2], [{"epoch": "one"}],
                                     {"epoch": 1}, [{"epoch": 1}, {"epoch": 1}]])
def test_a_malformed_history_is_refused_when_loading(saved, tmp_path, history):
    _, path = saved
    changed = rewrite(path, tmp_path, lambda payload: payload.update(history=history))
    with pytest.raises(CheckpointError, match="history"):
        load_checkpoint(changed)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(saved, tmp_path, value):
    model, path = saved

    def poison(payload):
        payload["state_dict"]["decoder.0.bias"][3] = value

    changed = rewrite(path, tmp_path, poison)
    with pytest.raises(CheckpointError, match=r"decoder\.0\.bias.*(NaN|infinite)"):
        load_checkpoint(changed)
    with pytest.raises(CheckpointError, match=r"decoder\.0\.bias"):
        load_weights_into(small_model(), changed)


def test_a_huge_config_is_refused_before_anything_is_built(saved, tmp_path,
                                                           monkeypatch):
    # The config is compared with the weights' shapes first: a config asking for a
    # layer of a billion units (3 TB of weights) must not reach the allocator.
    _, path = saved
    changed = rewrite(path, tmp_path,
                      lambda payload: payload["config"].update(hidden_sizes=[10**9]))
    built = []
    real_build = checkpoints.build_vae

    def recording_build(*args, **kwargs):
        built.append(torch.empty(0).device.type)  # where factories put tensors now
        return real_build(*args, **kwargs)

    monkeypatch.setattr(checkpoints, "build_vae", recording_build)
    with pytest.raises(CheckpointError, match=r"encoder\.0\.weight.*\(16, 784\)"):
        load_checkpoint(changed)
    assert set(built) <= {"meta"}


def test_a_state_dict_with_other_values_is_refused(saved, tmp_path):
    _, path = saved
    changed = rewrite(path, tmp_path, lambda payload: payload["state_dict"].update(
        {"decoder.0.bias": 3}))
    with pytest.raises(CheckpointError, match=r"decoder\.0\.bias"):
        load_checkpoint(changed)


def test_an_optimizer_state_for_another_model_is_a_checkpoint_error(tmp_path):
    model = small_model()
    path = save_checkpoint(tmp_path / "checkpoint.pt", model, trained_optimizer(model))
    _, payload = load_checkpoint(path)
    other = small_model(latent_dim=8)
    with pytest.raises(CheckpointError, match="optimizer"):
        restore_optimizer(torch.optim.Adam(other.decoder.parameters()), payload)
