r"""The evidence lower bound, as three terms per image.

.. math::
    \mathrm{ELBO}(x) = \underbrace{E_q[\log p(x|z)]}_{\text{reconstruction}}
        + \underbrace{H[q]}_{\text{entropy}}
        - \underbrace{H[q, p]}_{\text{cross-entropy}},
    \qquad H[q, p] - H[q] = \mathrm{KL}(q \,\|\, p).

Every term is summed over its dimensions (pixels or latent units), so each is a
number of nats per image; the training loss averages the negative ELBO over the
batch, which keeps it independent of the batch size.

A conditional VAE's ELBO is the same with every distribution given the label,
q(z|x,y) and p(x|z,y), and bounds log p(x|y): pass ``labels`` to each function.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch.distributions import Distribution

from .distributions import check_pixels
from .models import label_arguments

LOG_2PI = math.log(2 * math.pi)


def cross_entropy_standard_normal(posterior) -> torch.Tensor:
    """H[q, N(0, I)] = 1/2 sum(mu^2 + sigma^2 + log 2pi), per example: (batch,)."""
    normal = posterior.base_dist
    return 0.5 * (normal.loc**2 + normal.scale**2 + LOG_2PI).sum(-1)


def entropy_normal(posterior) -> torch.Tensor:
    """H[q] = 1/2 sum(1 + log 2pi) + sum(log sigma), per example: (batch,)."""
    normal = posterior.base_dist
    return (0.5 * (1 + LOG_2PI) + normal.scale.log()).sum(-1)


def kl_standard_normal(posterior) -> torch.Tensor:
    """KL(q || N(0, I)) = 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2): (batch,)."""
    normal = posterior.base_dist
    log_var = 2 * normal.scale.log()
    return 0.5 * (normal.loc**2 + log_var.exp() - 1 - log_var).sum(-1)


def elbo_terms(model, x: torch.Tensor, num_samples: int = 1,
               closed_form: bool = True,
               labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The ELBO's terms for each image of ``x`` (batch, 784), in nats.

    ``closed_form`` uses the exact entropy and cross-entropy of the Gaussians;
    otherwise both are Monte Carlo averages over the same ``num_samples`` draws
    of z that estimate the reconstruction term. A conditional VAE needs the
    ``labels`` of the images (int64 (batch,), or one-hot rows).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1; got {num_samples}")
    check_pixels(x, model.likelihood)
    return _terms_of_checked_pixels(model, x, num_samples, closed_form, labels)


def _terms_of_checked_pixels(model, x, num_samples, closed_form, labels=None):
    given = label_arguments(model, labels)  # (labels,) or ()
    posterior = model.encode(x, *given)
    z = posterior.rsample((num_samples,))  # (samples, batch, latent_dim)
    reconstruction = model.decode(z, *given).log_prob(x).mean(0)  # (batch,)
    if closed_form:
        entropy = entropy_normal(posterior)
        cross_entropy = cross_entropy_standard_normal(posterior)
    else:
        entropy = -posterior.log_prob(z).mean(0)
        cross_entropy = -model.prior().log_prob(z).mean(0)
    kl = cross_entropy - entropy
    return {"reconstruction": reconstruction, "entropy": entropy,
            "cross_entropy": cross_entropy, "kl": kl, "elbo": reconstruction - kl}


def negative_elbo(model, x: torch.Tensor, beta: float = 1.0, num_samples: int = 1,
                  labels: torch.Tensor | None = None):
    """Training loss: the batch mean of -(reconstruction - beta * KL).

    With ``beta = 1`` this is the negative ELBO; other values give a beta-VAE.
    Returns the scalar loss and the per-image terms.
    """
    terms = elbo_terms(model, x, num_samples=num_samples, labels=labels)
    return _beta_loss(terms, beta), terms


def _beta_loss(terms: dict[str, torch.Tensor], beta: float) -> torch.Tensor:
    """The batch mean of -(reconstruction - beta * KL): the loss both paths train on."""
    return -(terms["reconstruction"] - beta * terms["kl"]).mean()


@contextlib.contextmanager
def unvalidated_distributions():
    """Build ``torch.distributions`` objects without checking their arguments.

    Each check (a real ``loc``, a positive ``scale``, pixels in the support) is a
    pass over the tensor and a wait for its answer: a tenth of a small model's
    training step. Only for inputs the caller has already checked.
    """
    previous = Distribution._validate_args
    Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(previous)


def negative_elbo_of_checked_pixels(model, x: torch.Tensor, beta: float = 1.0,
                                    labels: torch.Tensor | None = None):
    """:func:`negative_elbo` for pixels already known to suit the likelihood.

    The trainer's hot loop: it binarized ``x`` itself, or checked the whole data set
    once before the first step, so neither the pixels nor the distributions'
    arguments are checked again. The maths is that of :func:`negative_elbo`; a
    diverged step shows as a non-finite loss instead of an error here.
    """
    with unvalidated_distributions():
        terms = _terms_of_checked_pixels(model, x, 1, True, labels)
    return _beta_loss(terms, beta), terms


@torch.no_grad()
def mean_terms(model, images: torch.Tensor, batch_size: int = 1000,
               labels: torch.Tensor | None = None) -> dict[str, float]:
    """Each term averaged over a whole set of images, in nats per image."""
    totals: dict[str, float] = {}
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(model.device)
        given = None if labels is None else labels[start:start + batch_size].to(
            model.device)
        for name, values in elbo_terms(model, batch, labels=given).items():
            totals[name] = totals.get(name, 0.0) + values.sum().item()
    return {name: total / len(images) for name, total in totals.items()}
