"""The prior, the posterior built from an encoder output, and the pixel likelihoods."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import (
    Bernoulli,
    ContinuousBernoulli,
    Distribution,
    Independent,
    Normal,
)

from vae_course.distributions import (
    LIKELIHOODS,
    LOG_SCALE_RANGE,
    NUM_LEVELS,
    DiscretizedLogistic,
    GreyPixelsError,
    check_pixels,
    likelihood_from_logits,
    posterior_from_encoder,
    standard_normal_prior,
    unchecked_arguments,
)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)


@pytest.mark.parametrize("latent_dim", [1, 2, 32])
def test_prior_is_standard_normal_over_latent_units(latent_dim):
    prior = standard_normal_prior(latent_dim)
    assert isinstance(prior, Independent)
    assert prior.event_shape == (latent_dim,)
    assert prior.batch_shape == ()
    assert torch.equal(prior.mean, torch.zeros(latent_dim))
    assert torch.equal(prior.stddev, torch.ones(latent_dim))
    z = torch.linspace(-3, 3, 7 * latent_dim).reshape(7, latent_dim)
    expected = torch.distributions.MultivariateNormal(
        torch.zeros(latent_dim), torch.eye(latent_dim)).log_prob(z)
    torch.testing.assert_close(prior.log_prob(z), expected)


def test_prior_follows_the_requested_device():
    assert standard_normal_prior(3, device="cpu").mean.device.type == "cpu"


def test_posterior_splits_means_then_log_scales(generator):
    output = torch.randn(5, 2 * 3, generator=generator)  # (batch, 2 * latent_dim)
    posterior = posterior_from_encoder(output)
    assert isinstance(posterior, Independent)
    assert posterior.batch_shape == (5,)
    assert posterior.event_shape == (3,)
    assert torch.equal(posterior.base_dist.loc, output[:, :3])
    assert torch.equal(posterior.base_dist.scale, torch.exp(output[:, 3:]))
    assert torch.equal(posterior.mean, output[:, :3])
    # log_prob sums the units: one number per image.
    z = torch.randn(5, 3, generator=generator)
    expected = Normal(output[:, :3], output[:, 3:].exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(posterior.log_prob(z), expected)


@pytest.mark.parametrize("width", [1, 3, 65])
def test_posterior_refuses_an_odd_encoder_output(width):
    with pytest.raises(ValueError, match="even"):
        posterior_from_encoder(torch.zeros(4, width))


@pytest.mark.parametrize(("kind", "family"), [("bernoulli", Bernoulli),
                                              ("continuous_bernoulli",
                                               ContinuousBernoulli)])
def test_likelihood_has_one_event_of_784_pixels(kind, family, generator):
    logits = torch.randn(6, 784, generator=generator)
    likelihood = likelihood_from_logits(logits, kind)
    assert isinstance(likelihood, Independent)
    assert isinstance(likelihood.base_dist, family)
    assert likelihood.event_shape == (784,)
    assert likelihood.batch_shape == (6,)
    x = torch.rand(6, 784, generator=generator).round()
    expected = family(logits=logits).log_prob(x).sum(-1)
    torch.testing.assert_close(likelihood.log_prob(x), expected)


def test_likelihood_keeps_leading_sample_dimensions(generator):
    logits = torch.randn(3, 2, 784, generator=generator)  # (samples, batch, 784)
    likelihood = likelihood_from_logits(logits)
    assert likelihood.batch_shape == (3, 2)
    assert likelihood.log_prob(torch.ones(2, 784)).shape == (3, 2)


def test_bernoulli_log_prob_is_minus_binary_cross_entropy(generator):
    logits = torch.randn(4, 784, generator=generator)
    x = torch.rand(4, 784, generator=generator).round()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, x, reduction="none").sum(-1)
    torch.testing.assert_close(likelihood_from_logits(logits).log_prob(x), -bce)


def test_unknown_likelihood_is_refused():
    with pytest.raises(ValueError, match="gaussian"):
        likelihood_from_logits(torch.zeros(1, 784), "gaussian")
    with pytest.raises(ValueError, match="gaussian"):
        check_pixels(torch.zeros(1, 784), "gaussian")


def test_binary_pixels_pass_every_likelihood():
    x = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    for kind in LIKELIHOODS:
        check_pixels(x, kind)  # no error


def test_grey_pixels_are_refused_by_bernoulli_with_a_helpful_message():
    x = torch.zeros(2, 784)
    x[1, 300] = 0.5
    with pytest.raises(GreyPixelsError) as caught:
        check_pixels(x, "bernoulli")
    message = str(caught.value)
    assert "binarize" in message
    assert "continuous_bernoulli" in message
    assert isinstance(caught.value, ValueError)  # callers may catch ValueError


def test_grey_pixels_are_fine_for_continuous_bernoulli(generator):
    check_pixels(torch.rand(3, 784, generator=generator), "continuous_bernoulli")


@pytest.mark.parametrize("kind", LIKELIHOODS)
@pytest.mark.parametrize("value", [-0.01, 1.01, 255.0])
def test_pixels_outside_the_unit_interval_are_refused(kind, value):
    x = torch.zeros(2, 784)
    x[0, 5] = value
    with pytest.raises(ValueError, match=r"\[0, 1\]") as caught:
        check_pixels(x, kind)
    # Out of range is a different problem from grey levels: binarizing would not help.
    assert not isinstance(caught.value, GreyPixelsError)


def test_validation_is_not_switched_off():
    """The course binarizes instead of silencing torch's support check."""
    import vae_course  # noqa: F401  (importing the package must not change it)

    assert Distribution._validate_args is True
    with pytest.raises(ValueError):
        Bernoulli(logits=torch.zeros(3)).log_prob(torch.tensor([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError):
        likelihood_from_logits(torch.zeros(1, 784)).log_prob(torch.full((1, 784), 0.5))


@pytest.mark.parametrize("kind", LIKELIHOODS)
def test_nan_pixels_are_refused_and_named(kind):
    # NaN compares False with everything, so a plain range test lets it through.
    x = torch.zeros(2, 784)
    x[1, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN") as caught:
        check_pixels(x, kind)
    assert not isinstance(caught.value, GreyPixelsError)  # binarizing would not help


def test_pixels_must_be_a_float_tensor():
    with pytest.raises(TypeError, match="torch.Tensor"):
        check_pixels([[0.0, 1.0]], "bernoulli")
    with pytest.raises(TypeError, match="floating point"):
        check_pixels(torch.ones(2, 784, dtype=torch.uint8), "bernoulli")


# --- the discretized logistic over 256 grey levels -----------------------------

LEVELS = torch.arange(NUM_LEVELS, dtype=torch.float64) / 255  # (256,)


def parameter_grid(dtype=torch.float64):
    """Locations across and beyond [0, 1], on bin edges and centres, times scales
    from far narrower than a bin to far wider than the range: (n,) each."""
    locs = torch.tensor([-30.0, -1.0, 0.0, 1 / 510, 0.2, 127.5 / 255, 0.5,
                         128 / 255, 0.9, 1.0, 2.0, 30.0], dtype=dtype)
    scales = torch.tensor([math.exp(LOG_SCALE_RANGE[0]), 1e-4, 1e-3, 0.01, 0.1,
                           1.0, 10.0, math.exp(LOG_SCALE_RANGE[1])], dtype=dtype)
    loc, scale = torch.cartesian_prod(locs, scales).unbind(-1)
    return loc, scale


def brute_force_probs(loc, scale):
    """Each level's mass as a difference of logistic CDFs, in float64: (n, 256)."""
    loc, scale = loc.double()[:, None], scale.double()[:, None]
    cdf = torch.sigmoid(((torch.arange(NUM_LEVELS + 1, dtype=torch.float64) - 0.5)
                         / 255 - loc) / scale)  # (n, 257) at the bin edges
    cdf[:, 0], cdf[:, -1] = 0.0, 1.0  # the edge levels take the tails
    return cdf.diff(dim=-1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_256_level_probabilities_sum_to_one(dtype):
    loc, scale = parameter_grid(dtype)
    probs = DiscretizedLogistic(loc, scale).level_probs()
    assert probs.shape == (len(loc), NUM_LEVELS) and probs.dtype == dtype
    assert bool((probs >= 0).all())
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(probs.sum(-1), torch.ones_like(loc),
                               rtol=0, atol=tolerance)


def test_log_prob_equals_a_brute_force_cdf_difference():
    loc, scale = parameter_grid()
    expected = brute_force_probs(loc, scale)  # (n, 256)
    log_prob = DiscretizedLogistic(loc[:, None], scale[:, None]).log_prob(LEVELS)
    # Where the subtraction of two CDFs keeps its digits (its error is about 1e-16
    # absolute, so 1e-10 relative at a mass of 1e-6).
    accurate = expected > 1e-6
    assert accurate.sum() > 1000
    torch.testing.assert_close(log_prob[accurate], expected[accurate].log(),
                               rtol=0, atol=1e-9)
    # Where it rounds to nothing, log_prob stays finite: no log(0).
    assert bool(torch.isfinite(log_prob).all())
    assert bool((log_prob[expected < 1e-12] < math.log(1e-11)).all())


def test_log_prob_in_the_far_tails_equals_a_50_digit_computation():
    mpmath = pytest.importorskip("mpmath")  # a dependency of sympy, hence of torch
    mpmath.mp.dps = 50
    loc, scale = parameter_grid()
    picked = torch.arange(0, len(loc), 5)
    levels = torch.tensor([0, 1, 100, 127, 128, 254, 255])
    log_prob = DiscretizedLogistic(loc[picked, None], scale[picked, None]
                                   ).log_prob(LEVELS[levels])

    def mass(mu, s, k):
        """log(CDF(upper edge) - CDF(lower edge)), in 50 digits and any exponent."""
        def sigmoid(t):
            return 1 / (1 + mpmath.exp(-t))
        upper = mpmath.inf if k == 255 else (mpmath.mpf(k + 0.5) / 255 - mu) / s
        lower = -mpmath.inf if k == 0 else (mpmath.mpf(k - 0.5) / 255 - mu) / s
        if lower > 0:  # both CDFs near 1: subtract the upper tails instead
            return mpmath.log(sigmoid(-lower) - sigmoid(-upper))
        return mpmath.log(sigmoid(upper) - sigmoid(lower))

    expected = torch.tensor([[float(mass(mpmath.mpf(loc[i].item()),
                                         mpmath.mpf(scale[i].item()), int(k)))
                              for k in levels] for i in picked.tolist()],
                            dtype=torch.float64)
    torch.testing.assert_close(log_prob, expected, rtol=1e-9, atol=1e-9)
    assert float(expected.min()) < -1e5  # the grid reaches far into the tails


def test_log_prob_is_at_most_zero_and_a_narrow_bin_holds_everything():
    centres = LEVELS[[0, 3, 128, 255]]
    narrow = DiscretizedLogistic(centres, torch.full_like(centres, 1e-5))
    torch.testing.assert_close(narrow.log_prob(centres), torch.zeros_like(centres),
                               rtol=0, atol=1e-12)
    loc, scale = parameter_grid()
    assert bool((DiscretizedLogistic(loc[:, None], scale[:, None]).log_prob(LEVELS)
                 <= 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_are_finite_even_for_extreme_parameters(dtype):
    loc, scale = parameter_grid(dtype)
    loc = loc[:, None].clone().requires_grad_(True)
    log_scale = scale.log()[:, None].clone().requires_grad_(True)
    log_prob = DiscretizedLogistic(loc, log_scale.exp()).log_prob(LEVELS.to(dtype))
    assert bool(torch.isfinite(log_prob).all())
    log_prob.sum().backward()
    assert bool(torch.isfinite(loc.grad).all())
    assert bool(torch.isfinite(log_scale.grad).all())
    assert bool((loc.grad != 0).any()) and bool((log_scale.grad != 0).any())


def test_mean_and_samples_follow_the_level_probabilities():
    loc = torch.tensor([0.0, 0.3, 0.5, 0.97, 1.2], dtype=torch.float64)
    scale = torch.tensor([0.05, 0.02, 1e-4, 0.1, 0.5], dtype=torch.float64)
    distribution = DiscretizedLogistic(loc, scale)
    probs = distribution.level_probs()  # (5, 256)
    torch.testing.assert_close(distribution.mean, (probs * LEVELS).sum(-1))
    torch.manual_seed(0)
    draws = distribution.sample((40_000,))  # (40000, 5)
    assert draws.shape == (40_000, 5)
    check_pixels(draws.float(), "discretized_logistic")  # on the 256 levels
    counts = torch.stack([torch.bincount((draws[:, i] * 255).round().long(),
                                         minlength=NUM_LEVELS) for i in range(5)])
    frequencies = counts.double() / len(draws)
    spread = (probs * (1 - probs) / len(draws)).sqrt()
    assert bool(((frequencies - probs).abs() <= 5 * spread + 1e-4).all())


def test_discretized_likelihood_splits_locations_then_log_scales(generator):
    outputs = torch.randn(3, 2, 2 * 784, generator=generator)  # (samples, batch, 1568)
    likelihood = likelihood_from_logits(outputs, "discretized_logistic")
    assert likelihood.batch_shape == (3, 2) and likelihood.event_shape == (784,)
    base = likelihood.base_dist
    assert isinstance(base, DiscretizedLogistic)
    assert torch.equal(base.loc, outputs[..., :784])
    assert torch.equal(base.scale, outputs[..., 784:].exp())
    x = torch.randint(0, 256, (2, 784), generator=generator).float() / 255
    expected = DiscretizedLogistic(outputs[..., :784], outputs[..., 784:].exp()
                                   ).log_prob(x).sum(-1)
    torch.testing.assert_close(likelihood.log_prob(x), expected)
    assert likelihood.mean.shape == (3, 2, 784)
    with pytest.raises(ValueError, match="even"):
        likelihood_from_logits(torch.zeros(1, 785), "discretized_logistic")


def test_huge_log_scales_are_clamped_to_finite_scales():
    outputs = torch.cat([torch.zeros(1, 784), torch.full((1, 784), 200.0)], -1)
    likelihood = likelihood_from_logits(outputs, "discretized_logistic")
    assert likelihood.base_dist.scale.max() == pytest.approx(
        math.exp(LOG_SCALE_RANGE[1]), rel=1e-6)
    assert bool(torch.isfinite(likelihood.log_prob(torch.zeros(1, 784))).all())


def test_pixels_between_the_256_levels_are_refused(generator):
    grey = torch.randint(0, 256, (3, 784), generator=generator).float() / 255
    check_pixels(grey, "discretized_logistic")  # what load_mnist gives
    dequantized = (grey * 255 + torch.rand(3, 784, generator=generator)) / 256
    with pytest.raises(ValueError, match="256 grey levels") as caught:
        check_pixels(dequantized, "discretized_logistic")
    assert "continuous_bernoulli" in str(caught.value)
    with pytest.raises(ValueError):  # torch's own support check agrees
        DiscretizedLogistic(torch.zeros(3), torch.ones(3)).log_prob(
            torch.tensor([0.0, 0.5, 1.0]))


def test_unchecked_arguments_switches_the_checks_off_and_back_on():
    bad = torch.full((1, 8), math.nan)
    with pytest.raises(RuntimeError, match="inside"):
        with unchecked_arguments():
            posterior_from_encoder(bad)  # refused only while the checks are on
            raise RuntimeError("inside")
    with pytest.raises(ValueError, match="loc"):
        posterior_from_encoder(bad)


def test_with_the_checks_on_torch_builds_and_checks_the_distributions():
    bad = torch.zeros(2, 8)
    bad[0, 0] = math.nan  # a NaN mean
    with pytest.raises(ValueError, match="loc"):
        posterior_from_encoder(bad)
    with pytest.raises(ValueError, match="logits"):
        likelihood_from_logits(torch.full((1, 784), math.nan))
