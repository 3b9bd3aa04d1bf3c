"""MNIST and Fashion-MNIST as in-memory tensors, and dynamic binarization.

Lessons slice one float tensor by ``randperm``: several times faster on a laptop CPU
than a DataLoader that turns each image into a PIL picture and back.

Splits: ``"test"``, 10,000 images for final numbers only; ``"validation"``, 10,000
of the training file drawn with seed ``VALIDATION_SEED``, for choosing models;
``"train"``, the other 50,000; ``"train+validation"``, all 60,000.

The root is the ``root`` argument, else ``$VAE_COURSE_DATA``, else ``data/`` in the
working directory: a torchvision root, with ``MNIST/raw/`` and ``FashionMNIST/raw/``.
A missing file is extracted from the ``.gz`` beside it, or else downloaded.
This module imports nothing of the package, so that it can be loaded on its own.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from urllib.error import URLError

import torch

from .inputs import check_choice, check_pixel_values

__all__ = ["DATASETS", "DEFAULT_ROOT", "ENV_VAR", "FILE_NAMES", "SPLITS",
           "VALIDATION_SEED", "VALIDATION_SIZE", "DataCorruptError", "DataNotFoundError",
           "binarize", "check_pixel_values", "data_root", "load_mnist",
           "validation_indices"]

ENV_VAR = "VAE_COURSE_DATA"
DEFAULT_ROOT = Path("data")  # relative: in the working directory
#: Dataset name -> torchvision class name (also the folder under the root).
DATASETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
#: Split name -> number of images it holds.
SPLITS = {"train": 50_000, "validation": 10_000, "train+validation": 60_000,
          "test": 10_000}
#: A random 10,000 of the training file, so that every digit and writer is there.
VALIDATION_SIZE = 10_000
VALIDATION_SEED = 0
_FILE_SIZES = {"train": 60_000, "test": 10_000}  # images in each raw file
FILE_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IMAGE_SIDE = 28
NUM_CLASSES = 10


class DataNotFoundError(RuntimeError):
    """The data files are absent and could not be downloaded."""


class DataCorruptError(RuntimeError):
    """A data file exists but cannot be read as the expected images or labels."""


class _DownloadFailed(Exception):
    """The download did not complete; the message is why."""


def _root_and_origin(root: str | os.PathLike | None) -> tuple[Path, str]:
    """The root to use and a few words on where it came from."""
    if root is not None:
        return Path(root).expanduser(), "the root argument"
    from_env = os.environ.get(ENV_VAR, "").strip()
    if from_env:
        return Path(from_env).expanduser(), f"${ENV_VAR}"
    return Path(DEFAULT_ROOT), "the default data/ folder of the working directory"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The absolute torchvision root that :func:`load_mnist` reads."""
    return _root_and_origin(root)[0].resolve()


def load_mnist(split: str = "train", dataset: str = "mnist",
               root: str | os.PathLike | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of :data:`SPLITS` as ``(images, labels)``, both in file order.

    ``images`` is float32 ``(N, 784)`` with grey levels in [0, 1], ``labels`` int64
    ``(N,)`` in 0..9. Every call returns the same tensors: clone before changing them.
    """
    check_choice("split", split, SPLITS)
    check_choice("dataset", dataset, DATASETS)
    path, origin = _root_and_origin(root)
    resolved = path.resolve()
    try:
        return _load_split(dataset, split, str(resolved))
    except _DownloadFailed as failure:
        folder, raw = DATASETS[dataset], resolved / DATASETS[dataset] / "raw"
        files = "\n".join(f"    {name}" for name in FILE_NAMES)
        raise DataNotFoundError(
            f"{folder} data not found in {resolved} (taken from {origin}) and the "
            f"download failed ({failure}).\n"
            f"Expected these four files in {raw}{os.sep}:\n{files}\n"
            f"Fix: set {ENV_VAR} to a folder holding {folder}/raw/ with those files "
            f"(a torchvision root), or connect to the internet and rerun.") from None


def validation_indices(validation_size: int = VALIDATION_SIZE,
                       seed: int = VALIDATION_SEED) -> torch.Tensor:
    """The sorted indices, in the training file, of the validation split: the first
    ``validation_size`` of a seeded permutation, so a smaller set lies in a larger."""
    order = torch.randperm(_FILE_SIZES["train"],
                           generator=torch.Generator().manual_seed(seed))
    return order[:validation_size].sort().values


@functools.lru_cache(maxsize=16)  # 2 datasets x 4 splits, a few roots
def _load_split(dataset: str, split: str,
                root: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split, cut from its raw file."""
    if split == "test":
        return _load_cached(dataset, "test", root)
    images, labels = _load_cached(dataset, "train", root)
    if split == "train+validation":
        return images, labels
    held_out = torch.zeros(len(images), dtype=torch.bool)
    held_out[validation_indices()] = True
    keep = held_out if split == "validation" else ~held_out
    return images[keep], labels[keep]


@functools.lru_cache(maxsize=8)  # 2 datasets x 2 files, a few roots
def _load_cached(dataset: str, split: str,
                 root: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read and check one raw file's images and labels."""
    raw_folder = Path(root) / DATASETS[dataset] / "raw"
    for name in FILE_NAMES:
        path = raw_folder / name
        if path.exists() and not path.is_file():
            raise DataCorruptError(f"{path} is a folder or other non-file. Remove it "
                                   "and rerun: the data file is then downloaded again.")
        if not path.exists() and path.with_name(f"{name}.gz").is_file():
            _extract(path)
    if not all((raw_folder / name).is_file() for name in FILE_NAMES):
        import torchvision  # here, not at the top: its import takes seconds

        _download(getattr(torchvision.datasets, DATASETS[dataset]), raw_folder)
    # Read directly: torchvision would silently prefer an old processed/ cache.
    from torchvision.datasets.mnist import read_image_file, read_label_file

    prefix = raw_folder / ("train" if split == "train" else "t10k")
    image_file = Path(f"{prefix}-images-idx3-ubyte")
    label_file = Path(f"{prefix}-labels-idx1-ubyte")
    images = _read(image_file, read_image_file)
    labels = _read(label_file, read_label_file)
    count = _FILE_SIZES[split]
    expected = (count, IMAGE_SIDE, IMAGE_SIDE)
    if images.dtype != torch.uint8 or tuple(images.shape) != expected:
        raise _damaged(image_file, f"expected uint8 images of shape {expected}, "
                       f"found {images.dtype} of shape {tuple(images.shape)}")
    if tuple(labels.shape) != (count,):
        raise _damaged(label_file, f"expected {count} labels, found shape "
                       f"{tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise _damaged(label_file, f"labels must lie in 0..{NUM_CLASSES - 1}, found "
                       f"{int(labels.min())}..{int(labels.max())}")
    images = images.reshape(len(images), IMAGE_SIDE * IMAGE_SIDE).float().div_(255.0)
    return images, labels.long()


def _damaged(path: Path, problem: str) -> DataCorruptError:
    return DataCorruptError(f"{path} is damaged ({problem}). Delete it and rerun: the "
                            "file is then downloaded again, or copy a good one there "
                            "by hand.")


def _read(path: Path, reader) -> torch.Tensor:
    """One idx file through torchvision's parser, with errors that name the file."""
    try:
        return reader(str(path))
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise DataCorruptError(f"{path} cannot be read ({reason}). Check its "
                               "permissions, or delete it and rerun to download it "
                               "again.") from None
    except (AssertionError, ValueError, RuntimeError, TypeError, KeyError, IndexError,
            OverflowError):  # what torchvision's parser raises on a garbled file
        raise _damaged(path, "it cannot be parsed") from None


def _extract(target: Path) -> None:
    """Extract ``target`` from the ``.gz`` beside it, through a temporary file."""
    archive = target.with_name(f"{target.name}.gz")
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with gzip.open(archive) as source, open(temporary, "wb") as file:
            shutil.copyfileobj(source, file)
        os.replace(temporary, target)
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise _damaged(archive, f"it cannot be extracted: {error}") from None
    except OSError as error:
        raise DataNotFoundError(f"{target} is missing and {archive.name} cannot be "
                                f"extracted there ({error.strerror or error}); extract "
                                f"it by hand or make {target.parent} writable") from None
    finally:
        temporary.unlink(missing_ok=True)


def _download(dataset_class, raw_folder: Path) -> None:
    """Fetch the missing raw files into a temporary folder, and move them into
    ``raw_folder`` once all have passed their checksums; _DownloadFailed if not."""
    folder, root = raw_folder.parent, raw_folder.parent.parent
    print(f"{folder.name} not found in {root}: downloading it there ...")
    created = [path for path in (root, folder) if not path.exists()]
    staging = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=folder))
        for filename, md5 in dataset_class.resources:
            _download_one(dataset_class.mirrors, filename, md5, staging)
        raw_folder.mkdir(exist_ok=True)
        for name in FILE_NAMES:
            if not (raw_folder / name).is_file():
                os.replace(staging / name, raw_folder / name)
    except OSError as error:
        raise _DownloadFailed(str(error)) from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if not raw_folder.is_dir():
            for path in reversed(created):  # the deepest first; only if still empty
                with contextlib.suppress(OSError):
                    path.rmdir()


def _download_one(mirrors, filename: str, md5: str, staging: Path) -> None:
    """Try each mirror in turn, quietly; _DownloadFailed with the last reason."""
    from torchvision.datasets.utils import download_and_extract_archive

    reason = "no mirror to download from"
    chatter = io.StringIO()  # torchvision's progress bars and messages
    for mirror in mirrors:
        try:
            with contextlib.redirect_stdout(chatter), \
                    contextlib.redirect_stderr(chatter):
                download_and_extract_archive(f"{mirror}{filename}", str(staging),
                                             filename=filename, md5=md5)
            return
        except (RuntimeError, URLError, OSError) as error:
            lines = str(error).strip().splitlines()
            reason = lines[-1] if lines else type(error).__name__
    raise _DownloadFailed(reason)


def binarize(images: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Dynamic binarization: each pixel becomes 1 with probability its grey level,
    drawn afresh at every call (every batch), as in the papers."""
    check_pixel_values(images, "the images given to binarize")
    return torch.bernoulli(images, generator=generator)
