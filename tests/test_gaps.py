"""Exact inference on a grid, checked against a model whose answers are closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import (
    Independent,
    MultivariateNormal,
    Normal,
    kl_divergence,
)

from vae_course import gaps
from vae_course.models import build_vae


class LinearGaussian(nn.Module):
    """p(z) = N(0, I_2), p(x|z) = N(W z + b, s^2 I): every answer in closed form."""

    latent_dim = 2
    likelihood = "gaussian"

    def __init__(self, weight, bias, noise):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)  # (D, 2)
        self.bias = nn.Parameter(bias, requires_grad=False)  # (D,)
        self.noise = noise

    def decode(self, z):
        return Independent(Normal(z @ self.weight.T + self.bias, self.noise), 1)

    def marginal(self):
        covariance = self.weight @ self.weight.T + self.noise**2 * torch.eye(
            len(self.bias), dtype=self.bias.dtype)
        return MultivariateNormal(self.bias, covariance)

    def posterior(self, x):
        precision = (torch.eye(2, dtype=x.dtype)
                     + self.weight.T @ self.weight / self.noise**2)
        covariance = torch.linalg.inv(precision)
        mean = (x - self.bias) @ self.weight @ covariance / self.noise**2  # (N, 2)
        return MultivariateNormal(mean, covariance.expand(len(x), 2, 2))


def linear_model(orthogonal=False, bias_scale=0.5):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 2, generator=generator, dtype=torch.float64)
    if orthogonal:  # orthogonal columns: the posterior is a diagonal Gaussian
        lengths = torch.tensor([2.0, 3.0], dtype=torch.float64)
        weight = torch.linalg.qr(weight).Q * lengths
    bias = bias_scale * torch.randn(6, generator=generator, dtype=torch.float64)
    return LinearGaussian(weight, bias, noise=0.7)


def linear_images(model, n=5, seed=1):
    """n seeded draws from the model's marginal N(b, W W^T + s^2 I): (n, 6)."""
    noise = torch.randn(n, 6, generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64)
    return noise @ torch.linalg.cholesky(model.marginal().covariance_matrix).T \
        + model.bias.detach()


def diagonal(loc, scale):
    return Independent(Normal(loc, scale), 1)


GRID = gaps.LatentGrid(limit=5.0, step=0.01)


def test_log_likelihood_posterior_and_kl_match_the_closed_forms():
    model = linear_model()
    x = linear_images(model)
    q = diagonal(torch.zeros(5, 2, dtype=torch.float64) + 0.3,
                 torch.full((5, 2), 0.5, dtype=torch.float64))
    result = gaps.exact_inference(model, x, {"guess": q}, grid=GRID)
    posterior = model.posterior(x)
    assert torch.allclose(result["log_likelihood"], model.marginal().log_prob(x),
                          atol=1e-6)
    assert torch.allclose(result["posterior_mean"], posterior.mean, atol=1e-6)
    assert torch.allclose(result["posterior_cov"], posterior.covariance_matrix,
                          atol=1e-6)
    q_full = MultivariateNormal(q.mean, torch.diag_embed(q.variance))
    assert torch.allclose(result["kl"]["guess"], kl_divergence(posterior, q_full),
                          atol=1e-5)
    assert (result["edge_mass"] < 1e-12).all()


def test_a_posterior_off_the_grid_shows_in_the_edge_mass():
    model = linear_model(bias_scale=0.0)
    x = linear_images(model)
    small = gaps.LatentGrid(limit=1.0, step=0.02)
    result = gaps.exact_inference(model, x, grid=small)
    exact = model.marginal().log_prob(x)
    missed = (result["log_likelihood"] - exact).abs() > 1e-3
    assert missed.any()
    assert (result["edge_mass"][missed] > 1e-3).all()


def bernoulli_model():
    torch.manual_seed(0)
    model = build_vae(latent_dim=2, hidden_sizes=(16,)).eval()
    with torch.no_grad():
        model.decoder[0].weight.mul_(3.0)  # a posterior narrower than the prior
    return model


def binary_images(n=6):
    return torch.bernoulli(torch.full((n, 784), 0.3),
                           generator=torch.Generator().manual_seed(2))


def test_bernoulli_scores_match_torch_distributions():
    model = bernoulli_model()
    x = binary_images(3)
    codes = torch.randn(50, 2, generator=torch.Generator().manual_seed(3))
    expected = (model.decode(codes).log_prob(x[:, None])
                + Independent(Normal(torch.zeros(2), 1.0), 1).log_prob(codes))
    assert torch.allclose(gaps.log_joint(model, x, codes), expected, atol=1e-3)


def test_tiles_give_the_dense_sum_and_finer_cells_change_nothing():
    model = bernoulli_model()
    x = binary_images()
    grid = gaps.LatentGrid(limit=4.0, step=0.02)
    tiled = gaps.exact_log_likelihood(model, x, grid)
    axis = grid.axis()
    dense = torch.logsumexp(gaps.log_joint(model, x, gaps.codes_of(axis, axis))
                            .double(), 1) + grid.log_cell_area
    assert torch.allclose(tiled, dense, atol=1e-5)
    finer = gaps.exact_log_likelihood(model, x, gaps.LatentGrid(limit=4.0, step=0.01))
    assert (finer - tiled).abs().max() < 1e-3


def test_posterior_on_grid_is_normalised_and_peaks_at_the_posterior():
    model = linear_model()
    x = linear_images(model, n=2)
    axis = torch.linspace(-3, 3, 301, dtype=torch.float64)
    table = gaps.posterior_on_grid(model, x, axis, axis)
    assert table.shape == (2, 301, 301)
    assert torch.allclose(table.sum((1, 2)), torch.ones(2, dtype=torch.float64))
    peak = table.flatten(1).argmax(1)
    at = torch.stack([axis[peak // 301], axis[peak % 301]], 1)
    assert (at - model.posterior(x).mean).abs().max() < 0.02


def closed_form_elbo(model, x, loc, scale):
    """E_q[log N(x; Wz + b, s^2 I)] - KL(q || N(0, I)) for q = N(loc, diag scale^2)."""
    residual = x - loc @ model.weight.T - model.bias
    expected = (-0.5 * x.shape[1] * math.log(2 * math.pi * model.noise**2)
                - ((residual**2).sum(1) + (scale**2 @ (model.weight**2).T).sum(1))
                / (2 * model.noise**2))
    kl = 0.5 * (loc**2 + scale**2 - 1 - 2 * scale.log()).sum(1)
    return expected - kl


def test_gaussian_elbo_is_seeded_and_matches_the_closed_form():
    model = linear_model()
    x = linear_images(model)
    loc = torch.full((5, 2), 0.2, dtype=torch.float64)
    scale = torch.full((5, 2), 0.4, dtype=torch.float64)
    q = diagonal(loc, scale)
    estimate = gaps.gaussian_elbo(model, x, q, num_samples=200_000, seed=4)
    assert torch.equal(estimate, gaps.gaussian_elbo(model, x, q, num_samples=200_000,
                                                    seed=4))
    assert (estimate - closed_form_elbo(model, x, loc, scale)).abs().max() < 0.05


def test_optimised_gaussian_reaches_a_diagonal_posterior():
    model = linear_model(orthogonal=True)
    x = linear_images(model)
    start = diagonal(torch.zeros(5, 2, dtype=torch.float64),
                     torch.ones(5, 2, dtype=torch.float64))
    best = gaps.optimise_gaussian(model, x, start, num_steps=1000, learning_rate=0.05,
                                  seed=0)
    exact = model.marginal().log_prob(x)
    assert (exact - closed_form_elbo(model, x, best.mean, best.stddev)).max() < 0.02
    assert (exact - closed_form_elbo(model, x, start.mean, start.stddev)).min() > 1.0
    # The same seed gives the same search (a short one shows it as well as a long one).
    short, again = (gaps.optimise_gaussian(model, x, start, num_steps=30,
                                           learning_rate=0.05, seed=0) for _ in "ab")
    assert torch.equal(short.mean, again.mean)
    assert torch.equal(short.stddev, again.stddev)


def test_optimising_leaves_the_model_alone():
    model = bernoulli_model()
    x = binary_images(4)
    before = [p.clone() for p in model.parameters()]
    with torch.no_grad():
        start = model.encode(x)
    gaps.optimise_gaussian(model, x, start, num_steps=5)
    after = list(model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_other_latent_sizes_and_bad_inputs_are_refused():
    model = build_vae(latent_dim=3, hidden_sizes=(8,))
    x = binary_images(2)
    for call in (lambda: gaps.exact_inference(model, x),
                 lambda: gaps.posterior_on_grid(model, x, torch.zeros(3),
                                                torch.zeros(3)),
                 lambda: gaps.gaussian_elbo(model, x, model.encode(x)),
                 lambda: gaps.optimise_gaussian(model, x, model.encode(x))):
        with pytest.raises(ValueError, match="exactly two latent units"):
            call()
    two = bernoulli_model()
    with pytest.raises(ValueError, match="whole multiple"):
        gaps.LatentGrid(limit=1.0, step=0.03)
    with pytest.raises(ValueError, match="one per image"):
        wrong = diagonal(torch.zeros(3, 2), torch.ones(3, 2))
        gaps.exact_inference(two, x, {"q": wrong})
    with pytest.raises(ValueError, match="Bernoulli"):
        gaps.exact_inference(two, torch.full((2, 784), 0.5))
