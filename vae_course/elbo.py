r"""The evidence lower bound, as three terms per image, and the k-sample bound.

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
Importance weighting (Burda, Grosse and Salakhutdinov, 2016) tightens the bound
with k codes drawn from q(z|x):

.. math::
    \mathcal{L}_k(x) = E\Big[\log \frac{1}{k} \sum_{i=1}^{k} w_i\Big],
    \qquad w_i = \frac{p(x \mid z_i)\, p(z_i)}{q(z_i \mid x)},

with :math:`\mathcal{L}_1 = \mathrm{ELBO} \le \mathcal{L}_k \le \log p(x)`.
:func:`log_importance_weights` computes the :math:`\log w_i`; trained on,
:func:`iwae_bound` makes a VAE an IWAE, and evaluated with thousands of samples it
is the log-likelihood estimate of :mod:`vae_course.evaluate`.
"""

from __future__ import annotations

import math

import torch

from .inputs import check_count, check_images
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


def check_batch(model, x: torch.Tensor) -> None:
    """Refuse a batch the model cannot score: shape, type, empty, pixel values."""
    check_images(x, "images", next(model.parameters()).dtype, model.likelihood)


def elbo_terms(model, x: torch.Tensor, num_samples: int = 1,
               closed_form: bool = True, labels: torch.Tensor | None = None,
               check: bool = True) -> dict[str, torch.Tensor]:
    """The ELBO's terms for each image of ``x`` (batch, 784), in nats.

    ``closed_form`` uses the exact entropy and cross-entropy of the Gaussians;
    otherwise both are Monte Carlo averages over the same ``num_samples`` draws
    of z that estimate the reconstruction term. A conditional VAE needs the
    ``labels`` of the images (int64 (batch,), or one-hot rows). ``check=False``
    skips the checks of ``x``, for a trainer that checked its data once.
    """
    if check:
        check_count("num_samples", num_samples)
        check_batch(model, x)
    given = label_arguments(model, labels)  # (labels,) or ()
    posterior = model.encode(x, *given)
    # One draw needs no samples axis: the same numbers, as lesson 04 writes them.
    sample_shape = (num_samples,) if num_samples > 1 else ()
    z = posterior.rsample(sample_shape)  # ([samples,] batch, latent_dim)

    def average(values):  # the Monte Carlo average over the draws: (batch,)
        return values.mean(0) if num_samples > 1 else values

    reconstruction = average(model.decode(z, *given).log_prob(x))  # (batch,)
    if closed_form:
        entropy = entropy_normal(posterior)
        cross_entropy = cross_entropy_standard_normal(posterior)
    else:
        entropy = -average(posterior.log_prob(z))
        cross_entropy = -average(model.prior().log_prob(z))
    return _terms(reconstruction, entropy, cross_entropy)


def _terms(reconstruction, entropy, cross_entropy) -> dict[str, torch.Tensor]:
    """The three terms, with KL = cross-entropy - entropy and the ELBO they make."""
    kl = cross_entropy - entropy
    return {"reconstruction": reconstruction, "entropy": entropy,
            "cross_entropy": cross_entropy, "kl": kl, "elbo": reconstruction - kl}


def beta_loss(terms: dict[str, torch.Tensor], beta: float) -> torch.Tensor:
    """The batch mean of -(reconstruction - beta * KL): beta = 1 gives the -ELBO."""
    return -(terms["reconstruction"] - beta * terms["kl"]).mean()


def negative_elbo(model, x: torch.Tensor, beta: float = 1.0, num_samples: int = 1,
                  labels: torch.Tensor | None = None):
    """Training loss: the batch mean of -(reconstruction - beta * KL).

    With ``beta = 1`` this is the negative ELBO; other values give a beta-VAE.
    Returns the scalar loss and the per-image terms.
    """
    terms = elbo_terms(model, x, num_samples=num_samples, labels=labels)
    return beta_loss(terms, beta), terms


def log_importance_weights(model, x: torch.Tensor, noise: torch.Tensor,
                           labels: torch.Tensor | None = None) -> torch.Tensor:
    """log p(x|z_i) + log p(z_i) - log q(z_i|x), z_i = mu + sigma * noise_i: (batch, k).

    ``x`` (batch, 784) holds pixels the likelihood accepts; ``noise``
    (batch, k, latent_dim) holds standard normal draws, so z is reparameterized
    (rsample): the weights carry gradients to the encoder and the decoder. A
    conditional VAE takes the ``labels`` of the images, and every distribution is
    given y.
    """
    posterior, log_likelihood, log_prior_ratio = _weight_terms(model, x, noise, labels)
    return (log_likelihood + log_prior_ratio).T


def _weight_terms(model, x, noise, labels=None):
    """q(z|x), then log p(x|z_i) and log p(z_i) - log q(z_i|x), each (k, batch)."""
    given = label_arguments(model, labels)
    posterior = model.encode(x, *given)
    # The k draws first, so that every distribution broadcasts over them.
    z = posterior.mean + posterior.stddev * noise.transpose(0, 1)  # (k, batch, latent)
    log_likelihood = model.decode(z, *given).log_prob(x)
    return posterior, log_likelihood, model.prior().log_prob(z) - posterior.log_prob(z)


def iwae_terms(model, x: torch.Tensor, num_samples: int,
               check: bool = True) -> dict[str, torch.Tensor]:
    """One draw of the k-sample bound of each image, ``bound``, with the ELBO's terms.

    The terms hold the k draws' average of log p(x|z) as ``reconstruction`` and the
    closed-form entropy and cross-entropy, for reporting; each is (batch,).
    """
    if check:
        check_count("num_samples", num_samples)
        check_batch(model, x)
    noise = torch.randn(len(x), num_samples, model.latent_dim, device=x.device,
                        dtype=x.dtype)  # (batch, k, latent_dim)
    posterior, log_likelihood, log_prior_ratio = _weight_terms(model, x, noise)
    log_weights = log_likelihood + log_prior_ratio  # (k, batch)
    terms = _terms(log_likelihood.mean(0), entropy_normal(posterior),
                   cross_entropy_standard_normal(posterior))
    terms["bound"] = torch.logsumexp(log_weights, 0) - math.log(num_samples)
    return terms


def iwae_bound(model, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    r"""One draw of the k-sample bound :math:`\mathcal{L}_k` of each image: (batch,).

    :math:`\log \frac{1}{k} \sum_i w_i` with ``num_samples`` = k reparameterized
    codes per image, computed as ``logsumexp(log w) - log k``; it carries gradients
    to the encoder and the decoder. Its mean over draws is :math:`\mathcal{L}_k`.
    """
    return iwae_terms(model, x, num_samples)["bound"]


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
