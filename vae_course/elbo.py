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

import contextlib
import math

import torch
import torch.nn.functional as F
from torch.distributions import Distribution

from .distributions import check_pixels, likelihood_from_logits
from .models import VAE, ConditionalVAE, label_arguments

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
    # One draw needs no samples axis: the same numbers, fewer operations per step.
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
    return beta_loss(terms, beta), terms


def beta_loss(terms: dict[str, torch.Tensor], beta: float) -> torch.Tensor:
    """The batch mean of -(reconstruction - beta * KL): the loss both paths train on.

    Written as beta * KL - reconstruction, and without the product when beta is 1:
    the same floats, two operations fewer in each training step.
    """
    kl = terms["kl"] if beta == 1 else beta * terms["kl"]
    return (kl - terms["reconstruction"]).mean()


@contextlib.contextmanager
def unvalidated_distributions():
    """Build ``torch.distributions`` objects without checking their arguments.

    Each check (a real ``loc``, a positive ``scale``, pixels in the support) is a
    pass over the tensor and a wait for its answer: a tenth of a small model's
    training step. Only for inputs the caller has already checked.
    """
    previous = Distribution._validate_args
    if not previous:  # already off, for instance around a whole epoch of steps
        yield
        return
    # Setting a class attribute makes Python forget what it had learnt about the
    # attributes of every distribution class: done once around many steps, not in each.
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
    terms = terms_of_checked_pixels(model, x, labels)
    return beta_loss(terms, beta), terms


def terms_of_checked_pixels(model, x: torch.Tensor,
                            labels: torch.Tensor | None = None):
    """The terms of :func:`negative_elbo_of_checked_pixels`, without the loss.

    One draw of z and the closed-form KL; no argument is checked. The trainer's
    compiled step compiles this and weights the KL outside it, with
    :func:`beta_loss`, so that a β that changes at every step of a warm-up does not
    make ``torch.compile`` build the graph again for each value.
    """
    if not Distribution._validate_args:  # off already: the trainer's epochs
        return _terms_of_checked_pixels(model, x, 1, True, labels)
    with unvalidated_distributions():
        return _terms_of_checked_pixels(model, x, 1, True, labels)


def check_num_samples(num_samples) -> int:
    """``num_samples`` if it is a positive integer (not a bool); else a ValueError."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) \
            or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer; got {num_samples!r}")
    return num_samples


def log_importance_weights(model, x: torch.Tensor, noise: torch.Tensor,
                           rows_per_call: int | None = None,
                           label_rows: torch.Tensor | None = None) -> torch.Tensor:
    """log p(x|z_i) + log p(z_i) - log q(z_i|x), z_i = mu + sigma * noise_i: (batch, k).

    ``x`` (batch, 784) holds pixels the likelihood accepts (see
    :func:`vae_course.distributions.check_pixels`); ``noise`` (batch, k, latent_dim)
    holds standard normal draws, so z is reparameterized (rsample): the weights
    carry gradients to the encoder and the decoder. ``rows_per_call`` decodes at
    most that many codes at a time, to bound memory (evaluation): codes of every
    image in each call, or, once an image has that many codes, one image's.
    A conditional VAE takes its labels as one-hot ``label_rows`` (batch, classes),
    and every distribution is given y.
    """
    log_likelihood, log_prior_ratio, _ = _log_weight_terms(model, x, noise,
                                                           rows_per_call, label_rows)
    return log_likelihood + log_prior_ratio


def _log_weight_terms(model, x, noise, rows_per_call=None, label_rows=None):
    """log p(x|z_i) and log p(z_i) - log q(z_i|x), both (batch, k), and q(z|x)."""
    given = () if label_rows is None else (label_rows,)
    # Each image's label for all of its codes: (batch, 1, classes) broadcasts.
    given_to_codes = () if label_rows is None else (label_rows[:, None],)
    posterior = model.encode(x, *given)
    loc, log_scale = posterior.base_dist.loc, posterior.base_dist.scale.log()
    z = loc[:, None] + log_scale.exp()[:, None] * noise  # (batch, k, latent_dim)
    # log p(z) - log q(z|x) for Gaussians, where z - loc = scale * noise: (batch, k)
    log_prior_ratio = 0.5 * (noise**2 - z**2).sum(-1) + log_scale.sum(-1, True)
    num_samples = noise.shape[1]
    # Evaluating an MLP with a Bernoulli likelihood, once one image's codes fill a
    # call: the sign flip of _log_likelihood goes into the decoder's last layer. A
    # logit past 88 (see there) sends the whole batch down the general path below.
    layers = None  # training never folds: its step need not look for the layers
    if rows_per_call is not None and num_samples >= rows_per_call \
            and not torch.is_grad_enabled():
        layers = _foldable_decoder(model)
    if layers is not None:
        log_likelihood = torch.stack([
            _folded_log_likelihood(model, *layers, z[i], x[i], rows_per_call,
                                   given[0][i:i + 1] if given else None)
            for i in range(len(x))])  # (batch, k)
        if bool(torch.isfinite(log_likelihood).all()):
            return log_likelihood, log_prior_ratio, posterior
    rows_per_image = num_samples if rows_per_call is None else \
        max(1, min(num_samples, rows_per_call // len(x)))
    pieces = []
    for done in range(0, num_samples, rows_per_image):
        codes = z[:, done:done + rows_per_image]  # (batch, rows, latent_dim)
        # (batch, rows, 784) logits, or twice as many outputs for two per pixel
        logits = model.decode_logits(codes, *given_to_codes)
        pieces.append(_log_likelihood(model.likelihood, logits, x))
    return torch.cat(pieces, 1), log_prior_ratio, posterior


def _foldable_decoder(model):
    """The decoder's hidden layers and its last layer, when the evaluation may fold
    the sign flip into the last one; for any other model, None.

    That needs a Bernoulli likelihood and a decoder that is a stack of layers ending
    in a ``Linear`` one, used as :class:`~vae_course.models.VAE` uses it.
    """
    decoder = getattr(model, "decoder", None)
    plain = type(model).decode_logits in (VAE.decode_logits,
                                          ConditionalVAE.decode_logits)
    if model.likelihood != "bernoulli" or not plain \
            or not isinstance(decoder, torch.nn.Sequential):
        return None
    last = decoder[-1]
    if not isinstance(last, torch.nn.Linear) or last.bias is None:
        return None
    return decoder[:-1], last


def _folded_log_likelihood(model, hidden_layers, output_layer, codes, x,
                           rows_per_call, label_row=None):
    """log p(x|z) of one image under each of its codes (k, latent_dim): (k,).

    The scoring of :func:`_log_likelihood` with the sign flip folded into the
    decoder's last layer: the image's flipped logits, s * (W h + b) with s = 1 - 2x,
    are (s W) h + s b, so one matrix product gives them and no pass over the
    (rows, 784) block is spent on the flip. Multiplying by -1 is exact, so these
    are the numbers of flipping after the product.
    """
    sign = 1 - 2 * x  # (784,): +1 for a black pixel, -1 for a white one
    weight_t = (output_layer.weight * sign[:, None]).t()  # (hidden, 784)
    bias = output_layer.bias * sign  # (784,)
    given = () if label_row is None else (label_row,)
    pieces = []
    for done in range(0, len(codes), rows_per_call):
        inputs = model.decoder_input(codes[done:done + rows_per_call], *given)
        flipped = torch.addmm(bias, hidden_layers(inputs), weight_t)  # (rows, 784)
        pieces.append(_score_flipped(flipped))  # (rows,)
    return torch.cat(pieces)


def _score_flipped(flipped):
    """-sum_j log(1 + e^f_j) over the last axis, computed in place in ``flipped``.

    With f the logits of black pixels and minus those of white ones, this is log
    p(x|z): exp, add 1 and log in place run twice as fast as softplus and keep one
    (rows, 784) block in the CPU's cache. e^f overflows for f > 88, to infinity.
    """
    return flipped.exp_().add_(1).log_().sum(-1).neg_()


def _log_likelihood(kind, logits, x):
    """log p(x|z) of each image under each of its codes' logits: (batch, rows)."""
    if kind != "bernoulli":
        with unvalidated_distributions():  # the caller has checked these pixels
            return likelihood_from_logits(logits, kind).log_prob(x[:, None])
    if logits.requires_grad:  # training: sum_j x_j l_j - softplus(l_j)
        matched = (logits @ x[:, :, None]).squeeze(-1)  # (batch, rows)
        return matched - F.softplus(logits).sum(-1)
    # Evaluation. log p(x_j | l_j) is -log(1 + e^-l_j) for a white pixel and
    # -log(1 + e^l_j) for a black one: flip the sign of the white pixels' logits and
    # score them in place. Blocks with a logit past 88 are redone with softplus.
    flipped = logits * (1 - 2 * x[:, None])  # (batch, rows, 784)
    log_likelihood = _score_flipped(flipped)  # (batch, rows)
    if bool(torch.isfinite(log_likelihood).all()):
        return log_likelihood
    return -F.softplus(logits * (1 - 2 * x[:, None])).sum(-1)


def iwae_bound(model, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    r"""One draw of the k-sample bound :math:`\mathcal{L}_k` of each image: (batch,).

    :math:`\log \frac{1}{k} \sum_i w_i` with ``num_samples`` = k reparameterized
    codes per image, computed as ``logsumexp(log w) - log k``; it carries gradients
    to the encoder and the decoder. Its mean over draws is :math:`\mathcal{L}_k`.
    """
    check_num_samples(num_samples)
    check_pixels(x, model.likelihood)
    return _iwae_terms_of_checked_pixels(model, x, num_samples)["bound"]


def _iwae_terms_of_checked_pixels(model, x, num_samples):
    noise = torch.randn(len(x), num_samples, model.latent_dim, device=x.device,
                        dtype=x.dtype)  # (batch, k, latent_dim)
    log_likelihood, log_prior_ratio, posterior = _log_weight_terms(model, x, noise)
    log_weights = log_likelihood + log_prior_ratio  # (batch, k)
    bound = torch.logsumexp(log_weights, 1) - math.log(num_samples)  # (batch,)
    # The ELBO's terms from the same k draws, for reporting: the k-sample average
    # of log p(x|z) and the closed-form entropy and cross-entropy.
    reconstruction = log_likelihood.mean(1)  # (batch,)
    entropy = entropy_normal(posterior)
    cross_entropy = cross_entropy_standard_normal(posterior)
    kl = cross_entropy - entropy
    return {"reconstruction": reconstruction, "entropy": entropy,
            "cross_entropy": cross_entropy, "kl": kl, "elbo": reconstruction - kl,
            "bound": bound}


def negative_iwae_bound_of_checked_pixels(model, x: torch.Tensor, num_samples: int):
    """The trainer's IWAE loss, the batch mean of -L_k, and the per-image terms.

    For pixels already checked, like :func:`negative_elbo_of_checked_pixels`; the
    terms hold the ELBO's (estimated from the same k draws) and ``bound``.
    """
    with unvalidated_distributions():
        terms = _iwae_terms_of_checked_pixels(model, x, num_samples)
    return -terms["bound"].mean(), terms


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
