"""``python -m vae_course``: train a VAE or evaluate a checkpoint from the shell.

    python -m vae_course train --epochs 16 --output runs/default
    python -m vae_course evaluate runs/default/best.pt --k 5000

``train`` learns from the 50,000 training images and keeps the epoch with the best
validation -ELBO in ``best.pt``; ``evaluate`` gives the test set's numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import difflib
import inspect
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

from .checkpoints import (
    CheckpointError,
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
)
from .data import DATASETS, DataCorruptError, DataNotFoundError, load_mnist
from .distributions import LIKELIHOODS
from .evaluate import evaluate_elbo, importance_weighted_log_likelihood
from .inputs import check_choice, check_number
from .models import ARCHITECTURES, CONV_CHANNELS, build_vae, is_conditional
from .runtime import default_device, seed_everything, set_threads
from .train import check_objective, fit

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"  # the epoch with the lowest validation -ELBO so far
# Every file a run writes in its folder, and only those: --overwrite removes them.
RUN_FILES = re.compile(r"(checkpoint|best)\.pt|metrics\.(csv|json)"
                       r"|(reconstruction|sample)_\d{3,}\.png")
# A run's settings, which --resume takes from its checkpoint: the model's config
# holds the first, the checkpoint's saved settings the second.
MODEL_SETTINGS = ("architecture", "latent_dim", "hidden_sizes", "likelihood",
                  "channels")
RUN_SETTINGS = ("dataset", "batch_size", "lr", "beta", "warmup_epochs", "seed",
                "iwae_samples")
FIT_NAMES = {"lr": "learning_rate"}  # a flag's name where fit's differs
# The defaults are build_vae's and fit's own; the epochs and the dataset the CLI's.
DEFAULTS = {"epochs": 16, "dataset": "mnist", **{
    name: inspect.signature(function).parameters[FIT_NAMES.get(name, name)].default
    for function, names in ((build_vae, MODEL_SETTINGS), (fit, RUN_SETTINGS[1:]))
    for name in names}}
SEED_LIMIT = 2**32  # numpy's seeds lie below it
OUT_OF_MEMORY = ("not enough memory", "can't allocate memory", "out of memory")


class UsageError(Exception):
    """Flags that cannot be honoured together; reported like any bad flag."""


class ResourceError(Exception):
    """The machine cannot hold what was asked for (memory)."""


class _Parser(argparse.ArgumentParser):
    """Bad values end in one line on stderr and exit status 2; a mistyped flag is
    answered by its command, with the flag it resembles."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def error(self, message):
        if message.startswith("unrecognized arguments: "):
            flags = [flag for action in self._actions for flag in action.option_strings]
            for word in message.split()[2:]:
                guess = difflib.get_close_matches(word.split("=")[0], flags, n=1)
                if word.startswith("-") and guess:
                    message += f"; did you mean {guess[0]}?"
                    break
        self.exit(2, f"{self.prog}: error: {message}\n")


def _path(text):
    """An argparse type: a path, refused when empty (it would mean this folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; name a file or folder")
    return Path(text)


def _number(kind, allow_zero: bool = False):
    """An argparse type: a finite number of ``kind`` above zero (or at least zero)."""
    wanted = (f"{'a non-negative' if allow_zero else 'a positive'} "
              f"{'integer below 2**32' if kind is int else 'number'}")

    def parse(text):
        try:
            value = check_number(text, kind(text), integer=kind is int,
                                 allow_zero=allow_zero)
            if kind is int and value >= SEED_LIMIT:
                raise ValueError(text)
            return value
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}") from None
    return parse


def _device(text):
    """An argparse type: ``auto``, or a device of this machine that can train."""
    if text == "auto":
        return default_device()
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        problem = f"{text!r} is not a device that can train; choose auto, cpu or cuda"
    elif device.type == "cuda" and not torch.cuda.is_available():
        problem = "CUDA was asked for but no GPU is available; choose cpu"
    elif device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        problem = (f"{text!r}: this machine has {torch.cuda.device_count()} GPU(s), "
                   "numbered from 0")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        problem = "MPS was asked for but is not available; choose cpu"
    else:
        return device
    raise argparse.ArgumentTypeError(problem)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m vae_course",
                     description="Train a variational autoencoder on MNIST or "
                                 "Fashion-MNIST, or evaluate a saved one.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_Parser)
    train = commands.add_parser("train", help="train a model, writing pictures, "
                                "metrics and a checkpoint each epoch; the epoch with "
                                "the best validation -ELBO is kept in best.pt")

    def setting(flag, help, **options):  # its default is given when the run is new
        default = DEFAULTS[flag[2:].replace("-", "_")]
        train.add_argument(flag, default=None, **options,
                           help=f"{help} (default: {_shown(default)})")

    setting("--epochs", "number of passes over the training set", type=_number(int))
    setting("--batch-size", "images per step", type=_number(int))
    setting("--latent-dim", "size of the latent code z", type=_number(int))
    setting("--hidden-sizes", "hidden layer widths of the MLP encoder; the decoder "
            "mirrors them", type=_number(int), nargs="+", metavar="N")
    setting("--architecture", "multilayer perceptron or convolutional",
            choices=ARCHITECTURES)
    train.add_argument("--channels", type=_number(int), default=None, help="width of "
                       "the conv architecture: channels of its first convolution, the "
                       f"second has twice as many (default: {CONV_CHANNELS})")
    setting("--likelihood", "pixel model; bernoulli binarizes the images afresh "
            "every batch, the other two take the grey levels", choices=LIKELIHOODS)
    setting("--lr", "Adam learning rate", type=_number(float))
    setting("--beta", "weight of the KL term, 1 for the true ELBO",
            type=_number(float, allow_zero=True))
    setting("--warmup-epochs", "epochs over which the KL weight rises from 0 to beta",
            type=_number(float, allow_zero=True))
    setting("--iwae-samples", "train an IWAE on the K-sample importance-weighted "
            "bound; 1 is the VAE's ELBO", type=_number(int), metavar="K")
    _add_common(train, seed_default=None)
    setting("--dataset", "which images to learn", choices=tuple(DATASETS))
    train.add_argument("--output", type=_path, default=Path("runs/default"),
                       help="folder for pictures, metrics and the checkpoint "
                            "(default: runs/default)")
    action = train.add_mutually_exclusive_group()
    action.add_argument("--resume", action="store_true",
                        help="continue the run saved in --output, with the "
                             "dataset and settings saved there, up to --epochs")
    action.add_argument("--overwrite", action="store_true",
                        help="replace a run already saved in --output (its "
                             "pictures, metrics and checkpoints are removed)")
    train.add_argument("--eval-k", type=_number(int, allow_zero=True), default=0,
                       metavar="K", help="after training, also estimate the validation "
                       "log p(x) with K importance samples (default: 0, skip)")
    train.add_argument("--compile", action="store_true",
                       help="train through torch.compile: faster steps once the "
                            "first ones have waited for the compiler (tens of "
                            "seconds; a C++ compiler is needed on a CPU)")

    evaluate = commands.add_parser("evaluate", help="print the test ELBO and the "
                                   "importance-sampled log-likelihood of a checkpoint")
    evaluate.add_argument("checkpoint", type=_path,
                          help="a best.pt or checkpoint.pt written by train, or the "
                               "run's folder (its best.pt)")
    evaluate.add_argument("--split", choices=("test", "validation"), default="test",
                          help="which held-out images (default: test)")
    evaluate.add_argument("--k", type=_number(int), default=5000,
                          help="importance samples per image (default: 5000)")
    evaluate.add_argument("--limit", type=_number(int), default=None,
                          help="use only the first N images (default: all)")
    evaluate.add_argument("--json", type=_path, default=None, metavar="FILE",
                          help="also write the numbers to FILE as JSON")
    _add_common(evaluate)
    return parser


def _add_common(parser, seed_default=DEFAULTS["seed"]):
    parser.add_argument("--seed", type=_number(int, allow_zero=True),
                        default=seed_default, help="random seed, 0 to 2**32 - 1 "
                        f"(default: {DEFAULTS['seed']})")
    parser.add_argument("--device", type=_device, default="auto",
                        help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--data-root", type=_path, default=None,
                        help="torchvision data folder (default: $VAE_COURSE_DATA, "
                             "else data/ in the working directory)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--threads", type=_number(int), default=None,
                        help="CPU threads for PyTorch (default: $VAE_COURSE_THREADS, "
                             "else the cores not busy with other work)")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _check_output(folder: Path, args) -> list[Path]:
    """Check --output before any work, creating nothing; returns the files of an
    earlier run there, which a new run replaces (none on --resume)."""
    checkpoint = folder / CHECKPOINT
    if args.resume and not checkpoint.exists():
        raise UsageError(f"--resume given but there is no {checkpoint}")
    found = [] if args.resume else sorted(
        path for path in folder.glob("*") if RUN_FILES.fullmatch(path.name))
    if found and not args.overwrite:
        names = ", ".join(path.name for path in found[:3]) + ", ..." * (len(found) > 3)
        raise UsageError(f"--output {folder} already holds a run ({names}); pass "
                         "--resume to continue it, --overwrite to replace it, or "
                         "choose another --output")
    probe = folder  # the folder, or the nearest one above it that exists
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"--output {folder}: {probe} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as error:
        raise UsageError(f"--output {folder}: cannot write in {probe} "
                         f"({error.strerror or error})") from None
    return found


def _check_output_file(path: Path, flag: str) -> None:
    """Refuse a file that cannot be written, before the work that fills it."""
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise UsageError(f"{flag} {path}: the folder {path.parent} does not exist")
    existed = path.exists()
    try:
        with open(path, "a"):
            pass
    except OSError as error:
        raise UsageError(f"{flag} {path} cannot be written "
                         f"({error.strerror or error})") from None
    if not existed:
        path.unlink()


def _saved_settings(path: Path, payload: dict) -> dict:
    """The training settings a checkpoint was saved with, each checked."""
    settings = payload["extra"].get("settings")
    try:
        if not isinstance(settings, dict):
            raise ValueError("it holds no training settings (it was not written by "
                             "`python -m vae_course train`)")
        settings = {"iwae_samples": 1, **settings}  # runs from before --iwae-samples
        missing = [name for name in RUN_SETTINGS if name not in settings]
        if missing:
            raise ValueError(f"it lacks the training settings {missing}")
        check_choice("dataset", settings["dataset"], DATASETS)
        checked = {"dataset": settings["dataset"]}
        for name, integer, allow_zero in [
                ("batch_size", True, False), ("lr", False, False), ("beta", False, True),
                ("warmup_epochs", False, True), ("seed", True, True),
                ("iwae_samples", True, False)]:
            checked[name] = check_number(f"its setting {name}", settings[name],
                                         integer=integer, allow_zero=allow_zero)
        check_objective(checked["beta"], checked["warmup_epochs"],
                        checked["iwae_samples"])
        if checked["seed"] >= SEED_LIMIT:
            raise ValueError("its seed is not below 2**32")
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path} cannot be resumed: {error}") from None
    return checked


def _refuse_channels(explicit: dict, architecture: str, whose: str) -> None:
    if "channels" in explicit and architecture != "conv":
        raise UsageError(f"--channels sets the width of the conv architecture, but "
                         f"{whose} model is an {architecture}; its widths are "
                         "--hidden-sizes")


def _build_model(config: dict, device: torch.device):
    """The model of ``config`` on ``device``, refused first if it cannot fit."""
    with torch.device("meta"):  # shapes only: allocates nothing
        skeleton = build_vae(**config)
    needed = sum(p.numel() * p.element_size() for p in skeleton.parameters())
    available = None
    if device.type == "cuda":
        available = torch.cuda.mem_get_info(device)[1]
    elif device.type == "cpu":
        with contextlib.suppress(AttributeError, ValueError, OSError):
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    # Training holds the weights, their gradients and Adam's two moments.
    if available is not None and 4 * needed > available:
        raise ResourceError(
            f"the model needs {needed / 1e9:.3g} GB for its weights and about four "
            f"times that to train, but the {device.type} memory is "
            f"{available / 1e9:.3g} GB; choose smaller --hidden-sizes or --latent-dim")
    return build_vae(**config).to(device)


def run_train(args) -> int:
    explicit = {name: getattr(args, name) for name in DEFAULTS
                if getattr(args, name) is not None and name != "epochs"}
    num_epochs = args.epochs if args.epochs is not None else DEFAULTS["epochs"]
    folder, checkpoint = args.output, args.output / CHECKPOINT
    old_files = _check_output(folder, args)
    if args.resume:
        model, payload = load_checkpoint(checkpoint, args.device)
        settings = _saved_settings(checkpoint, payload)
        _refuse_channels(explicit, model.config["architecture"], "the saved run's")
        saved = {**settings, **model.config}
        for name, value in explicit.items():  # a flag must agree with the saved run
            if name in saved and value != saved[name]:
                raise UsageError(f"{_flag(name)} {_shown(value)} conflicts with the "
                                 f"saved run's {_shown(saved[name])}: --resume keeps "
                                 "the saved settings (leave the flag out, or start a "
                                 "new run with --overwrite or another --output)")
        history = payload["history"]
        if num_epochs <= len(history):
            raise UsageError(f"the saved run already has "
                             f"{_plural(len(history), 'epoch')}; pass --epochs above "
                             f"{len(history)} to train more")
        seed_everything(settings["seed"])
        optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"])
        restore_optimizer(optimizer, payload)
    else:
        settings = {name: explicit.get(name, DEFAULTS[name]) for name in RUN_SETTINGS}
        try:  # an IWAE given a KL weight, in fit's words, after the flags
            check_objective(settings["beta"], settings["warmup_epochs"],
                            settings["iwae_samples"])
        except ValueError as error:
            given = " ".join(f"{_flag(name)} {value}" for name, value in explicit.items()
                             if name in ("beta", "warmup_epochs", "iwae_samples"))
            raise UsageError(f"{given}: {error}") from None
        architecture = explicit.get("architecture", DEFAULTS["architecture"])
        _refuse_channels(explicit, architecture, "this run's")
        seed_everything(settings["seed"])
        # build_vae fills in the model's defaults (an MLP has no channels).
        model = _build_model({name: explicit[name] for name in MODEL_SETTINGS
                              if name in explicit}, args.device)
        history, optimizer = None, None
    done = len(history) if history is not None else 0
    train_images, _ = load_mnist("train", settings["dataset"], args.data_root)
    validation_images, _ = load_mnist("validation", settings["dataset"], args.data_root)
    for path in old_files:  # the last check passed: the old run goes
        path.unlink()

    def after_epoch(model, optimizer, history):
        # Creates the folder on the first epoch: a run that fails sooner leaves none.
        save_checkpoint(checkpoint, model, optimizer, history, settings=settings)
        losses = history.column("validation_loss")
        if losses[-1] <= min(losses):
            save_checkpoint(folder / BEST, model, optimizer, history, settings=settings)
        with open(folder / "metrics.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(history.rows[0]))
            writer.writeheader()
            writer.writerows(history.rows)
        (folder / "metrics.json").write_text(json.dumps(history.rows, indent=1) + "\n")
        _save_pictures(folder, model, validation_images, len(history), settings["seed"])

    started = time.perf_counter()
    try:
        history = fit(model, train_images, validation_images, num_epochs=num_epochs,
                      **{FIT_NAMES.get(name, name): settings[name]
                         for name in RUN_SETTINGS[1:]},
                      compiled=args.compile, progress=not args.no_progress,
                      callback=after_epoch, optimizer=optimizer, history=history)
    except FloatingPointError as error:
        message = str(error)
        if not message.startswith("training diverged"):
            message = f"training diverged: {message}"
        if checkpoint.exists():
            message += f"; {checkpoint} keeps the last good epoch"
        raise FloatingPointError(message) from None
    print(f"trained {_plural(num_epochs - done, 'epoch')} in "
          f"{time.perf_counter() - started:.1f} s; files in {folder}")
    if args.eval_k:
        _, text = _log_likelihood(model, validation_images, args.eval_k,
                                  settings["seed"], not args.no_progress)
        print(f"validation log p(x): {text}")
    last, losses = history.rows[-1], history.column("validation_loss")
    best = losses.index(min(losses))
    print(f"validation -ELBO: {last['validation_loss']:.2f} nats (epoch "
          f"{last['epoch']}); best {losses[best]:.2f} at epoch {best + 1}, kept in "
          f"{folder / BEST}")
    return 0


def _save_pictures(folder: Path, model, images, epoch: int, seed: int) -> None:
    from torchvision.utils import save_image  # here: its import takes seconds

    originals = images[:8].to(model.device)
    pairs = torch.cat([originals, model.reconstruct(originals)]).reshape(-1, 1, 28, 28)
    save_image(pairs.cpu(), folder / f"reconstruction_{epoch:03d}.png", nrow=8)
    samples = model.sample(64, generator=torch.Generator().manual_seed(seed))
    save_image(samples.reshape(-1, 1, 28, 28).cpu(), folder / f"sample_{epoch:03d}.png")


def _log_likelihood(model, images, k, seed, progress, labels=None):
    """The importance-sampled log p(x) (log p(x|y) given labels) as --json has it,
    and as a line of text."""
    started = time.perf_counter()
    log_p = importance_weighted_log_likelihood(model, images, num_samples=k, seed=seed,
                                               progress=progress, labels=labels)
    spread = log_p.std().item() if len(log_p) > 1 else 0.0
    result = {"log_likelihood": log_p.mean().item(),
              "standard_error": spread / math.sqrt(len(log_p)), "k": k,
              "seconds": time.perf_counter() - started}
    return result, (f"{result['log_likelihood']:.2f} nats, standard error "
                    f"{result['standard_error']:.2f} (K={k} importance samples, "
                    f"{result['seconds']:.0f} s)")


def run_evaluate(args) -> int:
    if args.json is not None:
        _check_output_file(args.json, "--json")
    path = args.checkpoint / BEST if args.checkpoint.is_dir() else args.checkpoint
    model, payload = load_checkpoint(path, args.device)
    settings = payload["extra"].get("settings")
    dataset = (settings if isinstance(settings, dict) else {}).get("dataset", "mnist")
    if dataset not in DATASETS:
        raise CheckpointError(f"{path} names an unknown dataset {dataset!r}")
    images, labels = load_mnist(args.split, dataset, args.data_root)
    if args.limit is not None:
        images, labels = images[:args.limit], labels[:args.limit]
    # A conditional VAE is scored given the true labels: log p(x|y).
    labels = labels if is_conditional(model) else None
    terms = evaluate_elbo(model, images, seed=args.seed, labels=labels)
    log_p, elbo = (f"{args.split} log p(x{'' if labels is None else '|y'})",
                   f"{args.split} -ELBO")
    width = max(map(len, [*model.config, log_p, elbo]))
    print(f"{dataset} {args.split} set, {_plural(len(images), 'image')}; the model in "
          f"{path}:")
    for name, value in model.config.items():
        print(f"  {name:<{width}}  {_shown(value)}")
    result, text = _log_likelihood(model, images, args.k, args.seed,
                                   not args.no_progress, labels)
    print(f"  {log_p:<{width}}  {text}")
    print(f"  {elbo:<{width}}  {terms['negative_elbo']:.2f} nats (reconstruction "
          f"{terms['reconstruction']:.2f}, KL {terms['kl']:.2f})")
    if args.json is not None:
        result.update(dataset=dataset, split=args.split, images=len(images),
                      config=model.config, negative_elbo=terms["negative_elbo"],
                      epochs=len(payload["history"]))
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def main(argv=None) -> int:
    """Run one command; every expected failure ends in one line on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        set_threads(args.threads)
    except ValueError as error:  # a bad $VAE_COURSE_THREADS
        parser.error(str(error))
    try:
        return run_train(args) if args.command == "train" else run_evaluate(args)
    except UsageError as error:
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (DataNotFoundError, DataCorruptError, CheckpointError, FloatingPointError,
            ResourceError, OSError) as error:  # OSError: a full disk, a lost folder
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as error:  # only the allocator's refusals
        text = str(error).strip()
        if not (isinstance(error, MemoryError | torch.OutOfMemoryError)
                or any(phrase in text.lower() for phrase in OUT_OF_MEMORY)):
            raise
        print(f"error: out of memory ({(text.splitlines() or [''])[0]}); try a "
              "smaller --batch-size or a smaller model", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
