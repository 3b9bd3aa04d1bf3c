"""How fast the course trains and evaluates, as ratios measured in one process.

Training: five loops train the same default model (784-100-100-64 / 32-100-100-784,
batch 100, Adam 1e-3, dynamic binarization of every batch), alternating epochs so
that the load of the machine hits them alike; each epoch's time is divided by its
neighbour's, in wall-clock and in CPU seconds, and the median ratio reported, with
the minor page faults of each epoch (memory the system hands out page by page):

- the Deep Bayes tutorial's loop: torchvision DataLoaders converting every image
  from PIL with ``ToTensor`` on every pass, and the course's ``negative_elbo``;
- ``vc.train.fit``, one epoch per call, timed from outside (its entry checks count);
- a hand-written loop doing the same maths with nothing around it: one tensor in
  memory sliced by ``randperm``, the loss written with
  ``binary_cross_entropy_with_logits`` and the closed-form KL;
- the same hand-written loop training a second model of its own: the control. The
  two do the same work, so their ratio shows how far apart two runs of one loop
  land in this process (its memory, the machine's load), the noise in the others;
- ``fit(compiled=True)``, the loss through ``torch.compile`` (its first epoch, which
  waits for the compiler, is run before and timed apart). It is compared in a second
  round, with ``fit`` and the hand-written loop measured again beside it, so that
  the compiler (its threads, its memory) has not run yet when the first round does.

Steps: the course's loss (what ``fit`` calls at each step) and the hand-written
loss train a model each, taking turns step by step, so that both see the same load
within milliseconds; the mean time of each loss and of each whole step is printed.
This resolves the cost of the distribution objects, a few percent of a step, which
the epochs' ratios scatter over.

Evaluation: the importance-sampled log-likelihood (K samples for each of N images)
against the rate of a 2048 x 2048 matmul measured in the same process, counting the
decoder's multiply-adds only, with one thread and with the threads ``vc.setup`` chose.

    python benchmarks/epoch_speed.py --epochs 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torchvision import datasets, transforms

import vae_course as vc


def dataloader_epoch(model, optimizer, train_loader) -> None:
    model.train()
    for images, _ in train_loader:
        batch = vc.data.binarize(images.reshape(-1, 784))  # (batch, 784)
        loss, _ = vc.elbo.negative_elbo(model, batch)
        optimizer.zero_grad(set_to_none=True)
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


def course_loss(model, batch) -> torch.Tensor:
    """The loss of fit's steps: torch.distributions objects, three terms."""
    return vc.elbo.negative_elbo_of_checked_pixels(model, batch)[0]


def handwritten_epoch(model, optimizer, images, batch_size) -> None:
    model.train()
    order = torch.randperm(len(images))
    for start in range(0, len(images), batch_size):
        batch = torch.bernoulli(images[order[start:start + batch_size]])  # (batch, 784)
        loss = handwritten_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


class FitEpochs:
    """``vc.train.fit`` one epoch per call, resuming its own history."""

    def __init__(self, model, images, batch_size, compiled=False):
        self.model, self.images, self.batch_size = model, images, batch_size
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        self.history = None
        self.compiled = compiled

    def __call__(self) -> None:
        epochs = 1 + (len(self.history) if self.history is not None else 0)
        self.history = vc.train.fit(self.model, self.images, num_epochs=epochs,
                                    batch_size=self.batch_size, progress=False,
                                    history=self.history, optimizer=self.optimizer,
                                    compiled=self.compiled)


def compare_training(epochs: int, batch_size: int, compiled: bool) -> None:
    root = vc.data.data_root()
    images, _ = vc.data.load_mnist("train")  # fetches the files if they are missing
    loader = torch.utils.data.DataLoader(
        datasets.MNIST(root, train=True, transform=transforms.ToTensor()),
        batch_size=batch_size, shuffle=True)

    def fresh():
        model = vc.models.build_vae()
        return model, torch.optim.Adam(model.parameters(), lr=1e-3)

    loader_model, loader_optimizer = fresh()
    fit_epochs = FitEpochs(vc.models.build_vae(), images, batch_size)

    def hand_loop():
        model, optimizer = fresh()
        return lambda: handwritten_epoch(model, optimizer, images, batch_size)

    hand_epoch, control_epoch = hand_loop(), hand_loop()
    fit, hand, control = ("vc.train.fit", "hand-written loop",
                          "control (hand-written, 2nd model)")
    print(f"\ntraining: {torch.get_num_threads()} thread(s), {len(images)} images, "
          f"batch {batch_size}, train seconds per epoch (wall clock)")
    wall = alternate({"DataLoader loop": lambda: dataloader_epoch(
                          loader_model, loader_optimizer, loader),
                      fit: fit_epochs, hand: hand_epoch, control: control_epoch},
                     [("DataLoader loop", fit), (fit, hand), (control, hand)], epochs)
    print_recorded_ratio(fit_epochs, wall, hand, epochs)
    if not compiled:
        return
    # The compiler leaves threads and memory behind in this process; the first round
    # ran before it, and the eager loops are measured again beside the compiled one.
    fit_compiled = FitEpochs(vc.models.build_vae(), images, batch_size, compiled=True)
    seconds, _ = timed(fit_compiled)  # builds the graphs: not one of the epochs
    print(f"\nfit(compiled=True): its first epoch, compiling, took {seconds:.1f} s; "
          "then, in the same process:")
    wall = alternate({fit: fit_epochs, hand: hand_epoch, control: control_epoch,
                      "fit, compiled": fit_compiled},
                     [(fit, hand), (control, hand), ("fit, compiled", hand),
                      ("fit, compiled", fit)], epochs)
    print_recorded_ratio(fit_epochs, wall, hand, epochs)


def print_recorded_ratio(fit_epochs: FitEpochs, wall: dict, hand: str,
                         epochs: int) -> None:
    """fit's own train seconds (its history's) against the hand-written loop's.

    Timed from outside, each one-epoch call of fit also pays its entry checks (the
    images' pixels, the arguments), which a run of many epochs pays once: this
    ratio leaves them out, as the train seconds of the history do.
    """
    recorded = fit_epochs.history.column("seconds")[-epochs:]
    ratio = statistics.median(a / b for a, b in zip(recorded, wall[hand], strict=True))
    print(f"vc.train.fit's recorded train seconds / {hand}: {ratio:.3f}x wall clock "
          f"(median of {epochs} paired epochs; entry checks left out)")


def alternate(contenders: dict, pairs: list[tuple[str, str]], epochs: int) -> dict:
    """Run one epoch of each contender in turn, ``epochs`` times; print the ratios.

    Returns each contender's wall-clock seconds, one per epoch.
    """
    wall = {name: [] for name in contenders}
    cpu = {name: [] for name in contenders}
    faults = {name: [] for name in contenders}
    for epoch in range(1, epochs + 1):
        for name, run_epoch in contenders.items():
            before = minor_page_faults()
            seconds, cpu_seconds = timed(run_epoch)
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)
            faults[name].append(minor_page_faults() - before)
        print(f"epoch {epoch}: " + ", ".join(f"{name} {seconds[-1]:.2f} s"
                                             for name, seconds in wall.items()))
    print(f"median of {epochs} epochs: " + ", ".join(
        f"{name} {statistics.median(seconds):.2f} s" for name, seconds in wall.items()))
    # Memory the system hands the process page by page, which the kernel's time pays
    # for: seconds that an instruction count of the process does not see.
    print("minor page faults per epoch (median): " + ", ".join(
        f"{name} {statistics.median(counts):.0f}" for name, counts in faults.items()))
    # Each epoch's ratio to its neighbour in time: a load that drifts over the run
    # hits both alike. CPU seconds (this process's, all threads) also leave out the
    # time other programs held the cores.
    for slower, faster in pairs:
        print(f"{slower} / {faster}: {paired_ratio(wall, slower, faster):.3f}x wall "
              f"clock, {paired_ratio(cpu, slower, faster):.3f}x CPU time "
              f"(median of {epochs} paired epochs)")
    return wall


def timed(run) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process, all its threads) of ``run()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def minor_page_faults() -> int:
    """The page faults of this process so far that needed no disk; 0 where the
    system does not count them (the ``resource`` module is Unix's)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def paired_ratio(seconds: dict[str, list[float]], numerator: str,
                 denominator: str) -> float:
    return statistics.median(a / b for a, b in zip(seconds[numerator],
                                                   seconds[denominator], strict=True))


def operator_calls(run) -> int:
    """How many ATen operators ``run()`` calls (nested calls counted too)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        run()
    return sum(1 for event in profiler.events() if event.name.startswith("aten::"))


def compare_operator_calls(batch_size: int, num_steps: int = 20) -> None:
    """Operator calls per training step: the same on every machine and load, and
    what a step's fixed overhead grows with (each call costs microseconds)."""
    images, _ = vc.data.load_mnist("train")
    images = images[:batch_size * num_steps]
    hand_model = vc.models.build_vae()
    hand_optimizer = torch.optim.Adam(hand_model.parameters(), lr=1e-3)
    handwritten_epoch(hand_model, hand_optimizer, images, batch_size)  # warm up
    fit_epochs = FitEpochs(vc.models.build_vae(), images, batch_size)
    fit_epochs()
    calls = {
        "vc.train.fit": operator_calls(fit_epochs),
        "hand-written loop": operator_calls(
            lambda: handwritten_epoch(hand_model, hand_optimizer, images, batch_size)),
    }
    per_step = {name: count / num_steps for name, count in calls.items()}
    print(f"\nATen operator calls per training step (batch {batch_size}, mean of "
          f"{num_steps} steps): " + ", ".join(
              f"{name} {count:.0f}" for name, count in per_step.items()))
    ratio = per_step["vc.train.fit"] / per_step["hand-written loop"]
    print(f"fit / hand-written loop: {ratio:.2f}x the calls")


def compare_steps(losses: dict, images: torch.Tensor, batch_size: int,
                  num_steps: int, warmup_steps: int = 50) -> dict[str, dict]:
    """Training steps of each loss in turn, one model each, the order rotating.

    Taking turns step by step, the losses see the same load within milliseconds,
    which epochs seconds long do not: this resolves a percent where the epochs'
    ratios scatter by several. Each step trains on the same fresh binarization for
    all. Prints and returns the mean microseconds of the loss (its forward pass)
    and of the whole step, and the whole step's ratio to the first loss's.
    """
    names = list(losses)
    trainers = {}
    for name in names:
        model = vc.models.build_vae()
        model.train()
        trainers[name] = (model, torch.optim.Adam(model.parameters(), lr=1e-3))
    forward = {name: 0.0 for name in names}
    whole = {name: 0.0 for name in names}
    with vc.elbo.unvalidated_distributions():  # as in fit's epochs
        for step in range(warmup_steps + num_steps):
            start = step * batch_size % (len(images) - batch_size + 1)
            batch = torch.bernoulli(images[start:start + batch_size])  # (batch, 784)
            turn = step % len(names)
            for name in names[turn:] + names[:turn]:
                model, optimizer = trainers[name]
                started = time.perf_counter()
                loss = losses[name](model, batch)
                computed = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if step >= warmup_steps:
                    forward[name] += computed - started
                    whole[name] += time.perf_counter() - started
    print(f"\ntraining steps taking turns ({num_steps} each after {warmup_steps}, "
          f"batch {batch_size}, {torch.get_num_threads()} thread(s)), mean µs:")
    results = {}
    for name in names:
        results[name] = {"forward_us": forward[name] / num_steps * 1e6,
                         "step_us": whole[name] / num_steps * 1e6,
                         "ratio": whole[name] / whole[names[0]]}
        print(f"{name}: loss {results[name]['forward_us']:.0f} µs, whole step "
              f"{results[name]['step_us']:.0f} µs, {results[name]['ratio']:.3f}x "
              f"{names[0]}'s step")
    return results


def decoder_flops(model) -> int:
    """Multiply-adds (counted as two FLOPs) of one decoded sample, MLP decoders."""
    return sum(2 * layer.in_features * layer.out_features
               for layer in model.decoder if isinstance(layer, torch.nn.Linear))


def matmul_rate(size: int = 2048, repeats: int = 5) -> tuple[float, float]:
    """FLOP/s of a size x size matmul: per wall-clock second, per CPU second."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm the kernels up
    times = [timed(lambda: a @ b) for _ in range(repeats)]
    flops = 2 * size**3
    return (flops / statistics.median(wall for wall, _ in times),
            flops / statistics.median(cpu for _, cpu in times))


def compare_log_likelihood(num_images: int, num_samples: int, repeats: int) -> None:
    """The share of the matmul rate, with one thread and with as many as chosen.

    The matmul's rate grows with every thread; the estimator's many small steps
    over each block of logits less so, which is why both counts are printed.
    """
    test_images, _ = vc.data.load_mnist("test")
    images = vc.train.fixed_binarization(test_images[:num_images], binarize=True)
    models = {
        "default 784-100-100-(2x32)": vc.models.build_vae(),
        "784-500-500-(2x50)": vc.models.build_vae(latent_dim=50,
                                                  hidden_sizes=(500, 500)),
    }
    chosen = torch.get_num_threads()
    for threads in sorted({1, chosen}):
        torch.set_num_threads(threads)
        log_likelihood_shares(models, images, num_samples, repeats)
    torch.set_num_threads(chosen)


def log_likelihood_shares(models: dict, images: torch.Tensor, num_samples: int,
                          repeats: int) -> None:
    num_images = len(images)
    print(f"\nimportance-sampled log-likelihood: K={num_samples}, {num_images} images, "
          f"{torch.get_num_threads()} thread(s); decoder FLOPs only, against a "
          "2048x2048 matmul in this process")
    for name, model in models.items():
        model.eval()
        flops = decoder_flops(model) * num_samples * num_images
        wall_ratios, cpu_ratios = [], []
        for _ in range(repeats):
            rate, cpu_rate = matmul_rate()
            seconds, cpu_seconds = timed(
                lambda model=model: vc.evaluate.importance_weighted_log_likelihood(
                    model, images, num_samples=num_samples))
            wall_ratios.append(flops / seconds / rate)
            cpu_ratios.append(flops / cpu_seconds / cpu_rate)
        print(f"{name}: {statistics.median(wall_ratios):.0%} of the matmul rate in "
              f"wall-clock time, {statistics.median(cpu_ratios):.0%} in CPU time "
              f"(median of {repeats}; matmul {rate / 1e9:.0f} GFLOP/s, "
              f"last call {seconds:.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs of each loop")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--steps", type=int, default=1000,
                        help="steps of each loss in the step-by-step comparison")
    parser.add_argument("--iwae-images", type=int, default=100)
    parser.add_argument("--iwae-k", type=int, default=1000)
    parser.add_argument("--iwae-repeats", type=int, default=5)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-compiled", action="store_true",
                        help="leave out fit(compiled=True), e.g. without a C++ compiler")
    parser.add_argument("--threads", type=int, default=None,
                        help="PyTorch threads (default: as vc.setup chooses)")
    args = parser.parse_args()
    vc.setup(seed=0, threads=args.threads)
    # The log-likelihood first: nothing compiled has run in this process yet.
    compare_log_likelihood(args.iwae_images, args.iwae_k, args.iwae_repeats)
    if not args.skip_training:
        compare_operator_calls(args.batch_size)
        train_images, _ = vc.data.load_mnist("train")
        compare_steps({"hand-written loss": handwritten_loss,
                       "the course's loss": course_loss},
                      train_images, args.batch_size, args.steps)
        compare_training(args.epochs, args.batch_size, not args.skip_compiled)


if __name__ == "__main__":
    main()
