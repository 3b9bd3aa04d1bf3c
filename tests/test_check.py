"""The learner-facing checker: right answers pass, typical mistakes get their hint.

Every wrong answer below is a mistake learners make (and that the two blog posts the
course grew from show); each test asserts on the printed diagnostic, so a checker
that fails for the wrong reason, or passes a wrong answer, fails here.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import (
    Bernoulli,
    Categorical,
    Independent,
    MixtureSameFamily,
    Normal,
)

import vae_course as vc
from vae_course import check
from vae_course.elbo import kl_standard_normal as kl_of_posterior


def kl_right(mu, log_var):
    return 0.5 * (mu**2 + log_var.exp() - 1 - log_var).sum(-1)


def assert_passes(result, capsys):
    out = capsys.readouterr().out
    assert result is True, out
    assert "✗" not in out
    assert "checks passed" in out
    return out


def assert_fails_with(result, capsys, *phrases):
    out = capsys.readouterr().out
    assert result is False, out
    assert "✗" in out
    for phrase in phrases:
        assert phrase in out, f"{phrase!r} not in:\n{out}"
    return out


def test_check_is_part_of_the_package():
    assert vc.check is check
    assert "check" in vc.__all__


# --------------------------------------------------------------------------- KL


def test_kl_right_answers_pass(capsys):
    assert_passes(check.kl_standard_normal(kl_right), capsys)
    assert_passes(check.kl_standard_normal(kl_of_posterior, takes="posterior"), capsys)
    by_torch = lambda q: torch.distributions.kl_divergence(  # noqa: E731
        q, Independent(Normal(torch.zeros_like(q.mean), torch.ones_like(q.mean)), 1))
    assert_passes(check.kl_standard_normal(by_torch, takes="posterior"), capsys)


def test_kl_averaged_over_latent_units(capsys):
    def kl_mean(mu, log_var):
        return 0.5 * (mu**2 + log_var.exp() - 1 - log_var).mean(-1)

    assert_fails_with(check.kl_standard_normal(kl_mean), capsys,
                      "KL is 8x too small", "average over the latent units")


def test_kl_with_flipped_sign(capsys):
    out = assert_fails_with(check.kl_standard_normal(lambda m, v: -kl_right(m, v)),
                            capsys, "wrong sign")
    assert "8x" not in out


def test_kl_with_a_sign_slip_in_one_term_is_negative(capsys):
    def kl_slip(mu, log_var):
        return 0.5 * (mu**2 - log_var.exp() - 1 - log_var).sum(-1)

    assert_fails_with(check.kl_standard_normal(kl_slip), capsys, "KL is negative")


def test_kl_written_for_sigma_instead_of_log_variance(capsys):
    def kl_of_sigma(mu, sigma):
        return 0.5 * (mu**2 + sigma**2 - 1 - torch.log(sigma**2)).sum(-1)

    assert_fails_with(check.kl_standard_normal(kl_of_sigma), capsys,
                      "passed sigma where log sigma^2 was expected")


def test_kl_written_for_log_sigma(capsys):
    def kl_of_log_sigma(mu, log_sigma):
        return 0.5 * (mu**2 + (2 * log_sigma).exp() - 1 - 2 * log_sigma).sum(-1)

    assert_fails_with(check.kl_standard_normal(kl_of_log_sigma), capsys,
                      "treats log sigma^2 as log sigma")


@pytest.mark.parametrize("sigma_of", [lambda log_var: (0.5 * log_var).exp(),
                                      lambda log_var: log_var.exp().sqrt()],
                         ids=["exp(log_var / 2)", "log_var.exp().sqrt()"])
def test_kl_with_sigma_where_the_variance_belongs(sigma_of, capsys):
    def kl_with_sigma(mu, log_var):
        return 0.5 * (mu**2 + sigma_of(log_var) - 1 - log_var).sum(-1)

    out = assert_fails_with(check.kl_standard_normal(kl_with_sigma), capsys,
                            "sigma was used where sigma^2 belongs",
                            "sigma^2 = exp(log sigma^2) = log_var.exp()")
    assert "compare each term" not in out
    assert "✓ is 0 when q(z|x) is the prior itself" in out  # sigma = sigma^2 = 1 there

    def kl_all_in_sigma(mu, log_var):
        sigma = sigma_of(log_var)
        return 0.5 * (mu**2 + sigma - 1 - sigma.log()).sum(-1)

    assert_fails_with(check.kl_standard_normal(kl_all_in_sigma), capsys,
                      "sigma was used where sigma^2 belongs, in both terms")


def test_kl_missing_the_half_and_the_minus_one(capsys):
    assert_fails_with(check.kl_standard_normal(lambda m, v: 2 * kl_right(m, v)),
                      capsys, "factor 1/2 is missing")

    def kl_without_one(mu, log_var):
        return 0.5 * (mu**2 + log_var.exp() - log_var).sum(-1)

    assert_fails_with(check.kl_standard_normal(kl_without_one), capsys,
                      "the -1 inside the sum is missing")


def test_kl_reduced_over_the_whole_batch(capsys):
    assert_fails_with(check.kl_standard_normal(lambda m, v: kl_right(m, v).mean()),
                      capsys, "returned shape ()", ".sum(dim=-1)")


def test_kl_that_drops_the_gradient(capsys):
    assert_fails_with(check.kl_standard_normal(lambda m, v: kl_right(m, v).detach()),
                      capsys, "no grad_fn")


def test_kl_that_crashes_is_reported_not_raised(capsys):
    def broken(mu, log_var):
        raise RuntimeError("shapes do not match")

    assert_fails_with(check.kl_standard_normal(broken), capsys,
                      "RuntimeError: shapes do not match")


def test_checker_misuse_raises():
    with pytest.raises(TypeError, match="no parentheses"):
        check.kl_standard_normal(kl_right(torch.zeros(1, 2), torch.zeros(1, 2)))
    with pytest.raises(ValueError, match="takes"):
        check.kl_standard_normal(kl_right, takes="sigma")
    with pytest.raises(ValueError, match="family"):
        check.log_prob(kl_right, family="poisson")
    with pytest.raises(ValueError, match="both"):
        check.negative_elbo(kl_right, model=vc.models.build_vae())
    with pytest.raises(ValueError, match="takes"):
        check.log_prob(kl_right, family="bernoulli", takes="log_var")
    with pytest.raises(TypeError, match="no parentheses"):
        check.mixture_prior_log_prob(None)
    with pytest.raises(TypeError, match="no parentheses"):
        check.monte_carlo_kl(0.5)


# ------------------------------------------------------------ reparameterization


def reparameterize_right(mu, log_var):
    return mu + (0.5 * log_var).exp() * torch.randn_like(mu)


def test_reparameterize_right_answers_pass(capsys):
    assert_passes(check.reparameterize(reparameterize_right), capsys)
    by_rsample = lambda m, v: Normal(m, (0.5 * v).exp()).rsample()  # noqa: E731
    assert_passes(check.reparameterize(by_rsample), capsys)


def test_reparameterize_with_sample_instead_of_rsample(capsys):
    by_sample = lambda m, v: Normal(m, (0.5 * v).exp()).sample()  # noqa: E731
    assert_fails_with(check.reparameterize(by_sample), capsys,
                      "gradient does not reach the mean or the scale",
                      "use rsample")


def test_reparameterize_with_a_sampled_noise_term(capsys):
    def noise_from_sample(mu, log_var):
        return mu + Normal(torch.zeros_like(mu), (0.5 * log_var).exp()).sample()

    out = assert_fails_with(check.reparameterize(noise_from_sample), capsys,
                            "gradient does not reach the scale", "use rsample")
    assert "the mean or" not in out


def test_reparameterize_with_the_variance_as_scale(capsys):
    wrong = lambda m, v: m + v.exp() * torch.randn_like(m)  # noqa: E731
    assert_fails_with(check.reparameterize(wrong), capsys,
                      "exp(log_var) is the variance")


def test_reparameterize_with_one_noise_for_all_rows(capsys):
    def shared_noise(mu, log_var):
        return mu + (0.5 * log_var).exp() * torch.randn(mu.shape[-1], dtype=mu.dtype)

    assert_fails_with(check.reparameterize(shared_noise), capsys,
                      "every row got the same eps")


def test_reparameterize_returning_the_mean(capsys):
    assert_fails_with(check.reparameterize(lambda m, v: m + 0 * v), capsys,
                      "z equals mu")


def test_reparameterize_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check.reparameterize(reparameterize_right)
    assert torch.equal(torch.rand(3), expected)


def test_reparameterize_that_reseeds_draws_the_same_noise_on_every_call(capsys):
    def reseeded(mu, log_var):
        torch.manual_seed(0)
        eps = torch.randn_like(mu)
        return mu + (0.5 * log_var).exp() * eps

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    out = assert_fails_with(check.reparameterize(reseeded), capsys,
                            "✗ draws fresh noise on every call",
                            "two calls with the same inputs gave identical draws",
                            "every call must draw fresh noise")
    assert "✓ draws fresh noise for every row" in out  # each row has its own eps
    assert "1 of 6 checks failed" in out
    assert torch.equal(torch.rand(3), expected)  # the learner's reseeding is undone


# -------------------------------------------------------------------- log_prob


def test_bernoulli_log_prob_right_answers_pass(capsys):
    assert_passes(check.log_prob(lambda x, logits: Bernoulli(logits=logits)
                                 .log_prob(x)), capsys)
    per_image = lambda x, logits: Independent(  # noqa: E731
        Bernoulli(logits=logits), 1).log_prob(x)
    assert_passes(check.log_prob(per_image), capsys)


def test_bernoulli_log_prob_that_scores_two(capsys):
    unchecked = lambda x, logits: Independent(  # noqa: E731
        Bernoulli(logits=logits, validate_args=False), 1).log_prob(x)
    out = assert_fails_with(check.log_prob(unchecked), capsys,
                            "log-probabilities of a discrete distribution must be <= 0",
                            "log_prob(2) returned positive values",
                            "8.6314, 5.5112")
    assert "equals torch.distributions" in out.split("✗")[0]  # the 0/1 values pass


def test_bernoulli_log_prob_by_hand_must_check_its_support(capsys):
    by_hand = lambda x, logits: x * logits - F.softplus(logits)  # noqa: E731
    assert_fails_with(check.log_prob(by_hand), capsys, "log_prob(2) returned positive",
                      "refuses log_prob(0.5)")

    def by_hand_checked(x, logits):
        if bool(((x != 0) & (x != 1)).any()):
            raise ValueError("a Bernoulli scores only 0 and 1")
        return x * logits - F.softplus(logits)

    assert_passes(check.log_prob(by_hand_checked), capsys)


def test_bernoulli_log_prob_returning_the_bce_loss(capsys):
    bce = lambda x, logits: F.binary_cross_entropy_with_logits(  # noqa: E731
        logits, x, reduction="none")
    assert_fails_with(check.log_prob(bce), capsys, "is <= 0 for pixels 0 and 1",
                      "minus the log-probability")


def test_normal_log_prob(capsys):
    assert_passes(check.log_prob(lambda x, m, s: Normal(m, s).log_prob(x), "normal"),
                  capsys)
    no_constant = lambda x, m, s: -s.log() - (x - m)**2 / (2 * s**2)  # noqa: E731
    assert_fails_with(check.log_prob(no_constant, "normal"), capsys,
                      "-1/2 log(2 pi) is missing")
    as_variance = lambda x, m, s: Normal(m, s.sqrt()).log_prob(x)  # noqa: E731
    assert_fails_with(check.log_prob(as_variance, "normal"), capsys,
                      "treated as a variance")
    scaled_mse = lambda x, m, s: -F.mse_loss(  # noqa: E731
        m, x, reduction="none") / (2 * s**2)
    assert_fails_with(check.log_prob(scaled_mse, "normal"), capsys,
                      "-log sigma - 1/2 log(2 pi) is missing", "an MSE loss")


def test_bernoulli_log_prob_of_the_deep_bayes_tutorial(capsys):
    """Its log_prob(2), with the support check off, is positive: the checker says so."""
    def tutorial_log_prob(value, logits):
        likelihood = Bernoulli(logits=logits, validate_args=False)  # PyTorch 1.0
        return Independent(likelihood, 1).log_prob(value)

    out = assert_fails_with(check.log_prob(tutorial_log_prob), capsys,
                            "refuses log_prob(2)", "log_prob(2) returned positive",
                            "raise ValueError", "refuses log_prob(0.5)")
    assert "equals torch.distributions" in out.split("✗")[0]


def normal_right(x, loc, log_var):
    return Normal(loc, (0.5 * log_var).exp()).log_prob(x)


def test_normal_log_prob_with_a_learned_variance(capsys):
    assert_passes(check.log_prob(normal_right, "normal", takes="log_var"), capsys)

    def by_hand(x, loc, log_var):  # summed over the pixels: one number per row
        return (-0.5 * (vc.elbo.LOG_2PI + log_var + (x - loc)**2 / log_var.exp())
                ).sum(-1)

    assert_passes(check.log_prob(by_hand, "normal", takes="log_var"), capsys)


def test_normal_log_prob_with_the_variance_as_scale(capsys):
    variance_as_scale = lambda x, m, v: Normal(m, v.exp()).log_prob(x)  # noqa: E731
    assert_fails_with(check.log_prob(variance_as_scale, "normal", takes="log_var"),
                      capsys, "exp(log_var) is the variance",
                      "log sigma^2 treated as log sigma")
    squared = lambda x, m, s: Normal(m, s**2).log_prob(x)  # noqa: E731
    assert_fails_with(check.log_prob(squared, "normal"), capsys,
                      "variance sigma^2 was used where the standard deviation belongs")


def test_normal_log_prob_with_the_log_variance_as_sigma(capsys):
    def log_var_as_sigma(x, loc, log_var):  # negative log_var: nan, not a crash
        return Normal(loc, log_var, validate_args=False).log_prob(x)

    assert_fails_with(check.log_prob(log_var_as_sigma, "normal", takes="log_var"),
                      capsys, "log_var is log sigma^2 and can be any real number")


def test_normal_log_prob_that_drops_the_gradient(capsys):
    detached = lambda x, m, v: normal_right(x, m, v).detach()  # noqa: E731
    assert_fails_with(check.log_prob(detached, "normal", takes="log_var"), capsys,
                      "carries gradients back to loc and log_var", "no grad_fn")


# ------------------------------------------------------------- a mixture prior


def mixture_right(z, logits, means, log_vars):
    log_weights = logits.log_softmax(-1)                                   # (K,)
    components = Independent(Normal(means, (0.5 * log_vars).exp()), 1)    # batch (K,)
    return torch.logsumexp(log_weights + components.log_prob(z[:, None, :]), -1)


def mixture_by_torch(z, logits, means, log_vars):
    components = Independent(Normal(means, (0.5 * log_vars).exp()), 1)
    return MixtureSameFamily(Categorical(logits=logits), components).log_prob(z)


def components_of(z, means, log_vars):
    return Independent(Normal(means, (0.5 * log_vars).exp()), 1).log_prob(z[:, None])


def test_mixture_prior_right_answers_pass(capsys):
    assert_passes(check.mixture_prior_log_prob(mixture_right), capsys)
    assert_passes(check.mixture_prior_log_prob(mixture_by_torch), capsys)


def test_mixture_prior_without_the_log_weights(capsys):
    def no_weights(z, logits, means, log_vars):
        return components_of(z, means, log_vars).logsumexp(-1)

    assert_fails_with(check.mixture_prior_log_prob(no_weights), capsys,
                      "The log mixture weights are missing", "log_softmax(logits)")

    def raw_logits(z, logits, means, log_vars):
        return (logits + components_of(z, means, log_vars)).logsumexp(-1)

    assert_fails_with(check.mixture_prior_log_prob(raw_logits), capsys,
                      "The weights are not normalised")

    def weights_not_logs(z, logits, means, log_vars):
        return (logits.softmax(-1) + components_of(z, means, log_vars)).logsumexp(-1)

    assert_fails_with(check.mixture_prior_log_prob(weights_not_logs), capsys,
                      "added as probabilities")


def test_mixture_prior_in_probability_space(capsys):
    def without_logsumexp(z, logits, means, log_vars):
        densities = components_of(z, means, log_vars).exp()                # (n, K)
        return (logits.softmax(-1) * densities).sum(-1).log()

    out = assert_fails_with(check.mixture_prior_log_prob(without_logsumexp), capsys,
                            "it returned [-inf, -inf]", "underflows to 0",
                            "torch.logsumexp")
    assert "✓ equals MixtureSameFamily" in out  # right where nothing underflows


def test_mixture_prior_averaging_log_densities(capsys):
    def jensen(z, logits, means, log_vars):
        return (logits.softmax(-1) * components_of(z, means, log_vars)).sum(-1)

    assert_fails_with(check.mixture_prior_log_prob(jensen), capsys,
                      "an average of log-densities")


def test_mixture_prior_per_component(capsys):
    def per_component(z, logits, means, log_vars):
        return logits.log_softmax(-1) + components_of(z, means, log_vars)

    assert_fails_with(check.mixture_prior_log_prob(per_component), capsys,
                      "returned shape (6, 3)", "logsumexp over the component")


def kl_by_draw(posterior, prior):
    z = posterior.rsample()
    return posterior.log_prob(z) - prior.log_prob(z)


def test_monte_carlo_kl_right_answers_pass(capsys):
    assert_passes(check.monte_carlo_kl(kl_by_draw), capsys)

    def exact_entropy(posterior, prior):  # entropy in closed form, -log p by a draw
        return -posterior.entropy() - prior.log_prob(posterior.rsample())

    assert_passes(check.monte_carlo_kl(exact_entropy), capsys)


def test_monte_carlo_kl_with_sample(capsys):
    def by_sample(posterior, prior):
        z = posterior.sample()
        return posterior.log_prob(z) - prior.log_prob(z)

    out = assert_fails_with(check.monte_carlo_kl(by_sample), capsys,
                            "the gradient does not reach the encoder through z",
                            "use rsample")
    assert "✓ its average over many draws is the KL" in out


def test_monte_carlo_kl_with_flipped_sign_or_a_missing_term(capsys):
    out = assert_fails_with(check.monte_carlo_kl(lambda q, p: -kl_by_draw(q, p)),
                            capsys, "That is minus the KL",
                            "the gradient of a wrong value is wrong too")
    assert "rsample" not in out

    def cross_entropy_only(posterior, prior):
        return -prior.log_prob(posterior.rsample())

    assert_fails_with(check.monte_carlo_kl(cross_entropy_only), capsys,
                      "cross-entropy -log p(z) alone")

    def against_the_standard_normal(posterior, prior):
        return vc.elbo.kl_standard_normal(posterior)

    assert_fails_with(check.monte_carlo_kl(against_the_standard_normal), capsys,
                      "closed-form KL to N(0, I)")


# ------------------------------------------------------------------ negative ELBO


def loss_drawing_with(method):
    """The batch mean of -ELBO, with z drawn by ``posterior.<method>()``."""
    def loss(model, x):
        posterior = model.encode(x)
        z = getattr(posterior, method)()
        return -(model.decode(z).log_prob(x) - kl_of_posterior(posterior)).mean()

    return loss


loss_right = loss_drawing_with("rsample")
loss_with_sample = loss_drawing_with("sample")  # no gradient reaches the encoder via z


def loss_pixel_mean(model, x):
    posterior = model.encode(x)
    logits = model.decoder(posterior.rsample())
    return (F.binary_cross_entropy_with_logits(logits, x)  # averages over pixels
            + kl_of_posterior(posterior).mean())


def loss_flipped_kl(model, x):
    posterior = model.encode(x)
    z = posterior.rsample()
    return -(model.decode(z).log_prob(x) + kl_of_posterior(posterior)).mean()


def loss_at_the_mean_when_testing(model, x):
    posterior = model.encode(x)
    z = posterior.rsample() if model.training else posterior.mean
    return -(model.decode(z).log_prob(x) - kl_of_posterior(posterior)).mean()


def loss_with_log_var(log_var_of):
    """A loss whose KL takes log sigma^2 and is given ``log_var_of(sigma)``."""
    def loss(model, x):
        posterior = model.encode(x)
        kl = kl_right(posterior.mean, log_var_of(posterior.stddev))
        return -(model.decode(posterior.rsample()).log_prob(x) - kl).mean()

    return loss


def loss_kl_784_times(model, x):
    posterior = model.encode(x)
    logits = model.decoder(posterior.rsample())
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    return (bce + 784 * kl_of_posterior(posterior)).mean()


def test_negative_elbo_right_answers_pass(capsys):
    assert_passes(check.negative_elbo(loss_right, num_calls=100), capsys)
    assert_passes(check.negative_elbo(vc.elbo.negative_elbo, num_calls=100), capsys)


def test_negative_elbo_averaged_over_pixels(capsys):
    assert_fails_with(check.negative_elbo(loss_pixel_mean, num_calls=100), capsys,
                      "Mean over pixels instead of sum")


def test_negative_elbo_with_flipped_kl_sign(capsys):
    assert_fails_with(check.negative_elbo(loss_flipped_kl, num_calls=100), capsys,
                      "Flipped KL sign")


def test_negative_elbo_at_the_mean_in_evaluation_mode(capsys):
    out = assert_fails_with(
        check.negative_elbo(loss_at_the_mean_when_testing, num_calls=100), capsys,
        "test loss computed at z = mu is not an ELBO estimate")
    assert "in train mode is the -ELBO (" in out  # training mode draws z: it passes


def test_negative_elbo_summed_over_the_batch_and_the_model_mode_restored(capsys):
    model = vc.models.build_vae(latent_dim=2, hidden_sizes=(8,))
    model.eval()
    images = torch.bernoulli(torch.full((5, 784), 0.2),
                             generator=torch.Generator().manual_seed(0))

    def loss_summed(model, x):
        return loss_right(model, x) * len(x)

    assert_fails_with(check.negative_elbo(loss_summed, model, images, num_calls=100),
                      capsys, "5x too large", "sums over the batch")
    assert not model.training


def test_negative_elbo_returning_a_float(capsys):
    assert_fails_with(check.negative_elbo(lambda m, x: loss_right(m, x).item()),
                      capsys, "returned float")


# ------------------------------------------------- importance-sampled log p(x)


def estimate_right(model, x, num_samples):
    q = model.encode(x)
    z = q.sample((num_samples,))  # (K, batch, latent_dim)
    log_w = model.decode(z).log_prob(x) + model.prior().log_prob(z) - q.log_prob(z)
    return torch.logsumexp(log_w, dim=0) - math.log(num_samples)


def log_weights_of(model, x, z, q):
    return model.decode(z).log_prob(x) + model.prior().log_prob(z) - q.log_prob(z)


def test_the_linear_gaussian_models_log_likelihood_is_pytorchs():
    model = check.LinearGaussianVAE()
    x = model.images()
    covariance = model.weight @ model.weight.T + torch.eye(784, dtype=torch.float64)
    by_torch = torch.distributions.MultivariateNormal(model.bias, covariance).log_prob(x)
    torch.testing.assert_close(model.exact_log_likelihood(x), by_torch)
    assert bool((by_torch < -800).all()), "exp must underflow even in float64"
    # Its posterior is Gaussian: log p(x, z) - log N(z; mean, std) is log p(x) at any z.
    mean, std = model.true_posterior(x)
    z = mean + std * torch.randn(5, *mean.shape, dtype=torch.float64)
    posterior = Independent(Normal(mean, std), 1)
    torch.testing.assert_close(log_weights_of(model, x, z, posterior),
                               by_torch.expand(5, -1))


def test_log_likelihood_estimate_right_answer_passes(capsys):
    out = assert_passes(check.log_likelihood_estimate(estimate_right), capsys)
    assert "K = 1000" in out and "K = 100" in out


def test_log_likelihood_estimate_averaging_the_weights_underflows(capsys):
    def in_probability_space(model, x, num_samples):
        q = model.encode(x)
        z = q.sample((num_samples,))
        return log_weights_of(model, x, z, q).exp().mean(0).log()

    assert_fails_with(check.log_likelihood_estimate(in_probability_space), capsys,
                      "probability space", "underflows", "logsumexp")


def test_log_likelihood_estimate_without_minus_log_k(capsys):
    def without_log_k(model, x, num_samples):
        q = model.encode(x)
        z = q.sample((num_samples,))
        return torch.logsumexp(log_weights_of(model, x, z, q), dim=0)

    out = assert_fails_with(check.log_likelihood_estimate(without_log_k), capsys,
                            "-log K of the mean is missing", "log 1000 = 6.91",
                            "log 100 = 4.61")
    assert "prior" not in out


def test_log_likelihood_estimate_that_averages_the_log_weights(capsys):
    def elbo_instead(model, x, num_samples):
        q = model.encode(x)
        z = q.sample((num_samples,))
        return log_weights_of(model, x, z, q).mean(0)  # a mean of logs: the ELBO

    out = assert_fails_with(check.log_likelihood_estimate(elbo_instead), capsys,
                            "That is the ELBO", "a looser bound", "below log p(x)",
                            "torch.logsumexp(log_w, dim=0) - math.log(K)")
    assert "Check each term" not in out


def test_log_likelihood_estimate_drawing_from_the_prior(capsys):
    def from_the_prior(model, x, num_samples):
        q = model.encode(x)
        z = model.prior().sample((num_samples, len(x)))
        return torch.logsumexp(log_weights_of(model, x, z, q), 0) - math.log(num_samples)

    def naive(model, x, num_samples):
        z = model.prior().sample((num_samples, len(x)))
        log_lik = model.decode(z).log_prob(x)
        return torch.logsumexp(log_lik, 0) - math.log(num_samples)

    for fn in (from_the_prior, naive):
        assert_fails_with(check.log_likelihood_estimate(fn), capsys,
                          "drawn from the prior", "draw z from q(z|x)")


def test_log_likelihood_estimate_scoring_q_at_another_draw(capsys):
    def another_draw(model, x, num_samples):
        q = model.encode(x)
        z = q.sample((num_samples,))
        log_w = (model.decode(z).log_prob(x) + model.prior().log_prob(z)
                 - q.log_prob(q.sample((num_samples,))))  # a second, different draw
        return torch.logsumexp(log_w, 0) - math.log(num_samples)

    def another_noise(model, x, num_samples):
        q = model.encode(x)
        z, other = (q.mean + q.stddev * torch.randn(num_samples, *q.mean.shape,
                                                   dtype=q.mean.dtype)
                    for _ in range(2))
        log_w = (model.decode(z).log_prob(x) + model.prior().log_prob(z)
                 - q.log_prob(other))
        return torch.logsumexp(log_w, 0) - math.log(num_samples)

    assert_fails_with(check.log_likelihood_estimate(another_draw), capsys,
                      "sampled more than once", "same draws", "q.log_prob(z)")
    assert_fails_with(check.log_likelihood_estimate(another_noise), capsys,
                      "above the exact log p(x)", "same z")


def test_log_likelihood_estimate_averaged_over_the_images(capsys):
    def over_images(model, x, num_samples):
        q = model.encode(x)
        z = q.sample((num_samples,))
        return torch.logsumexp(log_weights_of(model, x, z, q), 1) - math.log(num_samples)

    assert_fails_with(check.log_likelihood_estimate(over_images), capsys,
                      "returned shape (1000,)", "over the K samples only")


def test_log_likelihood_estimate_misuse_raises():
    with pytest.raises(TypeError, match="no parentheses"):
        check.log_likelihood_estimate(estimate_right(check.LinearGaussianVAE(),
                                                     torch.zeros(1, 784), 10))
    with pytest.raises(ValueError, match="at least 100"):
        check.log_likelihood_estimate(estimate_right, num_samples=10)
# ------------------------------------------------------- conditional negative ELBO


def conditional_loss_right(model, x, y):
    posterior = model.encode(x, y)
    z = posterior.rsample()
    return -(model.decode(z, y).log_prob(x) - kl_of_posterior(posterior)).mean()


def conditional_loss_by_hand(model, x, y, one_hot=None, encoder_sees_y=True,
                             decoder_sees_y=True, pixel_mean=False):
    """The loss through the raw networks; each keyword plants one mistake."""
    one_hot = F.one_hot(y, 10).float() if one_hot is None else one_hot
    encoder_input = torch.cat([x, one_hot], -1) if encoder_sees_y else x
    posterior = vc.distributions.posterior_from_encoder(model.encoder(encoder_input))
    z = posterior.rsample()
    decoder_input = torch.cat([z, one_hot], -1) if decoder_sees_y else z
    logits = model.decoder(decoder_input)
    reconstruction = Independent(Bernoulli(logits=logits), 1).log_prob(x)
    if pixel_mean:
        reconstruction = reconstruction / 784
    return -(reconstruction - kl_of_posterior(posterior)).mean()


def test_conditional_negative_elbo_right_answers_pass(capsys):
    out = assert_passes(check.conditional_negative_elbo(conditional_loss_right,
                                                        num_calls=100), capsys)
    assert "the encoder gets the pixels x and the one-hot of y" in out
    assert_passes(check.conditional_negative_elbo(conditional_loss_by_hand,
                                                  num_calls=100), capsys)
    by_package = lambda m, x, y: vc.elbo.negative_elbo(m, x, labels=y)  # noqa: E731
    assert_passes(check.conditional_negative_elbo(by_package, num_calls=100), capsys)


def test_conditional_encoder_forgotten(capsys):
    def no_label_in_the_encoder(model, x, y):
        return conditional_loss_by_hand(model, x, y, encoder_sees_y=False)

    out = assert_fails_with(check.conditional_negative_elbo(no_label_in_the_encoder),
                            capsys, "The encoder got 784 inputs: only its own input, "
                            "no label")
    assert "decoder" not in out.split("✗")[-1]  # the encoder is named, not the decoder


def test_conditional_decoder_forgotten(capsys):
    def no_label_in_the_decoder(model, x, y):
        return conditional_loss_by_hand(model, x, y, decoder_sees_y=False)

    out = assert_fails_with(check.conditional_negative_elbo(no_label_in_the_decoder),
                            capsys, "The decoder got 4 inputs: only its own input")
    assert "✓ the encoder gets the pixels x" in out


def test_conditional_one_hot_without_num_classes(capsys):
    def too_narrow(model, x, y):
        return conditional_loss_by_hand(model, x, y, one_hot=F.one_hot(y).float())

    assert_fails_with(check.conditional_negative_elbo(too_narrow), capsys,
                      "the label part has 7 columns, the model expects 10",
                      "F.one_hot(y) without num_classes makes max(y) + 1 columns")


def test_conditional_label_as_a_float_number(capsys):
    def as_a_number(model, x, y):
        return conditional_loss_by_hand(model, x, y, one_hot=y[:, None].float())

    assert_fails_with(check.conditional_negative_elbo(as_a_number), capsys,
                      "The encoder got 785 inputs", "the label went in as one number")


def test_conditional_one_hot_of_other_labels_or_in_front(capsys):
    def other_labels(model, x, y):
        return conditional_loss_by_hand(model, x, y,
                                        one_hot=F.one_hot(y.flip(0), 10).float())

    assert_fails_with(check.conditional_negative_elbo(other_labels), capsys,
                      "are not the one-hot of y")

    def one_hot_first(model, x, y):
        one_hot = F.one_hot(y, 10).float()
        posterior = vc.distributions.posterior_from_encoder(
            model.encoder(torch.cat([one_hot, x], -1)))
        z = posterior.rsample()
        return -(model.decode(z, y).log_prob(x) - kl_of_posterior(posterior)).mean()

    assert_fails_with(check.conditional_negative_elbo(one_hot_first), capsys,
                      "the one-hot comes first")


def test_conditional_loss_with_a_wrong_reduction_still_gets_its_hint(capsys):
    def pixel_mean(model, x, y):
        return conditional_loss_by_hand(model, x, y, pixel_mean=True)

    out = assert_fails_with(check.conditional_negative_elbo(pixel_mean, num_calls=100),
                            capsys, "Mean over pixels instead of sum")
    assert "✓ the decoder gets the code z and the one-hot of y" in out


def test_conditional_checker_needs_a_conditional_model():
    with pytest.raises(TypeError, match="conditional VAE"):
        check.conditional_negative_elbo(conditional_loss_right,
                                        vc.models.build_vae(latent_dim=2),
                                        torch.zeros(2, 784), torch.zeros(2).long())
    with pytest.raises(ValueError, match="together"):
        check.conditional_negative_elbo(conditional_loss_right,
                                        vc.models.build_vae(latent_dim=2))


def test_conditional_loss_that_never_uses_the_model(capsys):
    def constant(model, x, y):
        return torch.tensor(1.0, requires_grad=True)

    assert_fails_with(check.conditional_negative_elbo(constant), capsys,
                      "never called model.encoder (or model.encode)")
def test_negative_elbo_with_sigma_for_the_log_variance(capsys):
    right = loss_with_log_var(lambda sigma: 2 * sigma.log())
    assert_passes(check.negative_elbo(right, num_calls=100), capsys)
    assert_fails_with(check.negative_elbo(loss_with_log_var(lambda sigma: sigma),
                                          num_calls=100),
                      capsys, "You passed sigma where log sigma^2 is expected")
    assert_fails_with(check.negative_elbo(loss_with_log_var(torch.log), num_calls=100),
                      capsys, "You passed log sigma where log sigma^2 is expected")


def test_negative_elbo_with_sample_instead_of_rsample(capsys):
    out = assert_fails_with(check.negative_elbo(loss_with_sample, num_calls=100),
                            capsys, "the gradient does not reach the encoder",
                            "use rsample")
    assert "1 of 4 checks failed" in out  # the values themselves are right


def test_negative_elbo_with_the_kl_784_times_too_large(capsys):
    out = assert_fails_with(check.negative_elbo(loss_kl_784_times, num_calls=100),
                            capsys, "KL is 784x too large")
    assert "Mean over pixels" not in out
# ------------------------------------------------------------------ bits per dim

LN2 = math.log(2)


def bits_right(log_p):
    return -log_p / (784 * LN2)


def dequantized_bits_right(log_density):
    return (-log_density + 784 * math.log(256)) / (784 * LN2)


def test_bits_per_dim_right_answers_pass(capsys):
    assert_passes(check.bits_per_dim(bits_right), capsys)
    assert_passes(check.bits_per_dim(lambda log_p: vc.evaluate.bits_per_dim(-log_p)),
                  capsys)
    assert_passes(check.bits_per_dim(lambda log_p: -log_p * math.log2(math.e) / 784),
                  capsys)
    out = assert_passes(check.bits_per_dim(dequantized_bits_right, dequantized=True),
                        capsys)
    assert "8 bits per dimension" in out
    assert_passes(check.bits_per_dim(
        lambda log_p: vc.evaluate.bits_per_dim(-log_p) + 8, dequantized=True), capsys)
    assert_passes(check.bits_per_dim(lambda log_p: -log_p / (3 * LN2), num_dims=3),
                  capsys)


@pytest.mark.parametrize(("wrong", "phrase"), [
    (lambda log_p: -log_p / 784, "Nats are not bits"),
    (lambda log_p: -log_p / (784 * math.log(10)), "log base 10"),
    (lambda log_p: -log_p / LN2, "Bits per image, not per dimension"),
    (lambda log_p: -log_p, "Nats per image"),
    (lambda log_p: -log_p * LN2 / 784, "ln 2 is on the wrong side"),
    (lambda log_p: log_p / (784 * LN2), "sign is flipped"),
    (lambda log_p: -log_p / (784 * LN2) + 8, "nothing is added"),
])
def test_bits_per_dim_slips_get_their_diagnostic(wrong, phrase, capsys):
    assert_fails_with(check.bits_per_dim(wrong), capsys, phrase)


@pytest.mark.parametrize(("wrong", "phrases"), [
    (bits_right, ["bin width is missing", "8 bits per dimension"]),
    (lambda log_p: -log_p / (784 * LN2) + math.log2(255), ["1/255"]),
    (lambda log_p: -log_p / (784 * LN2) - 8, ["wrong sign"]),
    (lambda log_p: -log_p / (784 * LN2) + math.log(256), ["ln 256 is in nats"]),
    (lambda log_p: -log_p / (784 * LN2) + 8 * 784, ["add 8, not 8 x 784"]),
    (lambda log_p: -log_p / (784 * LN2) + 784 * math.log(256), ["nats per image"]),
    # Two slips at once: each is named.
    (lambda log_p: -log_p / (784 * math.log(10)), ["log base 10", "bin width is "
                                                   "missing"]),
    (lambda log_p: (-log_p + 784 * math.log(256)) / 784, ["Nats are not bits"]),
    (lambda log_p: (log_p + 784 * math.log(256)) / (784 * LN2), ["sign is flipped"]),
])
def test_dequantized_bits_per_dim_slips_get_their_diagnostic(wrong, phrases, capsys):
    out = assert_fails_with(check.bits_per_dim(wrong, dequantized=True), capsys,
                            *phrases)
    if phrases == ["Nats are not bits"]:  # the bin width was converted the same way
        assert "bin width" not in out.split("equals")[-1]


def test_bits_per_dim_shapes_types_and_crashes_are_reported(capsys):
    assert_fails_with(check.bits_per_dim(lambda log_p: bits_right(log_p).mean()),
                      capsys, "too early a reduction")
    assert_fails_with(check.bits_per_dim(lambda log_p: bits_right(log_p).tolist()),
                      capsys, "returned list")
    assert_fails_with(check.bits_per_dim(lambda log_p: log_p.log() / LN2), capsys,
                      "is finite")
    assert_fails_with(check.bits_per_dim(lambda log_p: 1 / 0), capsys,
                      "ZeroDivisionError")
    assert_fails_with(check.bits_per_dim(lambda log_p: (-log_p / (784 * LN2)) ** 2),
                      capsys, "not a fixed multiple")
    with pytest.raises(TypeError):
        check.bits_per_dim(bits_right(torch.ones(2)))
    with pytest.raises(ValueError, match="num_dims"):
        check.bits_per_dim(bits_right, num_dims=0)
# ------------------------------------------------------------- the k-sample bound


def drawn_log_weights(model, x, k, draw="rsample"):
    """log p(x|z_i) + log p(z_i) - log q(z_i|x) for k draws: (k, batch)."""
    posterior = model.encode(x)
    z = getattr(posterior, draw)((k,))  # (k, batch, latent_dim)
    return (model.decode(z).log_prob(x) + model.prior().log_prob(z)
            - posterior.log_prob(z))


def bound_right(model, x, k):
    return torch.logsumexp(drawn_log_weights(model, x, k), dim=0) - math.log(k)


def test_iwae_bound_right_answers_pass(capsys):
    out = assert_passes(check.iwae_bound(bound_right), capsys)
    assert "its average over 200 calls is L_10" in out
    assert_passes(check.iwae_bound(vc.elbo.iwae_bound, num_samples=5), capsys)


def test_iwae_bound_that_averages_the_log_weights(capsys):
    def bound_mean_of_logs(model, x, k):
        return drawn_log_weights(model, x, k).mean(0)

    assert_fails_with(check.iwae_bound(bound_mean_of_logs), capsys,
                      "That is the ELBO: the log-weights were averaged")


def test_iwae_bound_that_forgets_the_log_k(capsys):
    def bound_without_log_k(model, x, k):
        return torch.logsumexp(drawn_log_weights(model, x, k), dim=0)

    assert_fails_with(check.iwae_bound(bound_without_log_k), capsys,
                      "too large by log k = 2.30 nats: the -log k is missing")


def test_iwae_bound_drawn_with_sample_instead_of_rsample(capsys):
    def bound_sampled(model, x, k):
        log_w = drawn_log_weights(model, x, k, draw="sample")
        return torch.logsumexp(log_w, dim=0) - math.log(k)

    out = assert_fails_with(check.iwae_bound(bound_sampled), capsys,
                            "codes the decoder received carry no gradient",
                            "not sample()")
    assert "✓ is finite" in out


def test_iwae_bound_that_exponentiates_the_weights(capsys):
    def bound_naive(model, x, k):
        return drawn_log_weights(model, x, k).exp().mean(0).log()

    assert_fails_with(check.iwae_bound(bound_naive), capsys, "✗ is finite",
                      "exp() of them is 0 in float32")


def test_iwae_bound_over_the_wrong_dimension_or_detached(capsys):
    def bound_over_the_batch(model, x, k):
        return torch.logsumexp(drawn_log_weights(model, x, k), dim=1) - math.log(k)

    assert_fails_with(check.iwae_bound(bound_over_the_batch), capsys,
                      "it returned shape (10,)", "keep the batch dimension")

    def bound_detached(model, x, k):
        return bound_right(model, x, k).detach()

    assert_fails_with(check.iwae_bound(bound_detached), capsys, "has no grad_fn")


def test_iwae_bound_misuse_raises_and_the_random_state_is_left_alone():
    with pytest.raises(TypeError):
        check.iwae_bound(3)
    with pytest.raises(ValueError, match="at least 2"):
        check.iwae_bound(bound_right, num_samples=1)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    check.iwae_bound(bound_right, num_calls=5)
    assert torch.equal(torch.rand(3), expected)
# ------------------------------------------------------- log p(x) by quadrature


def quadrature_right(model, x, axis):
    codes = torch.cartesian_prod(axis, axis)  # (n * n, 2)
    log_joint = (model.decode(codes).log_prob(x)
                 + Normal(0.0, 1.0).log_prob(codes).sum(-1))  # (n * n,)
    step = (axis[1] - axis[0]).item()
    return torch.logsumexp(log_joint, 0) + 2 * math.log(step)


def test_quadrature_right_answer_passes(capsys):
    assert_passes(check.quadrature_log_likelihood(quadrature_right), capsys)


def test_quadrature_without_the_cell_area(capsys):
    def no_area(model, x, axis):
        return quadrature_right(model, x, axis) - 2 * math.log(axis[1] - axis[0])

    assert_fails_with(check.quadrature_log_likelihood(no_area), capsys,
                      "log of the cell area is missing")


def test_quadrature_with_one_side_of_the_cell(capsys):
    def one_side(model, x, axis):
        return quadrature_right(model, x, axis) - math.log(axis[1] - axis[0])

    assert_fails_with(check.quadrature_log_likelihood(one_side), capsys,
                      "Only one side of the cell")


def test_quadrature_summing_densities(capsys):
    def densities(model, x, axis):
        codes = torch.cartesian_prod(axis, axis)
        log_joint = (model.decode(codes).log_prob(x)
                     + Normal(0.0, 1.0).log_prob(codes).sum(-1))
        return torch.log(log_joint.exp().sum() * (axis[1] - axis[0]) ** 2)

    assert_fails_with(check.quadrature_log_likelihood(densities), capsys,
                      "underflows", "logsumexp")


def test_quadrature_on_a_grid_of_its_own(capsys):
    def own_grid(model, x, axis):
        return quadrature_right(model, x, torch.linspace(-3.0, 3.0, 121))

    out = assert_fails_with(check.quadrature_log_likelihood(own_grid), capsys,
                            "does your grid reach it")
    assert "✓ equals the grid's sum for an image whose posterior is near" in out


def test_quadrature_without_the_prior(capsys):
    def no_prior(model, x, axis):
        codes = torch.cartesian_prod(axis, axis)
        return (torch.logsumexp(model.decode(codes).log_prob(x), 0)
                + 2 * math.log(axis[1] - axis[0]))

    assert_fails_with(check.quadrature_log_likelihood(no_prior), capsys,
                      "log p(z) is missing")
# ------------------------------------------------------- beta-VAE loss, warm-up


def weighted_loss(weight_of):
    """A learner's (loss, negative_elbo) whose KL weight is weight_of(step, beta, T)."""
    def loss(reconstruction, kl, step, beta, warmup_steps):
        weight = weight_of(step, beta, warmup_steps)
        return (-(reconstruction - weight * kl).mean(),
                -(reconstruction - kl).mean())
    return loss


def beta_loss_right(reconstruction, kl, step, beta, warmup_steps):
    weight = beta * min(1.0, step / warmup_steps) if warmup_steps else beta
    return -(reconstruction - weight * kl).mean(), -(reconstruction - kl).mean()


def test_beta_vae_loss_right_answers_pass(capsys):
    assert_passes(check.beta_vae_loss(beta_loss_right), capsys)
    assert_passes(check.beta_vae_loss(weighted_loss(vc.train.warmup_weight)), capsys)
    assert_passes(check.beta_vae_loss(beta_loss_right, beta=0.5, warmup_steps=600),
                  capsys)


def test_beta_vae_loss_with_beta_on_the_reconstruction(capsys):
    def on_reconstruction(reconstruction, kl, step, beta, warmup_steps):
        weight = vc.train.warmup_weight(step, beta, warmup_steps)
        return -(weight * reconstruction - kl).mean(), -(reconstruction - kl).mean()

    assert_fails_with(check.beta_vae_loss(on_reconstruction), capsys,
                      "reconstruction term is multiplied by a weight",
                      "The weight belongs on the KL")


def test_beta_vae_loss_with_a_flipped_kl_or_summed_over_the_batch(capsys):
    assert_fails_with(check.beta_vae_loss(
        lambda r, kl, t, b, T: beta_loss_right(r, -kl, t, b, T)), capsys,
        "Flipped KL sign")
    assert_fails_with(check.beta_vae_loss(
        lambda r, kl, t, b, T: tuple(5 * v for v in beta_loss_right(r, kl, t, b, T))),
        capsys, "5x too large")


@pytest.mark.parametrize(("weight_of", "phrase"), [
    (lambda t, beta, T: beta * min(1.0, (t - 1) / T), "never reaches β by step T"),
    (lambda t, beta, T: min(1.0, t / T) if T else beta, "rises to 1, not to β"),
    (lambda t, beta, T: 0.9 * beta * min(1.0, t / T) if T else beta,
     "The warm-up never reaches β"),
    (lambda t, beta, T: beta * t / T if T else beta, "keeps growing after step T"),
    (lambda t, beta, T: beta * min(1, t // T) if T else beta, "Integer division"),
    (lambda t, beta, T: beta, "No warm-up"),
], ids=["one step late", "without beta", "short of beta", "no cap",
        "integer division", "no warm-up"])
def test_beta_vae_loss_with_a_wrong_warm_up(weight_of, phrase, capsys):
    assert_fails_with(check.beta_vae_loss(weighted_loss(weight_of)), capsys, phrase)


def test_beta_vae_loss_dividing_by_zero_warm_up_steps(capsys):
    out = assert_fails_with(
        check.beta_vae_loss(weighted_loss(lambda t, beta, T: beta * min(1.0, t / T))),
        capsys, "divided by warmup_steps = 0")
    assert "✓ trains on" in out  # with a warm-up it is right


def test_beta_vae_loss_reporting_the_weighted_loss_as_the_elbo(capsys):
    def reports_the_loss(reconstruction, kl, step, beta, warmup_steps):
        loss, _ = beta_loss_right(reconstruction, kl, step, beta, warmup_steps)
        return loss, loss

    out = assert_fails_with(check.beta_vae_loss(reports_the_loss), capsys,
                            "reports the β-weighted loss")
    assert "✓ trains on" in out


def test_beta_vae_loss_returning_the_wrong_kind_of_thing(capsys):
    assert_fails_with(check.beta_vae_loss(lambda *args: beta_loss_right(*args)[0]),
                      capsys, "return two numbers")
    assert_fails_with(
        check.beta_vae_loss(lambda *args: tuple(v.item()
                                                for v in beta_loss_right(*args))),
        capsys, "(no .item())")


def test_beta_vae_loss_checker_misuse_raises():
    with pytest.raises(ValueError, match="other than 1"):
        check.beta_vae_loss(beta_loss_right, beta=1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        check.beta_vae_loss(beta_loss_right, warmup_steps=0)


# ------------------------------------------------- convolutional encoder, decoder


def kernel3_encoder(unflatten=True, linear_inputs=64 * 7 * 7, outputs=64):
    layers = [nn.Unflatten(1, (1, 28, 28))] if unflatten else []
    return nn.Sequential(
        *layers, nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(linear_inputs, outputs))


def kernel3_decoder(output_padding=1, flatten=True):
    layers = [nn.Flatten()] if flatten else []
    return nn.Sequential(
        nn.Linear(32, 64 * 7 * 7), nn.ReLU(), nn.Unflatten(1, (64, 7, 7)),
        nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1,
                           output_padding=output_padding), nn.ReLU(),
        nn.ConvTranspose2d(32, 1, 3, stride=2, padding=1,
                           output_padding=output_padding), *layers)


def test_conv_vae_right_answers_pass(capsys):
    course = vc.models.build_vae("conv", latent_dim=32)
    out = assert_passes(check.conv_vae(course.encoder, course.decoder), capsys)
    assert "(3) Conv2d           -> (4, 64, 7, 7)" in out  # shapes, layer by layer
    assert_passes(check.conv_vae(kernel3_encoder(), kernel3_decoder()), capsys)
    small = vc.models.build_vae("conv", latent_dim=2)
    assert_passes(check.conv_vae(small.encoder, small.decoder, latent_dim=2), capsys)


def test_conv_vae_transposed_convolution_one_pixel_short(capsys):
    out = assert_fails_with(
        check.conv_vae(kernel3_encoder(), kernel3_decoder(output_padding=0)), capsys,
        "ends at 25x25 pixels", "Layer (3) ConvTranspose2d turns 7 pixels into 13",
        "output_padding=1 adds the missing pixel")
    assert "✓ the encoder returns" in out
    assert "trains inside" not in out  # no training check on broken shapes


def test_conv_vae_where_the_shapes_break(capsys):
    assert_fails_with(check.conv_vae(kernel3_encoder(unflatten=False),
                                     kernel3_decoder()), capsys,
                      "encoder layer (0) Conv2d", "unflatten first")
    assert_fails_with(check.conv_vae(kernel3_encoder(linear_inputs=64 * 8 * 8),
                                     kernel3_decoder()), capsys,
                      "encoder layer (6) Linear", "set in_features to 3136")
    assert_fails_with(check.conv_vae(kernel3_encoder(outputs=32), kernel3_decoder()),
                      capsys, "one number per latent unit", "2 * latent_dim = 64")
    assert_fails_with(check.conv_vae(kernel3_encoder(), kernel3_decoder(flatten=False)),
                      capsys, "end with nn.Flatten()")


def test_conv_vae_with_a_layer_off_the_path(capsys):
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.network = kernel3_encoder()
            self.unused = nn.Linear(3, 3)

        def forward(self, x):
            return self.network(x)

    assert_fails_with(check.conv_vae(Encoder(), kernel3_decoder()), capsys,
                      "no gradient reaches ['encoder.unused.weight'")


def test_conv_vae_checker_misuse_raises():
    with pytest.raises(TypeError, match="nn.Module"):
        check.conv_vae(lambda x: x, kernel3_decoder())
    with pytest.raises(ValueError, match="latent_dim"):
        check.conv_vae(kernel3_encoder(), kernel3_decoder(), latent_dim=0)
# ---------------------------------------------------------------- ELBO estimate


def evaluate_right(model, x):
    with torch.no_grad():
        return loss_right(model, x).item()              # a float is fine here


def evaluate_at_the_mean(model, x):
    # The PyTorch examples VAE's test loss: z = mu when the model is in eval mode.
    posterior = model.encode(x)
    logits = model.decoder(posterior.mean)
    reconstruction = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    return (reconstruction + kl_of_posterior(posterior).sum()) / len(x)


def test_elbo_estimate_right_answers_pass(capsys):
    assert_passes(check.elbo_estimate(evaluate_right, num_calls=100), capsys)
    assert_passes(check.elbo_estimate(loss_right, num_calls=100), capsys)


def test_elbo_estimate_at_the_posterior_mean(capsys):
    out = assert_fails_with(check.elbo_estimate(evaluate_at_the_mean, num_calls=100),
                            capsys, "It is computed at z = mu",
                            "lower than the -ELBO", "not an ELBO estimate")
    assert "returns one number" in out


def test_elbo_estimate_averaged_over_pixels(capsys):
    def evaluate_pixel_mean(model, x):
        with torch.no_grad():
            return loss_pixel_mean(model, x)

    assert_fails_with(check.elbo_estimate(evaluate_pixel_mean, num_calls=100), capsys,
                      "Mean over pixels instead of sum")


def test_elbo_estimate_summed_over_the_batch_restores_the_mode(capsys):
    model, images = check._default_model_and_images()
    model.train()
    assert_fails_with(check.elbo_estimate(lambda m, x: loss_right(m, x) * len(x),
                                          model, images, num_calls=100),
                      capsys, "8x too large")
    assert model.training


def test_elbo_estimate_returning_a_vector(capsys):
    def per_image(model, x):
        posterior = model.encode(x)
        return -(model.decode(posterior.rsample()).log_prob(x)
                 - kl_of_posterior(posterior))

    assert_fails_with(check.elbo_estimate(per_image), capsys,
                      "returned shape (8,)", "average")


# ---------------------------------------------------- encoder head and q(z|x)


class HeadRight(torch.nn.Module):
    """The PyTorch examples' fc21 and fc22."""

    def __init__(self, in_features=10, latent_dim=3, activation=None):
        super().__init__()
        self.fc21 = torch.nn.Linear(in_features, latent_dim)
        self.fc22 = torch.nn.Linear(in_features, latent_dim)
        self.activation = activation or (lambda v: v)

    def forward(self, h):
        return self.fc21(h), self.activation(self.fc22(h))


def test_encoder_head_right_answers_pass(capsys):
    torch.manual_seed(0)
    assert_passes(check.encoder_head(HeadRight(), 10, 3), capsys)
    one_layer = torch.nn.Linear(10, 6)
    assert_passes(check.encoder_head(lambda h: one_layer(h).chunk(2, dim=-1), 10, 3),
                  capsys)


def test_encoder_head_that_is_not_split(capsys):
    assert_fails_with(check.encoder_head(torch.nn.Linear(10, 6), 10, 3), capsys,
                      "one tensor of shape (5, 6)", "chunk(2, dim=-1)")


def test_encoder_head_with_an_activation_on_the_log_variance(capsys):
    torch.manual_seed(0)
    head = HeadRight(activation=F.softplus)
    out = assert_fails_with(check.encoder_head(head, 10, 3), capsys,
                            "log_var is never negative", "no ReLU, softplus or exp")
    assert "mu and log_var is" not in out


def test_encoder_head_with_one_output_twice_and_wrong_shapes(capsys):
    layer = torch.nn.Linear(10, 3)
    assert_fails_with(check.encoder_head(lambda h: (layer(h), layer(h)), 10, 3),
                      capsys, "same numbers")
    assert_fails_with(check.encoder_head(lambda h: (layer(h), layer(h).T), 10, 3),
                      capsys, "shapes (5, 3) and (3, 5)")


def test_encoder_head_with_a_detached_layer(capsys):
    head = HeadRight()
    head.forward = lambda h: (head.fc21(h), head.fc22(h).detach())
    assert_fails_with(check.encoder_head(head, 10, 3), capsys,
                      "2 of 4 parameter tensors get no gradient")


def posterior_right(mu, log_var):
    return Independent(Normal(mu, (0.5 * log_var).exp()), 1)


def test_posterior_right_answers_pass(capsys):
    assert_passes(check.posterior(posterior_right), capsys)
    assert_passes(check.posterior(
        lambda mu, log_var: Independent(Normal(mu, log_var.exp().sqrt()), 1)), capsys)


@pytest.mark.parametrize(("scale", "phrase"), [
    (lambda v: v.exp(), "the variance"),
    (lambda v: F.softplus(v), "That is softplus(log_var)"),
    (lambda v: F.softplus(v).sqrt(), "undo it with exp, not softplus"),
    (lambda v: (2 * v).exp(), "treats log_var as log sigma"),
])
def test_posterior_with_the_wrong_scale(scale, phrase, capsys):
    out = assert_fails_with(
        check.posterior(lambda mu, v: Independent(Normal(mu, scale(v)), 1)), capsys,
        phrase)
    assert "✓ has mean mu" in out


def test_posterior_with_log_var_as_the_scale(capsys):
    assert_fails_with(check.posterior(lambda mu, v: Independent(Normal(mu, v), 1)),
                      capsys, "The scale must be positive")


def test_posterior_without_independent(capsys):
    out = assert_fails_with(
        check.posterior(lambda mu, v: Normal(mu, (0.5 * v).exp())), capsys,
        "batch shape (3, 8)", "Independent(..., 1)")
    assert "✓ has standard deviation" in out  # the moments are still checked


def test_posterior_with_two_slips_gets_both_diagnostics(capsys):
    out = assert_fails_with(check.posterior(lambda mu, v: Normal(mu, v.exp())), capsys,
                            "Independent(..., 1)", "the variance")
    assert "2 of 5 checks failed" in out


def test_posterior_with_swapped_arguments_or_no_gradient(capsys):
    assert_fails_with(check.posterior(lambda mu, v: posterior_right(v, mu)), capsys,
                      "swapped")
    assert_fails_with(check.posterior(
        lambda mu, v: posterior_right(mu, v.detach())), capsys,
        "no gradient reaches log_var")
    assert_fails_with(check.posterior(lambda mu, v: (mu, v)), capsys,
                      "returned tuple")


# --------------------------------------------------------------- interpolation


def interpolate_right(model, x_a, x_b, steps):
    with torch.no_grad():
        start, end = model.encode(torch.stack([x_a, x_b])).mean
        t = torch.linspace(0, 1, steps)[:, None]
        return model.decode((1 - t) * start + t * end).mean


def test_interpolation_right_answers_pass(capsys):
    assert_passes(check.interpolation(interpolate_right), capsys)
    assert_passes(check.interpolation(vc.plots.interpolate), capsys)


def test_interpolation_with_random_codes(capsys):
    def interpolate_drawn(model, x_a, x_b, steps):
        start, end = model.encode(torch.stack([x_a, x_b])).rsample()
        t = torch.linspace(0, 1, steps)[:, None]
        return model.decode((1 - t) * start + t * end).mean

    assert_fails_with(check.interpolation(interpolate_drawn), capsys,
                      "the frames change between calls", "rsample")


def test_interpolation_decoding_draws(capsys):
    def interpolate_draws(model, x_a, x_b, steps):
        start, end = model.encode(torch.stack([x_a, x_b])).mean
        t = torch.linspace(0, 1, steps)[:, None]
        return model.decode((1 - t) * start + t * end).sample()

    assert_fails_with(check.interpolation(interpolate_draws), capsys,
                      "those are draws (.sample())")


@pytest.mark.parametrize(("wrong", "phrase"), [
    (lambda m, a, b, n: interpolate_right(m, b, a, n), "runs from x_b to x_a"),
    (lambda m, a, b, n: interpolate_right(m, a, b, n + 1)[:-1], "stops short"),
    (lambda m, a, b, n: interpolate_right(m, a, b, n - 1), "both ends included"),
    (lambda m, a, b, n: torch.lerp(a, b, torch.linspace(0, 1, n)[:, None]),
     "blends the pixels"),
    (lambda m, a, b, n: m.decoder(torch.zeros(n, m.latent_dim)), "look like logits"),
])
def test_interpolation_slips(wrong, phrase, capsys):
    assert_fails_with(check.interpolation(wrong), capsys, phrase)
