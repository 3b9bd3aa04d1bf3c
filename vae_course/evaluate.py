r"""Numbers to report: the test ELBO and an importance-sampled log-likelihood.

The ELBO is only a lower bound on :math:`\log p(x)`. Averaging the importance
weights of K codes drawn from q(z|x) gives a tighter one (Burda et al., 2016),

.. math::
    \log p(x) \approx \log \frac{1}{K} \sum_{k=1}^{K}
        \frac{p(x \mid z_k)\, p(z_k)}{q(z_k \mid x)}, \qquad z_k \sim q(z \mid x),

which tends to :math:`\log p(x)` as K grows: the bound an IWAE trains on
(:func:`vae_course.elbo.iwae_bound`), and :math:`\log p(x \mid y)` for a conditional
VAE given the ``labels``. Each image draws its codes from a stream of its own, so
its estimate does not depend on the other images, their order or the chunking.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .distributions import likelihood_from_logits, unchecked_arguments
from .elbo import mean_terms
from .inputs import IMAGE_SIZE, check_count, check_images, check_number, check_pixels
from .models import VAE, ConditionalVAE, checked_one_hot
from .runtime import map_in_threads
from .train import fixed_binarization, wants_binarization


def _prepared(model, images, binarize, seed):
    seed = check_number("seed", seed, integer=True, allow_zero=True)
    check_images(images, dtype=next(model.parameters()).dtype)
    return fixed_binarization(images, wants_binarization(model, binarize), seed)


@torch.no_grad()
def evaluate_elbo(model, images: torch.Tensor, binarize: bool | None = None,
                  seed: int = 0, batch_size: int = 1000,
                  labels: torch.Tensor | None = None) -> dict[str, float]:
    """Mean ELBO terms over ``images`` in nats per image, plus ``negative_elbo``.

    Binarizes (by default, for a Bernoulli likelihood) with the seeded draw that
    :func:`vae_course.train.fit` uses; a conditional VAE needs the ``labels``."""
    batch_size = check_number("batch_size", batch_size, integer=True)
    images = _prepared(model, images, binarize, seed)
    rows = checked_one_hot(model, labels, images, "labels")  # one-hot rows, or None
    model.eval()
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda"
                               else []):
        torch.manual_seed(seed)
        terms = mean_terms(model, images, batch_size, labels=rows)
    terms["negative_elbo"] = -terms["elbo"]
    return terms


def bits_per_dim(nats, num_dims: int = IMAGE_SIZE):
    r"""Nats per image (a number or a tensor) as :math:`\frac{-\log p(x)}{D \ln 2}` bits
    per dimension, D = ``num_dims``: a code length only for discrete data (lesson 08)."""
    check_count("num_dims", num_dims)
    return nats / (num_dims * math.log(2))


# Codes decoded per call: enough rows for the matmuls to run at speed, few enough
# that the (rows, 784) logits stay in the CPU's cache for the passes that follow.
ROWS_PER_CALL = 512
# Codes of a group of images encoded together: small steps run once for the group.
CODES_PER_GROUP = 4096


def image_generator(seed: int, index: int) -> torch.Generator:
    """The random stream of the image at ``index`` in its data set, under ``seed``."""
    # SeedSequence mixes the pair, so nearby (seed, index) pairs give unrelated streams.
    high, low = np.random.SeedSequence([seed, index]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(high) << 32 | int(low))


@torch.no_grad()
def importance_weighted_log_likelihood(model, images: torch.Tensor,
                                       num_samples: int = 5000,
                                       binarize: bool | None = None, seed: int = 0,
                                       max_pixels: int = 2**24,
                                       progress: bool = False,
                                       first_index: int = 0,
                                       labels: torch.Tensor | None = None
                                       ) -> torch.Tensor:
    """Estimate log p(x) for each image with ``num_samples`` importance samples.

    Image ``i`` draws its codes from :func:`image_generator` for ``first_index + i``,
    its place in the data set, so a slice evaluated with its offset gets the numbers
    of the whole (binarize the whole set first: grey images get one seeded draw over
    ``images``). Each call decodes at most ``max_pixels`` pixels; on the CPU groups of
    images run side by side on PyTorch's threads. Neither changes the result. Returns
    (N,) nats on the CPU; a conditional VAE needs the ``labels``, for log p(x|y).
    """
    check_count("num_samples", num_samples)
    check_count("seed", seed, minimum=0)
    check_count("first_index", first_index, minimum=0)
    check_count("max_pixels", max_pixels, minimum=IMAGE_SIZE)
    images = _prepared(model, images, binarize, seed)
    check_pixels(images, model.likelihood)
    rows = checked_one_hot(model, labels, images, "labels")  # one-hot rows, or None
    model.eval()
    max_rows = max_pixels // IMAGE_SIZE
    rows_per_call = min(max_rows, ROWS_PER_CALL)
    # Whole images per group, as many as CODES_PER_GROUP codes hold (at least one);
    # their codes are decoded rows_per_call at a time, and never more than max_rows.
    images_per_group = max(1, min(max_rows, CODES_PER_GROUP) // num_samples)
    starts = range(0, len(images), images_per_group)

    def estimate(start):  # log p(x) of one group's images: (group,)
        x = images[start:start + images_per_group]  # (group, 784)
        indices = range(first_index + start, first_index + start + len(x))
        group_rows = None if rows is None else rows[start:start + images_per_group]
        log_weights = _log_weights(model, x, indices, num_samples, seed,
                                   rows_per_call, group_rows)  # (group, num_samples)
        return torch.logsumexp(log_weights, 1).cpu() - math.log(num_samples)

    # Groups side by side, each thread decoding at most rows_per_call codes at a time,
    # so together never more than max_rows.
    threads = 1 if model.device.type != "cpu" else \
        min(torch.get_num_threads(), max(1, max_rows // rows_per_call))
    estimates = map_in_threads(estimate, starts, threads)
    if progress:
        from tqdm.auto import tqdm
        estimates = tqdm(estimates, total=len(starts), unit="group",
                         desc=f"log p(x), K={num_samples}")
    with unchecked_arguments():  # the images were checked above
        return torch.cat(list(estimates))


def _log_weights(model, x, indices, num_samples, seed, rows_per_call, label_rows=None):
    """log p(x|z) + log p(z) - log q(z|x) for each image's K codes: (group, K), as
    :func:`vae_course.elbo.log_importance_weights` but faster; y from ``label_rows``."""
    device = model.device
    x = x.to(device)
    noise = torch.stack([
        torch.randn(num_samples, model.latent_dim, generator=image_generator(seed, i))
        for i in indices]).to(device)  # (group, K, latent_dim)
    given = () if label_rows is None else (label_rows,)
    posterior = model.encode(x, *given)
    loc, log_scale = posterior.base_dist.loc, posterior.base_dist.scale.log()
    z = loc[:, None] + log_scale.exp()[:, None] * noise  # (group, K, latent_dim)
    # log p(z) - log q(z|x) for Gaussians, where z - loc = scale * noise: (group, K)
    log_prior_ratio = 0.5 * (noise**2 - z**2).sum(-1) + log_scale.sum(-1, True)
    return _log_likelihoods(model, x, z, rows_per_call, label_rows) + log_prior_ratio


# The evaluation's one optimisation: scoring thousands of codes per image is most of
# its time. A Bernoulli pixel scores log sigmoid(+-logit); flipping the sign of the
# white pixels' logits and summing log(1 + e^f) in place runs about twice as fast as
# softplus (benchmarks/epoch_speed.py), and an MLP decoder folds the flip into its
# last layer.

def _log_likelihoods(model, x, z, rows_per_call, label_rows=None):
    """log p(x|z) of each image under each of its codes z (group, K, latent_dim):
    (group, K)."""
    layers = _foldable_decoder(model)
    if layers is not None and z.shape[1] >= rows_per_call:
        folded = torch.stack([
            _folded_log_likelihood(model, *layers, z[i], x[i], rows_per_call,
                                   None if label_rows is None else label_rows[i:i + 1])
            for i in range(len(x))])  # (group, K)
        if bool(torch.isfinite(folded).all()):
            return folded
    # Each image's label for all of its codes: (group, 1, classes) broadcasts.
    given_to_codes = () if label_rows is None else (label_rows[:, None],)
    rows_per_image = max(1, min(z.shape[1], rows_per_call // len(x)))
    pieces = []
    for done in range(0, z.shape[1], rows_per_image):
        codes = z[:, done:done + rows_per_image]  # (group, rows, latent_dim)
        # (group, rows, 784) logits, or twice as many outputs for two per pixel
        logits = model.decode_logits(codes, *given_to_codes)
        pieces.append(_score(model.likelihood, logits, x))
    return torch.cat(pieces, 1)


def _foldable_decoder(model):
    """The decoder's hidden layers and its last layer, if the sign flip may fold into
    it: a Bernoulli VAE whose decoder is a stack ending in a ``Linear``; else None."""
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
    """log p(x|z) of one image under each of its codes (k, latent_dim): (k,). Its
    flipped logits s * (W h + b), s = 1 - 2x, are (s W) h + s b: one matrix product,
    and the same numbers as flipping after it, since multiplying by -1 is exact."""
    sign = 1 - 2 * x  # (784,): +1 for a black pixel, -1 for a white one
    weight_t = (output_layer.weight * sign[:, None]).t()  # (hidden, 784)
    bias = output_layer.bias * sign  # (784,)
    given = () if label_row is None else (label_row,)
    pieces = []
    for done in range(0, len(codes), rows_per_call):
        inputs = model.decoder_input(codes[done:done + rows_per_call], *given)
        flipped = torch.addmm(bias, hidden_layers(inputs), weight_t)  # (rows, 784)
        pieces.append(log1p_exp_sum(flipped).neg_())  # log p(x|z): (rows,)
    return torch.cat(pieces)


def log1p_exp_sum(values):
    """sum_j log(1 + e^v_j) over the last axis, in place in ``values``: twice as fast as
    softplus, but e^v overflows for v > 88, so callers redo such blocks with softplus."""
    return values.exp_().add_(1).log_().sum(-1)


def _score(kind, logits, x):
    """log p(x|z) of each image under each of its codes' logits: (group, rows)."""
    if kind != "bernoulli":
        return likelihood_from_logits(logits, kind).log_prob(x[:, None])
    # log p(x_j | l_j) is -log(1 + e^-l_j) for a white pixel and -log(1 + e^l_j)
    # for a black one. Blocks with a logit past 88 are redone with softplus.
    flipped = logits * (1 - 2 * x[:, None])  # (group, rows, 784)
    log_likelihood = log1p_exp_sum(flipped).neg_()  # (group, rows)
    if bool(torch.isfinite(log_likelihood).all()):
        return log_likelihood
    return -F.softplus(logits * (1 - 2 * x[:, None])).sum(-1)


# Burda et al. (2016) call a latent unit active when its activity exceeds this.
ACTIVE_THRESHOLD = 1e-2


def unit_activity(means: torch.Tensor) -> torch.Tensor:
    r"""Burda et al.'s activity of each unit: :math:`A_d = \mathrm{Cov}_x(E_q[z_d])`.

    The variance (Bessel-corrected) over images of the posterior ``means`` (num_images,
    latent_dim): (latent_dim,), in float64 so that every CPU counts a unit alike.
    """
    if means.dim() != 2 or len(means) < 2:
        raise ValueError("means must have shape (num_images, latent_dim) with at least "
                         f"two images; got {tuple(means.shape)}")
    return means.double().var(dim=0)


def active_units(means: torch.Tensor,
                 threshold: float = ACTIVE_THRESHOLD) -> torch.Tensor:
    """Which latent units are active, ``unit_activity(means) > threshold``: a
    (latent_dim,) boolean tensor whose ``.sum()`` Burda et al. report."""
    return unit_activity(means) > threshold
