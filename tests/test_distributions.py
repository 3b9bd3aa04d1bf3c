"""The prior, the posterior built from an encoder output, and the pixel likelihoods."""

from __future__ import annotations

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
    GreyPixelsError,
    check_pixels,
    likelihood_from_logits,
    posterior_from_encoder,
    standard_normal_prior,
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


def test_binary_pixels_pass_both_likelihoods():
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
