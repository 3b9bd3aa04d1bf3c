r"""The three distributions of a VAE: prior p(z), posterior q(z|x), likelihood p(x|z).

Each is an ``Independent`` distribution, so ``log_prob`` sums over the event
dimensions (the latent units or the 784 pixels) and returns one number per image.

Three likelihoods for the pixels: a Bernoulli for binary pixels, a continuous
Bernoulli (a density on [0, 1]) for grey ones, and :class:`DiscretizedLogistic`, a
probability over the 256 grey levels :math:`k / 255` that MNIST stores (Salimans et
al. 2017, PixelCNN++). The first two take one decoder output per pixel, the last two
(a location and a log-scale).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.distributions import (
    Bernoulli,
    ContinuousBernoulli,
    Distribution,
    Independent,
    Normal,
    constraints,
)

from .inputs import (
    LIKELIHOODS,
    NUM_LEVELS,
    GreyPixelsError,
    check_choice,
    check_pixels,
    is_grey_level,
)

__all__ = ["LIKELIHOODS", "LOG_SCALE_RANGE", "NUM_LEVELS", "OUTPUTS_PER_PIXEL",
           "DiscretizedLogistic", "GreyPixelsError", "check_pixels", "grey_levels",
           "likelihood_from_logits", "posterior_from_encoder",
           "standard_normal_prior", "unchecked_arguments"]

#: Decoder outputs per pixel that each likelihood needs.
OUTPUTS_PER_PIXEL = {"bernoulli": 1, "continuous_bernoulli": 1,
                     "discretized_logistic": 2}
# The decoder's log-scales are clamped to this range: e^-10 is far narrower than a
# bin (1/255), e^10 far wider than [0, 1], and exp stays finite in float32.
LOG_SCALE_RANGE = (-10.0, 10.0)


@contextlib.contextmanager
def unchecked_arguments():
    """Switch torch.distributions' argument checks off, then on again.

    Each check (a real ``loc``, a positive ``scale``, pixels in the support) is a
    pass over a tensor and a wait for its answer: about a tenth of a small model's
    training step. Only around inputs that were checked already, and not nested.
    """
    Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(True)


def standard_normal_prior(latent_dim: int, device=None) -> Independent:
    """p(z) = N(0, I) over ``latent_dim`` units."""
    loc = torch.zeros(latent_dim, device=device)
    return Independent(Normal(loc, torch.ones_like(loc)), 1)


def posterior_from_encoder(encoder_output: torch.Tensor) -> Independent:
    """q(z|x) from an encoder output holding means, then log standard deviations.

    ``encoder_output`` has shape (batch, 2 * latent_dim). The network predicts the
    log of the scale so that any real output gives a positive scale.
    """
    if encoder_output.shape[-1] % 2 != 0:
        raise ValueError(
            "the encoder output must hold a mean and a log-scale per latent unit, "
            f"so its last size must be even; got {tuple(encoder_output.shape)}"
        )
    loc, log_scale = encoder_output.chunk(2, dim=-1)  # (batch, latent_dim) each
    return Independent(Normal(loc, log_scale.exp()), 1)


class _GreyLevels(constraints.Constraint):
    """Values k / 255 for an integer k in 0 .. 255 (up to float rounding)."""

    is_discrete = True
    event_dim = 0

    def check(self, value):
        return is_grey_level(value)


#: The support of :class:`DiscretizedLogistic`.
grey_levels = _GreyLevels()


def _log_sigmoid_difference(upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """log(sigmoid(upper) - sigmoid(lower)) for upper > lower, without cancellation.

    sigmoid(u) - sigmoid(l) = sigmoid(u) (1 - sigmoid(l)) (1 - e^(l - u)), and each
    factor's log has a stable form: -softplus(-u), -softplus(l), log(-expm1(l - u)).
    """
    return (-F.softplus(-upper) - F.softplus(lower)
            + torch.log(-torch.expm1(lower - upper)))


class DiscretizedLogistic(Distribution):
    r"""A logistic distribution rounded to the 256 grey levels :math:`k / 255`.

    Level :math:`k` gets the logistic's mass over its bin, :math:`[k - \tfrac12,
    k + \tfrac12] / 255`; the two edge levels also take the tails, so that
    :math:`P(0) = \sigma((\tfrac{1}{510} - \mu) / s)` and :math:`P(255) = 1 -
    \sigma((1 - \tfrac{1}{510} - \mu) / s)`, and the 256 masses sum to one
    (Salimans et al. 2017, PixelCNN++). ``loc`` (:math:`\mu`) and ``scale`` (:math:`s`)
    are in pixel units, where black is 0 and white 1. ``log_prob`` is a
    log-probability, at most 0, computed with log-sigmoid and softplus forms that
    never take the log of 0.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = grey_levels
    has_rsample = False

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, validate_args=None):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        super().__init__(self.loc.shape, validate_args=validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        # Always checked: a value between two levels has no probability here.
        if not bool(is_grey_level(value).all()):
            raise ValueError("a discretized logistic scores only the 256 grey levels "
                             "k / 255; these values lie between them or outside [0, 1]")
        level = (value * (NUM_LEVELS - 1)).round()  # the integer k, as a float
        # The bin's edges (k -+ 1/2) / 255, standardized. Neighbouring bins compute
        # their shared edge from the same k + 1/2, so that no mass falls between them.
        upper = ((level + 0.5) / (NUM_LEVELS - 1) - self.loc) / self.scale
        lower = ((level - 0.5) / (NUM_LEVELS - 1) - self.loc) / self.scale
        # Three finite candidates, one chosen per pixel: torch.where then passes
        # no NaN gradient from the branches it does not take.
        interior = _log_sigmoid_difference(upper, lower)
        first = -F.softplus(-upper)  # log sigmoid(upper): level 0 takes the left tail
        last = -F.softplus(lower)  # log(1 - sigmoid(lower)): level 255, the right
        return torch.where(level <= 0, first,
                           torch.where(level >= NUM_LEVELS - 1, last, interior))

    def _levels(self) -> torch.Tensor:
        """The 256 grey levels k / 255 in the parameters' dtype and device: (256,)."""
        return torch.arange(NUM_LEVELS, dtype=self.loc.dtype,
                            device=self.loc.device) / (NUM_LEVELS - 1)

    def level_probs(self) -> torch.Tensor:
        """The probability of each of the 256 levels: (*batch_shape, 256)."""
        levels = self._levels().reshape(NUM_LEVELS, *[1] * len(self.batch_shape))
        return self.log_prob(levels).exp().movedim(0, -1)  # (256, *batch) moved

    @property
    def mean(self) -> torch.Tensor:
        r"""Exact: :math:`E[x] = \frac{1}{255} \sum_{k=1}^{255} P(x \ge k / 255)`."""
        # The bin edges between the levels, (k - 1/2) / 255 for k = 1 .. 255.
        edges = (torch.arange(1, NUM_LEVELS, dtype=self.loc.dtype,
                              device=self.loc.device) - 0.5) / (NUM_LEVELS - 1)
        # P(x >= k / 255) = 1 - sigmoid((edge_k - loc) / s) = sigmoid((loc - edge_k) / s)
        above = torch.sigmoid((self.loc[..., None] - edges) / self.scale[..., None])
        return above.sum(-1) / (NUM_LEVELS - 1)  # (*batch_shape)

    @torch.no_grad()
    def sample(self, sample_shape=()) -> torch.Tensor:
        """Draw from the logistic by its inverse CDF, then round to the nearest level."""
        shape = torch.Size(sample_shape) + self.batch_shape
        uniform = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
        uniform = uniform.clamp(torch.finfo(uniform.dtype).tiny, 1 - 1e-7)
        draw = self.loc + self.scale * (uniform.log() - torch.log1p(-uniform))
        return (draw * (NUM_LEVELS - 1)).round().clamp(0, NUM_LEVELS - 1) \
            / (NUM_LEVELS - 1)


def likelihood_from_logits(logits: torch.Tensor, kind: str = "bernoulli") -> Independent:
    """p(x|z) over all pixels from the decoder's outputs.

    ``logits`` has shape (..., 784) for the Bernoulli and the continuous Bernoulli,
    and (..., 2 * 784) for the discretized logistic: the 784 locations, then the 784
    log-scales (clamped to :data:`LOG_SCALE_RANGE`).
    """
    check_choice("likelihood", kind, LIKELIHOODS)
    if kind == "bernoulli":
        return Independent(Bernoulli(logits=logits), 1)
    if kind == "continuous_bernoulli":
        return Independent(ContinuousBernoulli(logits=logits), 1)
    if logits.shape[-1] % 2 != 0:
        raise ValueError("a discretized logistic needs a location and a log-scale "
                         "per pixel, so the decoder's last size must be even; "
                         f"got {tuple(logits.shape)}")
    loc, log_scale = logits.chunk(2, dim=-1)  # (..., 784) each
    scale = log_scale.clamp(*LOG_SCALE_RANGE).exp()
    return Independent(DiscretizedLogistic(loc, scale), 1)
