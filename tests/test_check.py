"""The learner-facing checker: right answers pass, typical mistakes get their hint.

Every wrong answer below is a mistake learners make (and that the two blog posts the
course grew from show); each test asserts on the printed diagnostic, so a checker
that fails for the wrong reason, or passes a wrong answer, fails here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Independent, Normal

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


# ------------------------------------------------------------------ negative ELBO


def loss_right(model, x):
    posterior = model.encode(x)
    z = posterior.rsample()
    return -(model.decode(z).log_prob(x) - kl_of_posterior(posterior)).mean()


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
