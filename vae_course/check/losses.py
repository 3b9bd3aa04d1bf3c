"""Checkers for training losses and evaluations: the -ELBO, conditional and β."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..elbo import elbo_terms
from ..elbo import kl_standard_normal as kl_of_posterior
from ..inputs import check_count
from ..models import IMAGE_SIZE, is_conditional
from ..train import warmup_weight
from ._fixtures import (
    decoder_inputs,
    default_model_and_images,
    kept_mode,
    kl_closed_form,
    on_model,
)
from ._report import (
    CRASHED,
    USE_RSAMPLE,
    Report,
    close,
    require_callable,
)

NO_GRAD_FN = "the loss has no grad_fn: no .item(), .detach() or torch.no_grad()."
REFERENCE_DRAWS = 2000  # draws of z per image in the precise -ELBO


def _is_scalar_tensor(report: Report, value, name: str | None = None) -> bool:
    """True for a 0-d tensor; otherwise reports why ``value`` is not one.

    ``name`` names one item of a returned pair; None stands for a loss returned alone.
    """
    its = f" as its {name}" if name else ""
    if not isinstance(value, torch.Tensor):
        return report.fail(f"returns the {name or 'loss'} as a tensor", f"it returned "
                           f"{type(value).__name__}{its}; return a scalar tensor (no "
                           ".item()) so that loss.backward() works.")
    return value.dim() == 0 or report.fail(
        f"returns one {name or 'number'} for the batch", f"it returned shape "
        f"{tuple(value.shape)}{its}; average the per-image "
        f"{'values' if name else 'negative ELBO'} over the batch with .mean().")


def _loss_value(report, fn, model, images, what, allow_float=False):
    """The learner's loss as a 0-d tensor, or None after reporting why it is not one.

    ``allow_float``: a Python number is fine too (an evaluation, not a training loss).
    """
    result = report.call(fn, model, images, what=what)
    if isinstance(result, tuple | list) and result:
        result = result[0]  # (loss, terms), like vc.elbo.negative_elbo
    if allow_float and isinstance(result, int | float) and not isinstance(result, bool):
        result = torch.tensor(float(result))
    if result is not CRASHED and _is_scalar_tensor(report, result):
        return result
    return None


def _references(model, images, labels=None):
    """Precise ELBO terms per image, the -ELBO at z = mu, and q(z|x) (given
    ``labels`` for a conditional VAE)."""
    given = () if labels is None else (labels,)
    with torch.no_grad():
        terms = elbo_terms(model, images, num_samples=REFERENCE_DRAWS, labels=labels)
        posterior = model.encode(images, *given)
        at_mean = -(model.decode(posterior.mean, *given).log_prob(images)
                    - kl_of_posterior(posterior)).mean()
    return terms, float(at_mean), posterior


def _loss_hint(mean, tolerance, terms, posterior, batch, at_mean) -> str:
    """The slip whose loss is nearest the learner's, if near enough."""
    reconstruction, kl = terms["reconstruction"], terms["kl"]
    mu, sigma = posterior.mean, posterior.stddev
    latent_dim = mu.shape[-1]
    slips = [
        (at_mean, "It is close to the loss at z = mu: decode draws of z from q(z|x), "
         "not the posterior mean."),
        (-(reconstruction / IMAGE_SIZE - kl).mean(), "Mean over pixels instead of "
         "sum: the reconstruction term is 784x too small next to the KL. Sum "
         "log p(x|z) over the 784 pixels (Independent, or reduction='sum')."),
        (-(reconstruction - IMAGE_SIZE * kl).mean(), "The KL is 784x too large next to "
         "the reconstruction, the balance a mean over pixels gives (a beta-VAE with "
         "beta = 784): sum log p(x|z) over the pixels and add the KL once per image."),
        (-(reconstruction - kl_closed_form(mu, sigma)).mean(), "You passed sigma where "
         "log sigma^2 is expected: the KL was computed with log_var = sigma. The "
         "posterior's stddev is sigma; log_var = 2 * log(sigma)."),
        (-(reconstruction - kl_closed_form(mu, sigma.log())).mean(), "You passed log "
         "sigma where log sigma^2 is expected: log_var = 2 * log(sigma), not "
         "log(sigma)."),
        (-(reconstruction / IMAGE_SIZE - kl / latent_dim).mean(), "Mean over pixels "
         "and over latent units instead of sums: both terms are too small (784x and "
         f"{latent_dim}x). Sum within an image, average over the batch."),
        (-(reconstruction - kl / latent_dim).mean(), f"The KL is {latent_dim}x too "
         "small: sum it over the latent units, do not average."),
        (-(reconstruction + kl).mean(), "Flipped KL sign: the KL enters the loss as if "
         "it were negative. The loss is -(reconstruction - KL) = -reconstruction + KL."),
        ((reconstruction - kl).mean(),
         "That is the ELBO itself: the loss to minimise is its negative."),
        (-reconstruction.mean(), "The KL term is missing."),
        (-(reconstruction - kl).sum(), f"The loss is {batch}x too large: it sums over "
         "the batch; average instead, so that it does not depend on the batch size."),
    ]
    distance, hint = min((abs(mean - float(value)), hint) for value, hint in slips)
    if distance < tolerance + 1e-4 * abs(mean):
        return hint
    expected = float(-(reconstruction - kl).mean())
    return f"expected about {expected:.2f} nats per image, got {mean:.2f}."


def _compare_with_elbo(report, fn, model, images, num_calls, what, references,
                       allow_float=False) -> bool:
    """The average of ``num_calls`` calls of a loss against the precise -ELBO.

    False when a call crashed or returned no number.
    """
    terms, at_mean, posterior = references
    mode = "train" if model.training else "eval"
    with torch.no_grad():
        values = [_loss_value(report, fn, model, images, f"runs in {mode} mode",
                              allow_float) for _ in range(num_calls)]
    if any(value is None for value in values):
        return False
    values = torch.stack(values).double()
    mean, spread = float(values.mean()), float(values.std())
    expected = float(-terms["elbo"].mean())
    if spread == 0.0 and abs(mean - at_mean) < 1e-3 * abs(mean) + 1e-3:
        report.fail(what, f"It is computed at z = mu: {mean:.2f} nats, "
                    f"{expected - mean:.2f} lower than the -ELBO ({expected:.2f}). A "
                    "test loss computed at z = mu is not an ELBO estimate (it skips "
                    "the expectation over q(z|x)); draw z with rsample in evaluation "
                    "mode too.")
    elif spread == 0.0:
        report.fail(what, "The loss is the same on every call: it does not draw z from "
                    "q(z|x). If it uses z = mu here: a test loss computed at z = mu is "
                    "not an ELBO estimate; draw z with rsample in every mode.")
    else:
        # The reference averages as many draws per image as that many calls would.
        reference_error = spread / math.sqrt(REFERENCE_DRAWS)
        tolerance = 5 * math.sqrt(spread**2 / num_calls + reference_error**2)
        if abs(mean - expected) < tolerance + 1e-4 * abs(expected):
            report.ok(f"{what} ({expected:.1f} nats per image)")
        else:
            report.fail(what, _loss_hint(mean, tolerance, terms, posterior,
                                         len(images), at_mean))
    return True


# ------------------------------------------------------------------ negative ELBO


def negative_elbo(fn: Callable, model=None, images: torch.Tensor | None = None,
                  num_calls: int = 200) -> bool:
    """Check a training loss ``fn(model, x)``: the batch mean of -ELBO, a 0-d tensor
    from a reparameterized draw, averaged over ``num_calls`` calls in training and
    in evaluation mode (on a small seeded model, or the ``model`` and ``images``).
    """
    require_callable(fn)
    return on_model(model, images, "Checking the negative ELBO, called as fn(model, x) "
                    "on {} images:",
                    lambda *args: _check_negative_elbo(fn, *args, num_calls))


def _check_negative_elbo(fn, model, images, report, num_calls, labels=None,
                         first_loss=None) -> bool:
    """The loss's gradient and its average against the -ELBO (given ``labels``);
    ``first_loss`` is the result of a call already made, if any."""
    model.train()
    loss, codes = first_loss, []
    if loss is None:
        with decoder_inputs(model) as codes:
            loss = _loss_value(report, fn, model, images, "your function runs")
    if loss is None:
        return report.finish()
    report.ok("returns one number for the batch")
    what = "carries gradients to the model"
    if not report.require(what, loss.requires_grad, NO_GRAD_FN):
        return report.finish()
    report.check(what, not codes or any(z.requires_grad for z in codes), "the gradient "
                 "does not reach the encoder: the decoder's z is a constant to "
                 "autograd, so the reconstruction term cannot train the encoder; "
                 + USE_RSAMPLE)
    references = _references(model, images, labels)
    for mode in ("train", "eval"):
        model.train(mode == "train")
        if not _compare_with_elbo(report, fn, model, images, num_calls, f"its average "
                                  f"over {num_calls} calls in {mode} mode is the -ELBO",
                                  references):
            break
    return report.finish()


def elbo_estimate(fn: Callable, model=None, images: torch.Tensor | None = None,
                  num_calls: int = 200) -> bool:
    """Check an evaluation ``fn(model, x)``: the test -ELBO in nats per image (a
    number, in evaluation mode). One computed at z = mu flatters the model.
    """
    require_callable(fn)
    return on_model(model, images, "Checking the ELBO estimate of an evaluation, "
                    "called as fn(model, x) in eval mode on {} images:",
                    lambda *args: _check_elbo_estimate(fn, *args, num_calls))


def _check_elbo_estimate(fn, model, images, report, num_calls) -> bool:
    model.eval()
    if _loss_value(report, fn, model, images, "your function runs",
                   allow_float=True) is not None:
        report.ok("returns one number for the batch")
        _compare_with_elbo(report, fn, model, images, num_calls,
                           f"its average over {num_calls} calls is the -ELBO",
                           _references(model, images), allow_float=True)
    return report.finish()


# ------------------------------------------------------- conditional negative ELBO

# Labels of the default check: no 9 among them, so a one-hot built without
# num_classes is too narrow.
CHECK_LABELS = (3, 1, 4, 1, 5, 0, 2, 6)


def _input_problem(inputs, base: int, first, one_hot, labels) -> str | None:
    """What is wrong with what a network received, or None when it is [first, one_hot].

    ``base`` is the width of the network's own input (784 pixels, or the latent
    units), ``first`` that input when known, ``one_hot`` the expected (batch, classes).
    """
    classes, width = one_hot.shape[-1], inputs.shape[-1]
    if width == base:
        return ("only its own input, no label: concatenate the one-hot of y, "
                f"torch.cat([..., F.one_hot(y, {classes}).float()], dim=-1)")
    if width == base + 1:
        return ("the label went in as one number (the class index as a float column): "
                f"a one-hot gives each of the {classes} classes a column of its own, "
                f"F.one_hot(y, {classes})")
    if width != base + classes:
        hint = (f"the label part has {width - base} columns, the model expects "
                f"{classes}.")
        if width - base == int(labels.max()) + 1:
            hint += (" F.one_hot(y) without num_classes makes max(y) + 1 columns, here "
                     f"{width - base}; write F.one_hot(y, num_classes={classes}).")
        return hint
    rows = inputs.reshape(-1, width)[:len(labels)].detach().double()
    last_ok = torch.equal(rows[:, -classes:], one_hot)
    if torch.equal(rows[:, :classes], one_hot) and not last_ok:
        return ("the one-hot comes first: the first layer was built for "
                "torch.cat([input, one_hot], dim=-1), in that order")
    if not last_ok:
        return (f"its last {classes} columns are not the one-hot of y: condition on "
                "the labels you were given, one row per image")
    if first is not None and not torch.equal(rows[:, :base], first.double()):
        return "its first columns are not the images x themselves"
    return None


def _check_inputs(report, seen, model, images, labels) -> bool:
    """Report what the encoder and the decoder received on the learner's first call."""
    one_hot = torch.nn.functional.one_hot(labels, model.num_classes).double()
    networks = (("encoder", IMAGE_SIZE, images, "the pixels x", "q(z|x,y)"),
                ("decoder", model.latent_dim, None, "the code z", "p(x|z,y)"))
    for name, base, first, what, distribution in networks:
        claim = (f"the {name} gets {what} and the one-hot of y "
                 f"({base} + {model.num_classes} inputs), for {distribution}")
        if not seen[name]:
            return report.fail(claim, f"your function never called model.{name} (or "
                               f"model.{name[:-1]})")
        problem = _input_problem(seen[name][0], base, first, one_hot, labels)
        if not report.check(claim, problem is None, f"The {name} got "
                            f"{seen[name][0].shape[-1]} inputs: {problem}"):
            return False
    return True


def conditional_negative_elbo(fn: Callable, model=None,
                              images: torch.Tensor | None = None,
                              labels: torch.Tensor | None = None,
                              num_calls: int = 200) -> bool:
    """Check a conditional VAE's loss ``fn(model, x, y)``, the batch mean of -ELBO,
    ``y`` the int64 labels: the encoder and the decoder must each receive the
    one-hot of y after their own input.
    """
    require_callable(fn)
    given = (model, images, labels)
    if any(item is None for item in given) and any(item is not None for item in given):
        raise ValueError("pass model, images and labels together, or none of them")
    if model is None:
        (model, images), labels = (default_model_and_images(num_classes=10),
                                   torch.tensor(CHECK_LABELS))
    if not is_conditional(model):
        raise TypeError("this checker needs a conditional VAE "
                        "(vc.models.build_vae(num_classes=10))")
    images, labels = images.to(model.device), labels.to(model.device)
    report = Report(f"Checking the conditional negative ELBO, called as "
                    f"fn(model, x, y) on {len(images)} labelled images:")

    def loss_of(model, x):
        return fn(model, x, labels)

    seen = {"encoder": [], "decoder": []}  # what each network received
    hooks = [getattr(model, name).register_forward_pre_hook(
        lambda _module, inputs, name=name: seen[name].append(inputs[0].detach()))
        for name in seen]
    try:
        with kept_mode(model):
            model.train()
            loss = _loss_value(report, loss_of, model, images, "your function runs")
            for hook in hooks:
                hook.remove()
            if not _check_inputs(report, seen, model, images, labels) or loss is None:
                return report.finish()
            return _check_negative_elbo(loss_of, model, images, report, num_calls,
                                        labels, first_loss=loss)
    finally:
        for hook in hooks:  # removing twice is harmless
            hook.remove()


# ------------------------------------------------------ beta-VAE loss and warm-up


def _near(value: float, target: float) -> bool:
    return abs(value - target) <= 1e-6 * max(1.0, abs(target))


def _all_near(values: dict, targets: dict) -> bool:
    return all(_near(values[key], targets[key]) for key in values)


def _weights_read(tensors: dict, reconstruction, kl) -> dict | None:
    """The weights each step's loss puts on the reconstruction and on the KL.

    Read from the gradient: for -(a * reconstruction - w * KL).mean() over a batch
    of B, the derivative is -a / B for each reconstruction term and w / B for each
    KL. None when a loss has no gradient or weighs the images unequally.
    """
    batch, weights = len(reconstruction), {}
    for step, loss in tensors.items():
        if not loss.requires_grad:
            return None
        grads = torch.autograd.grad(loss, [reconstruction, kl], allow_unused=True)
        on_rec, on_kl = [torch.zeros(batch, dtype=torch.float64) if grad is None
                         else grad.detach() * batch for grad in grads]
        if not (close(on_rec, on_rec[:1].expand(batch))
                and close(on_kl, on_kl[:1].expand(batch))):
            return None
        weights[step] = (-float(on_rec[0]), float(on_kl[0]))
    return weights


def _schedule_hint(tensors: dict, losses: dict, reconstruction, kl, beta,
                   warmup_steps) -> str:
    """What the learner's weighting or warm-up schedule most likely got wrong."""
    wanted = {t: warmup_weight(t, beta, warmup_steps) for t in losses}
    weights = _weights_read(tensors, reconstruction, kl)
    if weights is None:
        table = ", ".join(f"{t}: {losses[t]:.4f}" for t in losses)
        return (f"its loss at each step: {table}; compare it with the batch mean of "
                "-(reconstruction - w_t * KL).")
    on_rec = {t: a for t, (a, _) in weights.items()}
    used = {t: w for t, (_, w) in weights.items()}
    batch, last = len(reconstruction), max(losses)
    if _all_near(on_rec, {t: batch for t in losses}):
        return f"The loss is {batch}x too large: it sums over the batch; average it."
    if not _all_near(on_rec, {t: 1.0 for t in losses}):
        table = ", ".join(f"{t}: {on_rec[t]:.4g}" for t in losses)
        return (f"The reconstruction term is multiplied by a weight (by step: {table}). "
                "The weight belongs on the KL: -(reconstruction - w_t * KL); β prices "
                "the nats of the code, not the pixels.")
    schedules = [
        (lambda t: -wanted[t], "Flipped KL sign: the loss is -(reconstruction - w_t * "
         "KL) = -reconstruction + w_t * KL."),
        (lambda t: beta, f"No warm-up: the weight is β = {beta:g} from step 1. It "
         "should rise linearly, w_t = β min(1, t / T), from β / T at step 1 to β at "
         "step T."),
        (lambda t: 1.0,
         "The weight is 1 at every step: neither β nor the warm-up is applied."),
        (lambda t: min(1.0, t / warmup_steps), "The warm-up never reaches β: the "
         "weight rises to 1, not to β. Multiply min(1, t / T) by β."),
        (lambda t: beta * t / warmup_steps, "The weight keeps growing after step T (at "
         f"step {last} it is {used[last]:g}, not β = {beta:g}): cap it, w_t = β min(1, "
         "t / T)."),
        (lambda t: beta * min(1.0, (t - 1) / warmup_steps), "The warm-up is one step "
         "late and never reaches β by step T: it is 0 at step 1 and β only at step "
         "T + 1. Steps count from 1, so w_1 = β / T and w_T = β."),
        (lambda t: beta * min(1, t // warmup_steps), "Integer division: t // T is 0 "
         "until step T, so the weight jumps from 0 to β instead of rising. Use t / T."),
    ]
    for weight_at, hint in schedules:
        if _all_near(used, {t: weight_at(t) for t in losses}):
            return hint
    table = ", ".join(f"{t}: {used[t]:.4g} (want {wanted[t]:.4g})" for t in losses)
    hint = f"the weight your loss used at each step: {table}."
    if all(used[t] < beta - 1e-6 for t in losses if t >= warmup_steps):
        hint = ("The warm-up never reaches β: from step T on the weight must be β. "
                + hint)
    return hint


def _loss_pair(report: Report, result) -> tuple | None:
    """``result`` if it is a pair of 0-d tensors (loss, negative_elbo), else None."""
    if result is CRASHED or not report.require(
            "returns (loss, negative_elbo)",
            isinstance(result, tuple | list) and len(result) == 2,
            f"it returned {type(result).__name__}; return two numbers: the loss to "
            "train on and the -ELBO to report."):
        return None
    names = ("loss", "negative_elbo")
    if all(_is_scalar_tensor(report, value, name)
           for name, value in zip(names, result, strict=True)):
        return result
    return None


def _check_without_warmup(report: Report, fn, reconstruction, kl, beta) -> None:
    what = "with warmup_steps = 0 trains on -(reconstruction - β KL) from step 1"
    expected = float(-(reconstruction - beta * kl).mean().detach())
    try:
        losses = [float(fn(reconstruction, kl, step, beta, 0)[0].detach())
                  for step in (1, 50)]
    except ZeroDivisionError:
        report.fail(what, "it divided by warmup_steps = 0. No warm-up means the weight "
                    "is β from the first step: `... if warmup_steps else beta`, as "
                    "vc.train.fit does.")
        return
    except Exception as error:  # a learner's bug, reported rather than raised
        report.fail(what, f"it raised {type(error).__name__}: {error}")
        return
    report.check(what, all(_near(loss, expected) for loss in losses), f"expected "
                 f"{expected:.4f} at steps 1 and 50, got "
                 f"{[round(loss, 4) for loss in losses]}.")


def _reported_hint(reported: dict, losses: dict, reconstruction, kl, beta) -> str:
    """What the learner reports instead of the true -ELBO."""
    rec, kl = reconstruction.detach(), kl.detach()
    true = float(-(rec - kl).mean())

    def all_are(value):
        return all(_near(number, value) for number in reported.values())

    if _all_near(reported, losses):
        return ("It reports the β-weighted loss, which moves with the weight: two "
                "models trained with other β or warm-ups cannot be compared on it. "
                "Report -(reconstruction - KL), the -ELBO (β = 1), and train on the "
                "weighted loss.")
    if all_are(float(-(rec - beta * kl).mean())):
        return ("It reports the β-objective -(reconstruction - β KL); the number to "
                "report is the -ELBO, with weight 1.")
    if all_are(-true):
        return "That is the ELBO itself; report its negative, the -ELBO in nats."
    if all_are(true * len(rec)):
        return f"It is {len(rec)}x too large: average over the batch, do not sum."
    got = sorted({round(value, 4) for value in reported.values()})
    return f"expected {true:.4f} at every step, got {got}."


def beta_vae_loss(fn: Callable, beta: float = 4.0, warmup_steps: int = 100) -> bool:
    """Check ``fn(reconstruction, kl, step, beta, warmup_steps) -> (loss,
    negative_elbo)``: the batch means of -(reconstruction - w_t KL), w_t = β min(1,
    t / T) (β when T is 0), to train on, and of the true -ELBO, to report.
    """
    require_callable(fn)
    beta = float(beta)
    if not (math.isfinite(beta) and beta > 0 and beta != 1):
        raise ValueError(f"beta must be a positive number other than 1 (so that the "
                         f"checker can tell it from no weight); got {beta!r}")
    check_count("warmup_steps", warmup_steps, 4)
    report = Report(f"Checking the β-VAE loss, called as fn(reconstruction, kl, step, "
                    f"beta={beta:g}, warmup_steps={warmup_steps}):")
    # Per-image reconstruction terms and KLs of a batch of five, in nats.
    reconstruction = torch.tensor([-95.0, -120.5, -80.25, -101.0, -143.0],
                                  dtype=torch.float64, requires_grad=True)
    kl = torch.tensor([12.0, 25.5, 8.25, 19.0, 30.0], dtype=torch.float64,
                      requires_grad=True)
    steps = sorted({1, warmup_steps // 4, warmup_steps // 2, warmup_steps - 1,
                    warmup_steps, warmup_steps + 1, 3 * warmup_steps})
    losses, reported, tensors = {}, {}, {}
    for step in steps:
        pair = _loss_pair(report, report.call(fn, reconstruction, kl, step, beta,
                                              warmup_steps))
        if pair is None:
            return report.finish()
        tensors[step] = pair[0]
        losses[step], reported[step] = float(pair[0].detach()), float(pair[1].detach())
    report.ok("returns two scalar tensors, (loss, negative_elbo)")
    report.check("the loss carries gradients back to the terms",
                 tensors[steps[-1]].requires_grad, NO_GRAD_FN)
    wanted = {t: float(-(reconstruction - warmup_weight(t, beta, warmup_steps)
                          * kl).mean().detach()) for t in steps}
    report.check(f"trains on -(reconstruction - w_t KL), w_t = β min(1, t/T), at steps "
                 f"{steps}", _all_near(losses, wanted), lambda: _schedule_hint(
                     tensors, losses, reconstruction, kl, beta, warmup_steps))
    _check_without_warmup(report, fn, reconstruction, kl, beta)
    true = float(-(reconstruction - kl).mean().detach())
    what = "reports the true -ELBO, -(reconstruction - KL), whatever the weight"
    if all(_near(value, true) for value in reported.values()):
        report.ok(f"{what} ({true:.2f} nats per image here)")
    else:
        report.fail(what, _reported_hint(reported, losses, reconstruction, kl, beta))
    return report.finish()
