"""vae_course.data: where the files are found, what comes back, and clear failures."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from vae_course import data

UNREACHABLE_MIRROR = "http://127.0.0.1:9/"  # the discard port: refused at once


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each test starts from an empty in-memory cache (loads stay cheap: test split)."""
    data._load_cached.cache_clear()
    data._load_split.cache_clear()
    yield
    data._load_cached.cache_clear()
    data._load_split.cache_clear()


@pytest.fixture
def no_network(monkeypatch):
    """Point every torchvision mirror at a closed local port: downloads fail fast."""
    for name in data.DATASETS.values():
        monkeypatch.setattr(getattr(torchvision.datasets, name), "mirrors",
                            [UNREACHABLE_MIRROR])


def linked_root(tmp_path: Path, real_root: Path) -> Path:
    """A fresh torchvision root whose MNIST/ is a link to the real one."""
    root = tmp_path / "linked-root"
    root.mkdir()
    (root / "MNIST").symlink_to(real_root / "MNIST", target_is_directory=True)
    return root


def copied_root(tmp_path: Path, real_root: Path) -> Path:
    """A root with a private copy of the test split and links to the train files."""
    raw = tmp_path / "copied-root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in data.FILE_NAMES:
        source = real_root / "MNIST" / "raw" / name
        if name.startswith("t10k"):
            shutil.copyfile(source, raw / name)
        else:
            (raw / name).symlink_to(source)
    return raw.parents[1]


# --- finding the data ------------------------------------------------------------

def check_test_split(images: torch.Tensor, labels: torch.Tensor) -> None:
    assert images.shape == (10_000, 784)
    assert images.dtype == torch.float32
    assert labels.shape == (10_000,)
    assert labels.dtype == torch.int64


def test_root_from_argument(real_data_root, monkeypatch, tmp_path):
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "elsewhere"))
    images, labels = data.load_mnist("test", root=real_data_root)
    check_test_split(images, labels)


def test_root_from_environment(real_data_root, monkeypatch, tmp_path):
    root = linked_root(tmp_path, real_data_root)
    monkeypatch.setenv(data.ENV_VAR, str(root))
    monkeypatch.setattr(data, "DEFAULT_ROOT", tmp_path / "not-here")
    assert data.data_root() == root.resolve()
    check_test_split(*data.load_mnist("test"))


def test_root_defaults_to_data_in_the_working_directory(real_data_root, monkeypatch,
                                                        tmp_path):
    linked_root(tmp_path, real_data_root).rename(tmp_path / "data")
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    assert data.data_root() == tmp_path.resolve() / "data"
    check_test_split(*data.load_mnist("test"))


def test_empty_environment_variable_means_unset(monkeypatch, tmp_path):
    monkeypatch.setenv(data.ENV_VAR, "  ")
    monkeypatch.chdir(tmp_path)
    assert data.data_root() == tmp_path.resolve() / "data"


def test_the_default_root_is_never_the_packages_folder(monkeypatch, tmp_path,
                                                       repo_root):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    assert not data.data_root().is_relative_to(repo_root)


def test_importing_the_module_does_not_import_torchvision():
    # torchvision's import takes seconds; data.py pays it only to download.
    code = "import sys, vae_course.data; print('torchvision' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, check=True, timeout=120)
    assert result.stdout.strip() == "False"


# --- what comes back -----------------------------------------------------------

@pytest.mark.parametrize("split, count", [
    ("train", 50_000), ("validation", 10_000), ("train+validation", 60_000),
    ("test", 10_000)])
def test_shapes_types_and_ranges(real_data_root, split, count):
    images, labels = data.load_mnist(split, root=real_data_root)
    assert images.shape == (count, 784) and images.dtype == torch.float32
    assert labels.shape == (count,) and labels.dtype == torch.int64
    assert float(images.min()) == 0.0 and float(images.max()) == 1.0
    assert set(labels.unique().tolist()) == set(range(10))
    # Grey levels are k / 255: MNIST is not binary until binarize() makes it so.
    scaled = images[:1000] * 255
    assert torch.allclose(scaled, scaled.round(), atol=1e-3)
    assert 0.05 < float((images[:1000] > 0).float().mean()) < 0.5


def test_second_call_returns_the_cached_tensors(real_data_root):
    first = data.load_mnist("test", root=real_data_root)
    second = data.load_mnist("test", "mnist", str(real_data_root) + os.sep)
    assert second[0] is first[0] and second[1] is first[1]
    assert data._load_split.cache_info().hits == 1


def test_validation_is_a_seeded_disjoint_part_of_the_training_file(real_data_root):
    every, every_labels = data.load_mnist("train+validation", root=real_data_root)
    train, train_labels = data.load_mnist("train", root=real_data_root)
    validation, validation_labels = data.load_mnist("validation", root=real_data_root)
    held_out = data.validation_indices()
    assert held_out.shape == (data.VALIDATION_SIZE,)
    assert torch.equal(held_out, data.validation_indices())  # seeded: the same again
    assert torch.equal(validation, every[held_out])
    assert torch.equal(validation_labels, every_labels[held_out])
    kept = torch.ones(len(every), dtype=torch.bool)
    kept[held_out] = False
    assert torch.equal(train, every[kept])
    assert torch.equal(train_labels, every_labels[kept])
    # Drawn at random, not the file's last rows: every class is there in proportion.
    assert held_out.min() < 1000 and held_out.max() > 59_000
    shares = torch.bincount(validation_labels, minlength=10) / len(validation_labels)
    overall = torch.bincount(every_labels, minlength=10) / len(every_labels)
    assert torch.allclose(shares, overall, atol=0.01)
    # A smaller validation set lies inside the larger one (Burda et al. held out 400).
    assert set(data.validation_indices(400).tolist()) <= set(held_out.tolist())
    other = data.validation_indices(seed=1)
    assert not torch.equal(other, held_out)


@pytest.mark.parametrize("kwargs, word", [
    ({"split": "valid"}, "'train', 'validation', 'train\\+validation', 'test'"),
    ({"dataset": "cifar10"}, "'mnist', 'fashion-mnist'"),
])
def test_unknown_names_list_the_choices(kwargs, word):
    with pytest.raises(ValueError, match=word):
        data.load_mnist(**kwargs)


# --- clear failures ----------------------------------------------------------

@pytest.mark.parametrize("make_root", [
    pytest.param(lambda tmp: tmp / "does-not-exist", id="missing-root"),
    pytest.param(lambda tmp: tmp, id="empty-root"),
])
def test_missing_data_without_network_says_what_to_do(no_network, tmp_path, capsys,
                                                      make_root):
    root = make_root(tmp_path)
    with pytest.raises(data.DataNotFoundError) as caught:
        data.load_mnist("test", root=root)
    error = caught.value
    message = str(error)
    assert isinstance(error, RuntimeError)
    assert str(root.resolve()) in message
    assert str(root.resolve() / "MNIST" / "raw") in message
    for name in data.FILE_NAMES:
        assert name in message
    assert "VAE_COURSE_DATA" in message
    assert "internet" in message
    # One message, not a chain of urllib tracebacks.
    assert error.__cause__ is None
    assert error.__suppress_context__ is True
    # torchvision's own download chatter stays quiet.
    assert "Downloading http" not in capsys.readouterr().err


def test_missing_fashion_names_its_own_folder(no_network, tmp_path):
    with pytest.raises(data.DataNotFoundError, match="FashionMNIST"):
        data.load_mnist("test", "fashion-mnist", root=tmp_path)


def test_message_names_the_environment_variable_as_origin(no_network, monkeypatch,
                                                          tmp_path):
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path))
    with pytest.raises(data.DataNotFoundError, match=r"\$VAE_COURSE_DATA"):
        data.load_mnist("test")


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(size)


def overwrite_first_label(path: Path, value: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(8)  # after the idx header: magic number and count
        handle.write(bytes([value]))


@pytest.mark.parametrize("name, damage", [
    ("t10k-images-idx3-ubyte", lambda path: truncate(path, 2)),
    ("t10k-images-idx3-ubyte", lambda path: truncate(path, 16 + 784 * 5000)),
    ("t10k-labels-idx1-ubyte", lambda path: truncate(path, 8 + 5000)),
    ("t10k-labels-idx1-ubyte", lambda path: overwrite_first_label(path, 12)),
], ids=["images-header", "images-half", "labels-half", "label-out-of-range"])
def test_damaged_file_is_named(real_data_root, no_network, tmp_path, name, damage):
    root = copied_root(tmp_path, real_data_root)
    damage(root / "MNIST" / "raw" / name)
    with pytest.raises(data.DataCorruptError) as caught:
        data.load_mnist("test", root=root)
    message = str(caught.value)
    assert str(root.resolve() / "MNIST" / "raw" / name) in message
    assert "Delete it and rerun" in message
    assert caught.value.__suppress_context__ is True or caught.value.__context__ is None


# --- binarize -------------------------------------------------------------------

def test_binarize_gives_zeros_and_ones_with_the_right_mean():
    grey = torch.full((2000, 784), 0.3)
    generator = torch.Generator().manual_seed(0)
    binary = data.binarize(grey, generator=generator)
    assert binary.dtype == grey.dtype and binary.shape == grey.shape
    assert set(binary.unique().tolist()) <= {0.0, 1.0}
    assert abs(float(binary.mean()) - 0.3) < 0.005


def test_binarize_is_reproducible_with_a_generator():
    grey = torch.rand(50, 784, generator=torch.Generator().manual_seed(1))
    first = data.binarize(grey, generator=torch.Generator().manual_seed(2))
    second = data.binarize(grey, generator=torch.Generator().manual_seed(2))
    assert torch.equal(first, second)


def test_binarize_keeps_black_and_white_pixels():
    pixels = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    assert torch.equal(data.binarize(pixels), pixels)


def test_binarize_real_images_keeps_the_mean(real_data_root):
    images, _ = data.load_mnist("test", root=real_data_root)
    binary = data.binarize(images, generator=torch.Generator().manual_seed(0))
    assert set(binary.unique().tolist()) == {0.0, 1.0}
    assert abs(float(binary.mean()) - float(images.mean())) < 0.002


@pytest.mark.parametrize("bad, error", [
    (torch.tensor([[0.5, 1.5]]), ValueError),
    (torch.tensor([[-0.1, 0.5]]), ValueError),
    (torch.tensor([[0, 255]], dtype=torch.uint8), TypeError),
])
def test_binarize_rejects_values_outside_zero_one(bad, error):
    with pytest.raises(error, match=r"\[0, 1\]"):
        data.binarize(bad)


def test_binarize_refuses_nan():
    with pytest.raises(ValueError, match="NaN"):
        data.binarize(torch.tensor([[0.5, float("nan")]]))


# --- data folder corner cases (synthetic idx files, no real data needed) --------

def write_idx(path: Path, values: torch.Tensor) -> None:
    """An idx file as torchvision reads it: magic, sizes, then the uint8 values."""
    header = bytes([0, 0, 8, values.dim()])
    for size in values.shape:
        header += int(size).to_bytes(4, "big")
    path.write_bytes(header + values.to(torch.uint8).numpy().tobytes())


def synthetic_root(tmp_path: Path) -> tuple[Path, torch.Tensor]:
    """A root with a readable MNIST test split; the train files are placeholders."""
    raw = tmp_path / "synthetic-root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (10_000, 28, 28), generator=generator)
    write_idx(raw / "t10k-images-idx3-ubyte", pixels)
    write_idx(raw / "t10k-labels-idx1-ubyte", torch.arange(10_000) % 10)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"")
    return raw.parents[1], pixels.reshape(10_000, 784).float() / 255


def test_synthetic_root_loads(tmp_path):
    root, expected = synthetic_root(tmp_path)
    images, labels = data.load_mnist("test", root=root)
    assert torch.equal(images, expected)
    assert labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_a_stale_processed_folder_does_not_shadow_the_raw_files(tmp_path):
    # Old torchvision versions cached MNIST as processed/*.pt; newer ones still
    # prefer those files over raw/ when both exist.
    root, expected = synthetic_root(tmp_path)
    processed = root / "MNIST" / "processed"
    processed.mkdir()
    zeros = torch.zeros(10_000, 28, 28, dtype=torch.uint8)
    for name in ("training.pt", "test.pt"):
        torch.save((zeros, torch.zeros(10_000, dtype=torch.long)), processed / name)
    images, _ = data.load_mnist("test", root=root)
    assert torch.equal(images, expected)


def test_a_folder_in_place_of_a_raw_file_is_named(no_network, tmp_path):
    root, _ = synthetic_root(tmp_path)
    path = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.unlink()
    path.mkdir()
    with pytest.raises(data.DataCorruptError) as caught:
        data.load_mnist("test", root=root)
    assert str(path.resolve()) in str(caught.value)
    assert "folder" in str(caught.value)


def test_an_unreadable_raw_file_is_named(tmp_path, monkeypatch):
    # The tests may run as root, who can read any file: refuse the open instead.
    root, _ = synthetic_root(tmp_path)
    path = (root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").resolve()
    real_open = open

    def guarded_open(file, *args, **kwargs):
        if Path(os.fspath(file)).resolve() == path:
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", guarded_open)
    with pytest.raises(data.DataCorruptError) as caught:
        data.load_mnist("test", root=root)
    message = str(caught.value)
    assert str(path) in message and "Permission denied" in message
    assert caught.value.__suppress_context__ is True


def archived_root(tmp_path: Path) -> tuple[Path, torch.Tensor]:
    """A synthetic root whose raw/ holds only torchvision's .gz archives."""
    root, expected = synthetic_root(tmp_path)
    raw = root / "MNIST" / "raw"
    for name in data.FILE_NAMES:
        with gzip.open(raw / f"{name}.gz", "wb") as archive:
            archive.write((raw / name).read_bytes())
        (raw / name).unlink()
    return root, expected


def test_gz_archives_are_extracted_offline(no_network, tmp_path):
    root, expected = archived_root(tmp_path)
    images, labels = data.load_mnist("test", root=root)
    assert torch.equal(images, expected)
    raw = root / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        [*data.FILE_NAMES, *(f"{name}.gz" for name in data.FILE_NAMES)])


@pytest.mark.parametrize("damage", [
    lambda path: truncate(path, path.stat().st_size // 2),
    lambda path: path.write_bytes(b"not gzip at all"),
], ids=["truncated", "not-gzip"])
def test_a_damaged_archive_is_named_and_leaves_no_half_file(no_network, tmp_path,
                                                            damage):
    root, _ = archived_root(tmp_path)
    raw = root / "MNIST" / "raw"
    archive = raw / "t10k-images-idx3-ubyte.gz"
    damage(archive)
    with pytest.raises(data.DataCorruptError) as caught:
        data.load_mnist("test", root=root)
    message = str(caught.value)
    assert str(archive.resolve()) in message and "Delete it and rerun" in message
    assert not (raw / "t10k-images-idx3-ubyte").exists()
    assert not [p for p in raw.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("existing", ["root", "nothing"])
def test_a_failed_download_leaves_no_empty_folders(no_network, tmp_path, existing):
    root = tmp_path / "root"
    if existing == "root":
        root.mkdir()
    with pytest.raises(data.DataNotFoundError):
        data.load_mnist("test", root=root)
    assert not (root / "MNIST").exists()
    assert root.exists() == (existing == "root")
