"""Train the reference models through the CLI, evaluate the epoch each chose on the
validation images, and write the table into README.md (between the ``reference``
markers).

    python benchmarks/reference.py                        # what `make reference` runs
    python benchmarks/reference.py --only best --epochs best=300
    python benchmarks/reference.py --evaluate-only        # the committed models again
    python benchmarks/reference.py --table-only           # the table from their notes
    python benchmarks/reference.py --only default --epochs default=2 --test-images 200 \\
        --k 50 --no-readme                                 # a quick look

Training runs ``python -m vae_course train`` (50,000 training images; every epoch is
scored on the 10,000 validation images and the best one is kept in ``best.pt``), and
evaluation ``python -m vae_course evaluate best.pt --split test --k 5000 --json``,
each in a subprocess, so the numbers are exactly what a user of the command line
gets. The chosen checkpoints, without their optimizer state, are copied into
``checkpoints/reference/`` with a note (``NAME.json``) of how long they trained and on
what, so that anyone can re-evaluate them (``--evaluate-only``). Each evaluation is
added to the note with the SHA-256 of the file it scored, so that the table can be
rebuilt from the committed files alone (``--table-only``) and a note that no longer
matches its checkpoint is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- reference:start -->", "<!-- reference:end -->"
COMMITTED = REPO / "checkpoints" / "reference"
# Burda et al. (2016), Table 1, MNIST, one stochastic layer, K = 5000: -log p(x).
PUBLISHED_VAE, PUBLISHED_IWAE = 86.76, 84.78


@dataclass
class Reference:
    description: str
    flags: list[str]
    epochs: int
    target: float | None = None  # the published -log p(x) this model is held to
    notes: list[str] = field(default_factory=list)


MODELS = {
    "default": Reference("the Deep Bayes tutorial's MLP 784-100-100-(2x32), latent 32",
                         [], 16),
    "best": Reference("MLP 784-500-500-(2x50), latent 50, KL warm-up 10 epochs",
                      ["--hidden-sizes", "500", "500", "--latent-dim", "50",
                       "--warmup-epochs", "10"], 150, PUBLISHED_VAE),
    "burda-size": Reference("MLP 784-200-200-(2x50), latent 50: Burda et al.'s size "
                            "(ReLU, where they used tanh)",
                            ["--hidden-sizes", "200", "200", "--latent-dim", "50"],
                            250, PUBLISHED_VAE),
    "iwae-50": Reference("IWAE trained on the k=50 bound, MLP 784-200-200-(2x50), "
                         "latent 50: Burda et al.'s size (ReLU, where they used tanh)",
                         ["--hidden-sizes", "200", "200", "--latent-dim", "50",
                          "--iwae-samples", "50"], 25, PUBLISHED_IWAE),
    "conv": Reference("the conv VAE of lesson 10 at half its width: 16 and 32 "
                      "channels, latent 32",
                      ["--architecture", "conv", "--channels", "16"], 50),
}


def machine(device: str, threads: int) -> str:
    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU, {threads} thread{'s' * (threads > 1)} ({platform.machine()})"


def run(command: list[str]) -> float:
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO)
    return time.perf_counter() - started


def shortfall(negative_log_p: float, standard_error: float,
              target: float | None) -> str:
    """How the estimate stands against the published number, in words."""
    if target is None:
        return "–"
    gap = negative_log_p - target
    verb = "short by" if gap > 0 else "beats it by"
    return (f"{target:.2f}: {verb} {abs(gap):.2f} nats "
            f"({abs(gap) / standard_error:.1f} standard errors)")


def table(rows: list[dict], k: int) -> str:
    images = {row["images"] for row in rows}
    lines = [
        f"Produced by `make reference`, torch {torch.__version__}; dynamically "
        f"binarized MNIST, trained on the 50,000 training images, the epoch chosen "
        f"on the 10,000 validation images; test set binarized once with seed 0, "
        f"{' / '.join(str(n) for n in sorted(images))} test images, importance "
        f"sampling with K={k}. ± is the standard error over the test images.",
        "",
        "| model | epochs (chosen) | training | validation −ELBO | test −ELBO "
        f"| test −log p(x), K={k} | published target |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        negative_log_p = -row["log_likelihood"]
        lines.append(
            f"| {row['name']}: {row['description']} "
            f"| {row['epochs_trained']} ({row['chosen_epoch']}) "
            f"| {row['train_seconds'] / 60:.1f} min on {row['machine']} "
            f"| {row['validation_negative_elbo']:.2f} | {row['negative_elbo']:.2f} "
            f"| {negative_log_p:.2f} ± {row['standard_error']:.2f} "
            f"| {shortfall(negative_log_p, row['standard_error'], row['target'])} |")
    lines += ["", f"Published (Burda et al. 2016, Table 1, all 10,000 test images, "
              f"K=5000): VAE with one stochastic layer {PUBLISHED_VAE}, IWAE (k=50) "
              f"{PUBLISHED_IWAE}."]
    return "\n".join(lines)


def train(name: str, reference: Reference, epochs: int, args, cli) -> Path:
    """Train one model; its chosen epoch (and a note) go to checkpoints/reference/."""
    folder = args.output / name
    seconds = run([*cli, "train", "--epochs", str(epochs), "--output", str(folder),
                   "--overwrite", "--no-progress", "--device", args.device,
                   "--threads", str(args.threads), *reference.flags])
    from vae_course.checkpoints import load_checkpoint, save_checkpoint

    model, payload = load_checkpoint(folder / "best.pt")
    args.models.mkdir(parents=True, exist_ok=True)
    chosen = args.models / f"{name}.pt"
    save_checkpoint(chosen, model, history=payload["history"], **payload["extra"])
    note = {"epochs_trained": epochs, "train_seconds": seconds,
            "machine": machine(args.device, args.threads)}
    (args.models / f"{name}.json").write_text(json.dumps(note, indent=1) + "\n")
    return chosen


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def evaluate(name: str, reference: Reference, args, cli) -> dict:
    chosen = args.models / f"{name}.pt"
    args.output.mkdir(parents=True, exist_ok=True)
    result_file = args.output / f"{name}.evaluation.json"
    limit = ["--limit", str(args.test_images)] if args.test_images else []
    run([*cli, "evaluate", str(chosen), "--split", "test", "--k", str(args.k),
         "--json", str(result_file), "--device", args.device, "--no-progress",
         "--threads", str(args.threads), *limit])
    result = json.loads(result_file.read_text())
    note_file = args.models / f"{name}.json"
    note = json.loads(note_file.read_text())
    note["evaluation"] = {**result, "checkpoint_sha256": digest(chosen)}
    note_file.write_text(json.dumps(note, indent=1) + "\n")
    return table_row(name, reference, args.models)


def table_row(name: str, reference: Reference, models: Path) -> dict:
    """A row of the table from a model's checkpoint and its note, as evaluated."""
    chosen, note_file = models / f"{name}.pt", models / f"{name}.json"
    for path in (chosen, note_file):
        if not path.is_file():
            raise SystemExit(f"no {path}; train the model first (make reference)")
    note = json.loads(note_file.read_text())
    result = note.pop("evaluation", None)
    if result is None:
        raise SystemExit(f"{note_file} holds no evaluation; run --evaluate-only")
    if result.pop("checkpoint_sha256", None) != digest(chosen):
        raise SystemExit(f"the evaluation in {note_file} is of another file than "
                         f"{chosen}; run --evaluate-only")
    from vae_course.checkpoints import load_checkpoint

    _, payload = load_checkpoint(chosen, "cpu")
    history = payload["history"].rows
    return {"name": name, "description": reference.description,
            "target": reference.target, "chosen_epoch": len(history),
            "validation_negative_elbo": history[-1]["validation_loss"], **note,
            **result}


def parse_epochs(pairs: list[str]) -> dict[str, int]:
    chosen = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in MODELS or not value.isdigit() or int(value) < 1:
            raise SystemExit(f"--epochs wants NAME=N with NAME in {', '.join(MODELS)} "
                             f"and N a positive integer; got {pair!r}")
        chosen[name] = int(value)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=tuple(MODELS), default=None,
                        help="train and evaluate only these models")
    parser.add_argument("--epochs", nargs="+", default=[], metavar="NAME=N",
                        help="epochs for a model, e.g. best=300")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="evaluate the models in checkpoints/reference/ as they are")
    parser.add_argument("--table-only", action="store_true",
                        help="the table from the evaluations in the models' notes")
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--test-images", type=int, default=None,
                        help="evaluate on the first N test images (default: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="CPU threads for training and evaluation (default: all)")
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "reference",
                        help="folder for the training runs (default: runs/reference)")
    parser.add_argument("--models", type=Path, default=COMMITTED,
                        help="folder for the chosen models and their notes "
                             "(default: checkpoints/reference, committed)")
    parser.add_argument("--no-readme", action="store_true",
                        help="print the table without writing it into README.md")
    args = parser.parse_args()
    epochs = parse_epochs(args.epochs)
    cli = [sys.executable, "-m", "vae_course"]
    rows = []
    if args.table_only and args.evaluate_only:
        raise SystemExit("--table-only and --evaluate-only exclude each other")
    for name in args.only or MODELS:
        reference = MODELS[name]
        if args.table_only:
            rows.append(table_row(name, reference, args.models))
            continue
        if not args.evaluate_only:
            train(name, reference, epochs.get(name, reference.epochs), args, cli)
        elif not (args.models / f"{name}.pt").is_file():
            raise SystemExit(f"no {args.models / name}.pt to evaluate; train it first")
        rows.append(evaluate(name, reference, args, cli))
    ks = {row["k"] for row in rows}
    if len(ks) != 1:
        raise SystemExit(f"the models were evaluated with different K ({sorted(ks)}); "
                         "evaluate them again with one --k")
    text = table(rows, ks.pop())
    print(text)
    if not args.no_readme:
        readme = REPO / "README.md"
        content = readme.read_text()
        if START not in content or END not in content:
            raise SystemExit(f"README.md lacks the markers {START} ... {END}")
        head, rest = content.split(START, 1)
        readme.write_text(f"{head}{START}\n{text}\n{END}{rest.split(END, 1)[1]}")
        print("README.md updated")


if __name__ == "__main__":
    main()
