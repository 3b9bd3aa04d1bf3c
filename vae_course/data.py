"""MNIST and Fashion-MNIST as in-memory tensors, and dynamic binarization.

Every lesson trains from one float tensor sliced by ``randperm`` rather than a
DataLoader that turns each image into a PIL picture and back: that is several times
faster on a laptop CPU. :func:`load_mnist` reads a split once through torchvision
and keeps it in memory, so a second call costs nothing.

Three splits: ``"test"`` is the 10,000 images of the test file, used for final
numbers only. The 60,000 images of the training file are split once: 10,000 drawn
at random with seed ``VALIDATION_SEED`` are ``"validation"``, on which models are
compared and chosen, and the other 50,000 are ``"train"``. ``"train+validation"``
gives all 60,000, for a model whose settings were already chosen.

Where the files live (the first that applies):

1. the ``root`` argument;
2. the environment variable ``VAE_COURSE_DATA``;
3. ``data/`` in the working directory.

Each is a torchvision root: MNIST sits in ``<root>/MNIST/raw/`` and Fashion-MNIST
in ``<root>/FashionMNIST/raw/``. Only those four raw files are read (an old
torchvision ``processed/`` cache beside them is ignored); a file found only as
torchvision's ``.gz`` archive is extracted first. Files that are absent are
downloaded there; files that are present are never downloaded again, and a download
that fails leaves no folders behind.
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

__all__ = [
    "DATASETS",
    "DEFAULT_ROOT",
    "ENV_VAR",
    "FILE_NAMES",
    "SPLITS",
    "VALIDATION_SEED",
    "VALIDATION_SIZE",
    "DataCorruptError",
    "DataNotFoundError",
    "binarize",
    "check_pixel_values",
    "data_root",
    "load_mnist",
    "validation_indices",
]

#: Environment variable naming a torchvision root that already holds the data.
ENV_VAR = "VAE_COURSE_DATA"
#: Used when neither an argument nor ``VAE_COURSE_DATA`` names a root; relative, so
#: it lies in the working directory.
DEFAULT_ROOT = Path("data")
#: Dataset name -> torchvision class name (also the folder under the root).
DATASETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
#: Split name -> number of images it holds.
SPLITS = {"train": 50_000, "validation": 10_000, "train+validation": 60_000,
          "test": 10_000}
#: Images of the training file held out for choosing models, and the seed that
#: picks them (a random 10,000, so that every digit and writer is represented).
VALIDATION_SIZE = 10_000
VALIDATION_SEED = 0
# Images in each raw file.
_FILE_SIZES = {"train": 60_000, "test": 10_000}
#: The four raw files torchvision reads, in ``<root>/<MNIST|FashionMNIST>/raw/``.
FILE_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
IMAGE_SIDE = 28
NUM_CLASSES = 10

# What torchvision's parser raises on a truncated or garbled idx file.
_PARSE_ERRORS = (AssertionError, ValueError, RuntimeError, TypeError, KeyError,
                 IndexError, OverflowError)


class DataNotFoundError(RuntimeError):
    """The data files are absent and could not be downloaded."""


class DataCorruptError(RuntimeError):
    """A data file exists but cannot be read as the expected images or labels."""


def _check_choice(kind: str, value: str, choices) -> None:
    if value not in choices:
        listed = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"unknown {kind} {value!r}; choose one of {listed}")


def _root_and_origin(root: str | os.PathLike | None) -> tuple[Path, str]:
    """The root to use and a few words on where it came from."""
    if root is not None:
        return Path(root).expanduser(), "the root argument"
    from_env = os.environ.get(ENV_VAR, "").strip()
    if from_env:
        return Path(from_env).expanduser(), f"${ENV_VAR}"
    return Path(DEFAULT_ROOT), "the default data/ folder of the working directory"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The torchvision root that :func:`load_mnist` reads, resolved to an absolute path.

    ``root`` when given, else ``$VAE_COURSE_DATA``, else ``data/`` in the working
    directory.
    """
    return _root_and_origin(root)[0].resolve()


def load_mnist(split: str = "train", dataset: str = "mnist",
               root: str | os.PathLike | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of MNIST or Fashion-MNIST as ``(images, labels)``.

    ``images`` is float32 of shape ``(N, 784)`` with grey levels in ``[0, 1]``;
    ``labels`` is int64 of shape ``(N,)`` with classes ``0..9``. ``split`` is one
    of :data:`SPLITS`: ``"train"`` (50,000 images), ``"validation"`` (10,000 of the
    training file, drawn with seed :data:`VALIDATION_SEED`, disjoint from
    ``"train"``), ``"train+validation"`` (all 60,000, in file order) or ``"test"``
    (10,000). ``"train"`` and ``"validation"`` keep the file's order.

    The tensors are read once per (dataset, split, root) and then served from memory:
    every call returns the same objects, so clone them before changing them in place.

    Raises ``ValueError`` for an unknown split or dataset, :class:`DataNotFoundError`
    when the files are absent and the download fails, and :class:`DataCorruptError`
    when a file is present but damaged.
    """
    _check_choice("split", split, SPLITS)
    _check_choice("dataset", dataset, DATASETS)
    path, origin = _root_and_origin(root)
    resolved = path.resolve()
    try:
        return _load_split(dataset, split, str(resolved))
    except _DownloadFailed as failure:
        raise DataNotFoundError(
            _not_found_message(DATASETS[dataset], resolved, origin, str(failure))
        ) from None


class _DownloadFailed(Exception):
    """The download did not complete; the message is why."""


def validation_indices(validation_size: int = VALIDATION_SIZE,
                       seed: int = VALIDATION_SEED) -> torch.Tensor:
    """Which images of the 60,000-image training file form the validation split.

    Sorted int64 indices, ``(validation_size,)``: the first ``validation_size`` of a
    seeded permutation, so a smaller validation set lies inside a larger one.
    """
    order = torch.randperm(_FILE_SIZES["train"],
                           generator=torch.Generator().manual_seed(seed))
    return order[:validation_size].sort().values


@functools.lru_cache(maxsize=16)  # 2 datasets x 4 splits, a few roots
def _load_split(dataset: str, split: str,
                root: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split, cut from its raw file; cached like the files themselves."""
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
    """Read and check one split; cached on (dataset, split, resolved root)."""
    raw_folder = Path(root) / DATASETS[dataset] / "raw"
    for name in FILE_NAMES:
        path = raw_folder / name
        if path.exists() and not path.is_file():
            raise DataCorruptError(
                f"{path} is a folder or other non-file where the data file should "
                "be. Remove it and rerun: the file is then downloaded again.")
        if not path.exists() and path.with_name(f"{name}.gz").is_file():
            _extract(path)
    if not all((raw_folder / name).is_file() for name in FILE_NAMES):
        import torchvision  # here, not at the top: its import takes seconds

        _download(getattr(torchvision.datasets, DATASETS[dataset]), raw_folder)
    # The raw files are read directly: torchvision would prefer a stale
    # processed/ cache from an old version over them, without a word.
    from torchvision.datasets.mnist import read_image_file, read_label_file

    prefix = raw_folder / ("train" if split == "train" else "t10k")
    image_file, label_file = (Path(f"{prefix}-{kind}-idx{dims}-ubyte")
                              for kind, dims in (("images", 3), ("labels", 1)))
    images = _read(image_file, read_image_file)
    labels = _read(label_file, read_label_file)
    _validate(images, labels, image_file, label_file, _FILE_SIZES[split])
    images = images.reshape(len(images), IMAGE_SIDE * IMAGE_SIDE).float().div_(255.0)
    return images, labels.long()


def _read(path: Path, reader) -> torch.Tensor:
    """One idx file through torchvision's parser, with errors that name the file."""
    try:
        return reader(str(path))
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise DataCorruptError(
            f"{path} cannot be read ({reason}). Check its permissions, or delete it "
            "and rerun to download it again.") from None
    except _PARSE_ERRORS:
        raise DataCorruptError(_corrupt_message(path, "it cannot be parsed")) from None


def _extract(target: Path) -> None:
    """Extract ``target`` from its ``.gz`` archive beside it, as torchvision would but
    offline; into a temporary file first, so that none is left half-written."""
    archive = target.with_name(f"{target.name}.gz")
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with gzip.open(archive) as source, open(temporary, "wb") as file:
            shutil.copyfileobj(source, file)
        os.replace(temporary, target)
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise DataCorruptError(_corrupt_message(
            archive, f"it cannot be extracted: {error}")) from None
    except OSError as error:
        raise DataNotFoundError(
            f"{target} is missing and {archive.name} cannot be extracted there "
            f"({error.strerror or error}); extract it by hand, or make "
            f"{target.parent} writable") from None
    finally:
        temporary.unlink(missing_ok=True)


def _download(dataset_class, raw_folder: Path) -> None:
    """Fetch the missing raw files; raise _DownloadFailed, leaving no folders, if not.

    Files are fetched into a temporary folder and moved into ``raw_folder`` only
    when every one of them has arrived and passed its checksum.
    """
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


def _not_found_message(folder: str, root: Path, origin: str, reason: str) -> str:
    raw = root / folder / "raw"
    files = "\n".join(f"    {name}" for name in FILE_NAMES)
    return (
        f"{folder} data not found in {root} (taken from {origin}) and the download "
        f"failed ({reason}).\n"
        f"Expected these four files in {raw}{os.sep}:\n{files}\n"
        f"Fix: set {ENV_VAR} to a folder holding {folder}/raw/ with those files "
        f"(a torchvision root), or connect to the internet and rerun."
    )


def _corrupt_message(path: Path, problem: str) -> str:
    return (f"{path} is damaged ({problem}). Delete it and rerun: the file is then "
            f"downloaded again, or copy a good one there by hand.")


def _validate(images: torch.Tensor, labels: torch.Tensor, image_file: Path,
              label_file: Path, count: int) -> None:
    """Check shapes, dtypes and label values, naming the file that is wrong."""
    expected = (count, IMAGE_SIDE, IMAGE_SIDE)
    if images.dtype != torch.uint8 or tuple(images.shape) != expected:
        raise DataCorruptError(_corrupt_message(
            image_file, f"expected uint8 images of shape {expected}, found "
                        f"{images.dtype} of shape {tuple(images.shape)}"))
    if tuple(labels.shape) != (count,):
        raise DataCorruptError(_corrupt_message(
            label_file, f"expected {count} labels, found shape {tuple(labels.shape)}"))
    if labels.numel() and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataCorruptError(_corrupt_message(
            label_file, f"labels must lie in 0..{NUM_CLASSES - 1}, found "
                        f"{int(labels.min())}..{int(labels.max())}"))


def binarize(images: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Dynamic binarization: each pixel becomes 1 with probability its grey level.

    A fresh draw per call (per epoch, per batch) is what "dynamically binarized
    MNIST" means in the papers; the result is a float tensor of 0.0 and 1.0 that a
    Bernoulli likelihood accepts.
    """
    check_pixel_values(images, "the images given to binarize")
    return torch.bernoulli(images, generator=generator)


def check_pixel_values(x: torch.Tensor, name: str = "pixels") -> None:
    """Refuse anything but a floating-point tensor of values in [0, 1].

    The one check of pixel values that every entry point shares. NaN is named on
    its own: it compares False with every bound, so a range test alone lets it in.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point in [0, 1]; got {x.dtype}")
    if not x.numel():
        return
    low, high = torch.aminmax(x)  # NaN propagates into both
    if bool((low >= 0) & (high <= 1)):  # one pass, one sync in the usual case
        return
    nan = torch.isnan(x)
    if bool(nan.any()):
        raise ValueError(f"{name} must hold pixels in [0, 1], but {int(nan.sum())} "
                         f"of {x.numel()} values are NaN")
    raise ValueError(f"{name} must hold pixels in [0, 1]; found values in "
                     f"[{float(low):.4g}, {float(high):.4g}]")
