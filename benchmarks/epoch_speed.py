"""How fast the course trains and evaluates, as ratios measured in one process.

Training: the same default model (784-100-100-64 / 32-100-100-784, batch 100, Adam
1e-3, a fresh binarization of every batch) is trained by several loops, one epoch
of each in turn, so that the machine's load hits them alike; each epoch's time is
divided by its neighbour's and the median ratio is reported, in wall-clock and in
CPU seconds:

- the Deep Bayes tutorial's loop: torchvision DataLoaders converting every image
  from PIL with ``ToTensor`` on every pass, and the course's ``negative_elbo``;
- ``vc.train.fit``, one epoch per call;
- a hand-written loop doing the same maths with nothing around it: one tensor in
  memory sliced by ``randperm``, the loss written with
  ``binary_cross_entropy_with_logits`` and the closed-form KL;
- the same hand-written loop training a second model of its own: the control,
  whose ratio to the first shows how far two runs of one loop land (the noise);
- ``fit(compiled=True)``, in a second round after the first has run (its first
  epoch, which waits for the compiler, is timed apart).

Evaluation: the importance-sampled log-likelihood (K samples for each of N images)
against the rate of a 2048 x 2048 matmul in the same process, counting the
decoder's multiply-adds only, with one thread and with the threads ``vc.setup``
chose; and against the plain computation it replaces (``vc.elbo``'s log-weights).

    python benchmarks/epoch_speed.py --epochs 5

The results go into benchmarks/README.md, between this script's markers.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from results import Results

import vae_course as vc

results = Results("epoch_speed")
say = results.say


def dataloader_epoch(model, optimizer, train_loader) -> None:
    model.train()
    for images, _ in train_loader:
        batch = vc.data.binarize(images.reshape(-1, 784))  # (batch, 784)
        loss, _ = vc.elbo.negative_elbo(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def handwritten_loss(model, batch) -> torch.Tensor:
    """The negative ELBO with no distribution objects: the closed-form KL."""
    loc, log_scale = model.encoder(batch).chunk(2, dim=-1)  # (batch, latent) each
    z = loc + log_scale.exp() * torch.randn_like(loc)
    logits = model.decoder(z)  # (batch, 784)
    reconstruction = -F.binary_cross_entropy_with_logits(
        logits, batch, reduction="none").sum(-1)
    kl = 0.5 * (loc**2 + (2 * log_scale).exp() - 1 - 2 * log_scale).sum(-1)
    return (kl - reconstruction).mean()


def handwritten_epoch(model, optimizer, images, batch_size) -> None:
    model.train()
    order = torch.randperm(len(images))
    for start in range(0, len(images), batch_size):
        batch = torch.bernoulli(images[order[start:start + batch_size]])  # (batch, 784)
        loss = handwritten_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


class FitEpochs:
    """``vc.train.fit`` one epoch per call, resuming its own history."""

    def __init__(self, images, batch_size, compiled=False):
        self.model = vc.models.build_vae()
        self.images, self.batch_size, self.compiled = images, batch_size, compiled
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.history = None

    def __call__(self) -> None:
        epochs = 1 + (len(self.history) if self.history is not None else 0)
        self.history = vc.train.fit(self.model, self.images, num_epochs=epochs,
                                    batch_size=self.batch_size, progress=False,
                                    history=self.history, optimizer=self.optimizer,
                                    compiled=self.compiled)


def timed(run) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process, all its threads) of ``run()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def alternate(contenders: dict, pairs: list[tuple[str, str]], epochs: int) -> None:
    """One epoch of each contender in turn, ``epochs`` times; print the ratios."""
    wall = {name: [] for name in contenders}
    cpu = {name: [] for name in contenders}
    for _ in range(epochs):
        for name, run_epoch in contenders.items():
            seconds, cpu_seconds = timed(run_epoch)
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)
    say(f"seconds per epoch, each loop's median of {epochs}: " + ", ".join(
        f"{name} {statistics.median(seconds):.2f}" for name, seconds in wall.items()))
    say("ratios, the median of each epoch's against its neighbour's (what to read, "
        "since the load moves the seconds):")

    def ratio(seconds, slower, faster):  # each epoch against its neighbour's
        return statistics.median(a / b for a, b in zip(seconds[slower],
                                                       seconds[faster], strict=True))

    for slower, faster in pairs:
        say(f"  {slower} / {faster}: {ratio(wall, slower, faster):.3f}x wall clock, "
            f"{ratio(cpu, slower, faster):.3f}x CPU time")


def compare_training(epochs: int, batch_size: int, compiled: bool) -> None:
    from torchvision import datasets, transforms

    images, _ = vc.data.load_mnist("train")  # fetches the files if they are missing
    loader = torch.utils.data.DataLoader(
        datasets.MNIST(vc.data.data_root(), train=True,
                       transform=transforms.ToTensor()),
        batch_size=batch_size, shuffle=True)

    def hand_loop():
        model = vc.models.build_vae()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        return lambda: handwritten_epoch(model, optimizer, images, batch_size)

    loader_model = vc.models.build_vae()
    loader_optimizer = torch.optim.Adam(loader_model.parameters(), lr=1e-3)
    fit_epochs, hand_epoch, control_epoch = FitEpochs(images, batch_size), \
        hand_loop(), hand_loop()
    fit, hand, control = "fit", "hand-written", "control"
    say(f"\ntraining, {len(images)} images, batch {batch_size} (control: the "
        "hand-written loop again, training a second model)")
    alternate({"DataLoader": lambda: dataloader_epoch(loader_model, loader_optimizer,
                                                      loader),
               fit: fit_epochs, hand: hand_epoch, control: control_epoch},
              [("DataLoader", fit), (fit, hand), (control, hand)], epochs)
    if not compiled:
        return
    fit_compiled = FitEpochs(images, batch_size, compiled=True)
    seconds, _ = timed(fit_compiled)  # builds the graphs: not one of the epochs
    say(f"\nfit(compiled=True): first epoch, compiling, {seconds:.1f} s; then:")
    alternate({fit: fit_epochs, hand: hand_epoch, control: control_epoch,
               "compiled": fit_compiled},
              [(fit, hand), (control, hand), ("compiled", hand)], epochs)


def matmul_rate(size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a size x size matmul, per wall-clock second."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm the kernels up
    return 2 * size**3 / statistics.median(timed(lambda: a @ b)[0]
                                           for _ in range(repeats))


def plain_log_likelihood(model, images, num_samples, rows=4096) -> torch.Tensor:
    """The estimate computed plainly, with ``vc.elbo.log_importance_weights``."""
    estimates = []
    per_call = max(1, rows // num_samples)  # images whose codes fill one call
    with torch.no_grad():
        for start in range(0, len(images), per_call):
            x = images[start:start + per_call]
            noise = torch.stack([torch.randn(
                num_samples, model.latent_dim,
                generator=vc.evaluate.image_generator(0, start + i))
                for i in range(len(x))])  # (images, K, latent_dim)
            log_w = vc.elbo.log_importance_weights(model, x, noise)  # (images, K)
            estimates.append(torch.logsumexp(log_w, 1) - math.log(num_samples))
    return torch.cat(estimates)


def compare_log_likelihood(num_images: int, num_samples: int, repeats: int) -> None:
    test_images, _ = vc.data.load_mnist("test")
    images = vc.train.fixed_binarization(test_images[:num_images], binarize=True)
    models = {"default 784-100-100-(2x32)": vc.models.build_vae(),
              "784-500-500-(2x50)": vc.models.build_vae(latent_dim=50,
                                                        hidden_sizes=(500, 500))}
    chosen = torch.get_num_threads()
    for threads in sorted({1, chosen}):
        torch.set_num_threads(threads)
        say(f"\nimportance-sampled log-likelihood, K={num_samples}, {num_images} "
            f"test images, {threads} thread(s): decoder FLOP/s as a share of a "
            "2048x2048 matmul's, and the plain computation's time / the course's")
        for name, model in models.items():
            model.eval()
            flops = sum(2 * layer.weight.numel() for layer in model.decoder
                        if isinstance(layer, torch.nn.Linear)) * num_samples * num_images
            shares, speedups = [], []
            for _ in range(repeats):
                rate = matmul_rate()
                seconds, _ = timed(lambda m=model: vc.evaluate.
                                   importance_weighted_log_likelihood(
                                       m, images, num_samples=num_samples))
                plain, _ = timed(lambda m=model: plain_log_likelihood(m, images,
                                                                      num_samples))
                shares.append(flops / seconds / rate)
                speedups.append(plain / seconds)
            say(f"  {name}: {statistics.median(shares):.0%} of the matmul rate, "
                f"{statistics.median(speedups):.2f}x faster than plain (median of "
                f"{repeats}; the course's last call {seconds:.2f} s)")
    torch.set_num_threads(chosen)


def check_plain_agrees(num_samples: int = 600) -> None:
    """The fast estimate and the plain one give the same numbers (to rounding)."""
    images, _ = vc.data.load_mnist("test")
    x = vc.train.fixed_binarization(images[:8], binarize=True)
    model = vc.models.build_vae().eval()
    fast = vc.evaluate.importance_weighted_log_likelihood(model, x,
                                                          num_samples=num_samples)
    difference = (fast - plain_log_likelihood(model, x, num_samples)).abs().max()
    say(f"largest difference, course's estimate - plain, K={num_samples}: "
        f"{difference:.2g} nats")


def compare_imports(repeats: int = 5) -> None:
    """Seconds to ``import torch`` and to ``import vae_course``, in fresh processes."""
    seconds = {"torch": [], "vae_course": []}
    for _ in range(repeats):
        for module in seconds:
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
            seconds[module].append(time.perf_counter() - started)
    torch_s, course_s = (statistics.median(seconds[m]) for m in seconds)
    say(f"import, median of {repeats} fresh processes: torch {torch_s:.2f} s, "
        f"vae_course {course_s:.2f} s ({course_s - torch_s:+.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs of each loop")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--ll-images", type=int, default=100)
    parser.add_argument("--ll-k", type=int, default=1000)
    parser.add_argument("--ll-repeats", type=int, default=3)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-compiled", action="store_true",
                        help="leave out fit(compiled=True), e.g. without a C++ compiler")
    parser.add_argument("--threads", type=int, default=vc.runtime.usable_cores(),
                        help="PyTorch threads (default: one per usable core)")
    parser.add_argument("--no-write", action="store_true",
                        help="print only; leave benchmarks/README.md as it is")
    args = parser.parse_args()
    vc.setup(seed=0, threads=args.threads, verbose=False)
    check_plain_agrees()
    compare_imports()
    # The log-likelihood first: nothing compiled has run in this process yet.
    compare_log_likelihood(args.ll_images, args.ll_k, args.ll_repeats)
    if not args.skip_training:
        compare_training(args.epochs, args.batch_size, not args.skip_compiled)
    if not args.no_write:
        results.write()


if __name__ == "__main__":
    main()
