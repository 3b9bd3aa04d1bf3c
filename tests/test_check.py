"""The learner-facing checker: right answers pass, typical mistakes get their hint.

Every wrong answer below is a mistake learners make (and that the two blog posts the
course grew from show); each test asserts on the printed diagnostic, so a checker
that fails for the wrong reason, or passes a wrong answer, fails here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
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
