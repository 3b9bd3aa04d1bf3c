"""``python -m vae_course``: train a VAE or evaluate a checkpoint from the shell.

    python -m vae_course train --epochs 16 --output runs/default
    python -m vae_course evaluate runs/default/checkpoint.pt --k 5000
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import torch
from torchvision.utils import save_image

from .checkpoints import (
    CheckpointError,
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
)
from .data import DATASETS, DataCorruptError, DataNotFoundError, load_mnist
from .distributions import LIKELIHOODS
from .evaluate import evaluate_elbo, importance_weighted_log_likelihood
from .models import ARCHITECTURES, build_vae
from .runtime import default_device, seed_everything, set_threads
from .train import fit

CHECKPOINT = "checkpoint.pt"


class UsageError(Exception):
    """Flags that cannot be honoured together; reported like any bad flag."""


class _Parser(argparse.ArgumentParser):
    """Bad values end in one line on stderr and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(kind, allow_zero: bool = False):
    """An argparse type: a finite number of ``kind`` above zero (or at least zero)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            message = f"{text!r} is not {'an integer' if kind is int else 'a number'}"
            raise argparse.ArgumentTypeError(message) from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero) \
                or (kind is int and value >= 2**32):
            bound = "zero or more" if allow_zero else "positive"
            bound += " and below 2**32" if kind is int else ""
            raise argparse.ArgumentTypeError(f"{text!r} must be {bound}")
        return value
    parse.__name__ = f"{'non-negative' if allow_zero else 'positive'} {kind.__name__}"
    return parse


def _device(text):
    if text == "auto":
        return default_device()
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (auto, cpu, cuda)") \
            from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("CUDA was asked for but no GPU is available")
    return device


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m vae_course",
                     description="Train a variational autoencoder on MNIST or "
                                 "Fashion-MNIST, or evaluate a saved one.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_Parser)
    train = commands.add_parser("train", help="train a model, writing pictures, "
                                "metrics and a checkpoint each epoch")
    train.add_argument("--epochs", type=_number(int), default=16,
                       help="number of passes over the training set (default: 16)")
    train.add_argument("--batch-size", type=_number(int), default=100,
                       help="images per step (default: 100)")
    train.add_argument("--latent-dim", type=_number(int), default=32,
                       help="size of the latent code z (default: 32)")
    train.add_argument("--hidden-sizes", type=_number(int), nargs="+",
                       default=[100, 100], metavar="N",
                       help="hidden layer widths of the MLP encoder; the decoder "
                            "mirrors them (default: 100 100)")
    train.add_argument("--architecture", choices=ARCHITECTURES, default="mlp",
                       help="multilayer perceptron or convolutional (default: mlp)")
    train.add_argument("--likelihood", choices=LIKELIHOODS, default="bernoulli",
                       help="pixel model; bernoulli binarizes the images afresh "
                            "every batch (default: bernoulli)")
    train.add_argument("--lr", type=_number(float), default=1e-3,
                       help="Adam learning rate (default: 0.001)")
    train.add_argument("--beta", type=_number(float, allow_zero=True), default=1.0,
                       help="weight of the KL term, 1 for the true ELBO (default: 1)")
    train.add_argument("--warmup-epochs", type=_number(float, allow_zero=True),
                       default=0,
                       help="epochs over which the KL weight rises from 0 to beta")
    _add_common(train)
    train.add_argument("--dataset", choices=tuple(DATASETS), default="mnist",
                       help="which images to learn (default: mnist)")
    train.add_argument("--output", type=Path, default=Path("runs/default"),
                       help="folder for pictures, metrics and the checkpoint "
                            "(default: runs/default)")
    action = train.add_mutually_exclusive_group()
    action.add_argument("--resume", action="store_true",
                        help="continue the run saved in --output")
    action.add_argument("--overwrite", action="store_true",
                        help="replace a run already saved in --output")
    train.add_argument("--eval-k", type=_number(int, allow_zero=True), default=0,
                       metavar="K",
                       help="after training, also estimate log p(x) with K "
                            "importance samples (default: 0, skip)")

    evaluate = commands.add_parser("evaluate", help="print the test ELBO and the "
                                   "importance-sampled log-likelihood of a checkpoint")
    evaluate.add_argument("checkpoint", type=Path,
                          help="a checkpoint.pt written by train")
    evaluate.add_argument("--k", type=_number(int), default=5000,
                          help="importance samples per image (default: 5000)")
    evaluate.add_argument("--limit", type=_number(int), default=None,
                          help="use only the first N test images (default: all)")
    evaluate.add_argument("--json", type=Path, default=None, metavar="FILE",
                          help="also write the numbers to FILE as JSON")
    _add_common(evaluate)
    return parser


def _add_common(parser):
    parser.add_argument("--seed", type=_number(int, allow_zero=True), default=0,
                        help="random seed, 0 to 2**32 - 1 (default: 0)")
    parser.add_argument("--device", type=_device, default="auto",
                        help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="torchvision data folder (default: $VAE_COURSE_DATA, "
                             "else data/ in the repository)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--threads", type=_number(int), default=None,
                        help="CPU threads for PyTorch (default: $VAE_COURSE_THREADS, "
                             "else the cores not busy with other work)")


def _write_metrics(folder: Path, history) -> None:
    with open(folder / "metrics.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(history.rows[0]))
        writer.writeheader()
        writer.writerows(history.rows)
    (folder / "metrics.json").write_text(json.dumps(history.rows, indent=1) + "\n")


def _save_pictures(folder: Path, model, test_images, epoch: int, seed: int) -> None:
    originals = test_images[:8].to(model.device)
    pairs = torch.cat([originals, model.reconstruct(originals)]).reshape(-1, 1, 28, 28)
    save_image(pairs.cpu(), folder / f"reconstruction_{epoch:03d}.png", nrow=8)
    samples = model.sample(64, generator=torch.Generator().manual_seed(seed))
    save_image(samples.reshape(-1, 1, 28, 28).cpu(), folder / f"sample_{epoch:03d}.png")


def run_train(args) -> int:
    folder, checkpoint = args.output, args.output / CHECKPOINT
    if checkpoint.exists() and not (args.resume or args.overwrite):
        raise UsageError(f"{checkpoint} already exists; pass --resume to continue "
                         "it, --overwrite to replace it, or choose another --output")
    if args.resume and not checkpoint.exists():
        raise UsageError(f"--resume given but there is no {checkpoint}")
    train_images, _ = load_mnist("train", args.dataset, args.data_root)
    test_images, _ = load_mnist("test", args.dataset, args.data_root)
    seed_everything(args.seed)
    if args.resume:
        model, payload = load_checkpoint(checkpoint, args.device)
        history, settings = payload["history"], payload["extra"]["settings"]
        optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"])
        restore_optimizer(optimizer, payload)
    else:
        model = build_vae(args.architecture, args.latent_dim, args.hidden_sizes,
                          args.likelihood).to(args.device)
        history, optimizer = None, None
        settings = {key: value for key, value in vars(args).items()
                    if key in {"batch_size", "lr", "beta", "warmup_epochs", "dataset",
                               "seed"}}
    folder.mkdir(parents=True, exist_ok=True)

    def after_epoch(model, optimizer, history):
        epoch = len(history)
        save_checkpoint(checkpoint, model, optimizer, history, settings=settings)
        _write_metrics(folder, history)
        _save_pictures(folder, model, test_images, epoch, settings["seed"])

    started = time.perf_counter()
    history = fit(model, train_images, test_images, num_epochs=args.epochs,
                  batch_size=settings["batch_size"], learning_rate=settings["lr"],
                  seed=settings["seed"], beta=settings["beta"],
                  warmup_epochs=settings["warmup_epochs"], progress=not args.no_progress,
                  callback=after_epoch, optimizer=optimizer, history=history)
    last = history.rows[-1]
    print(f"trained {args.epochs} epochs in {time.perf_counter() - started:.1f} s; "
          f"files in {folder}")
    if args.eval_k:
        _print_log_likelihood(model, test_images, args.eval_k, settings["seed"],
                              not args.no_progress)
    print(f"test -ELBO: {last['test_loss']:.2f} nats (epoch {last['epoch']})")
    return 0


def _print_log_likelihood(model, images, k, seed, progress) -> dict[str, float]:
    started = time.perf_counter()
    log_p = importance_weighted_log_likelihood(model, images, num_samples=k, seed=seed,
                                               progress=progress)
    seconds = time.perf_counter() - started
    spread = log_p.std().item() if len(log_p) > 1 else 0.0
    standard_error = spread / math.sqrt(len(log_p))
    print(f"test log p(x) (importance sampled, K={k}): {log_p.mean():.2f} nats "
          f"(standard error {standard_error:.2f}), i.e. -log p(x) = "
          f"{-log_p.mean():.2f} ({seconds:.0f} s)")
    return {"log_likelihood": log_p.mean().item(), "standard_error": standard_error,
            "k": k, "seconds": seconds}


def run_evaluate(args) -> int:
    model, payload = load_checkpoint(args.checkpoint, args.device)
    dataset = payload["extra"].get("settings", {}).get("dataset", "mnist")
    images, _ = load_mnist("test", dataset, args.data_root)
    if args.limit is not None:
        images = images[:args.limit]
    terms = evaluate_elbo(model, images, seed=args.seed)
    print(f"{dataset} test set, {len(images)} images, {model.config}")
    result = _print_log_likelihood(model, images, args.k, args.seed,
                                   not args.no_progress)
    print(f"test -ELBO: {terms['negative_elbo']:.2f} nats "
          f"(reconstruction {terms['reconstruction']:.2f}, KL {terms['kl']:.2f})")
    if args.json is not None:
        result.update(dataset=dataset, images=len(images), config=model.config,
                      negative_elbo=terms["negative_elbo"],
                      epochs=len(payload["history"]))
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def main(argv=None) -> int:
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
    except (DataNotFoundError, DataCorruptError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
