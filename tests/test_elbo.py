"""The ELBO's maths, against PyTorch's own distributions and against each other.

The Deep Bayes tutorial writes the loss with ``torch.distributions`` and a Monte Carlo
KL; the PyTorch examples VAE writes it with ``binary_cross_entropy_with_logits`` and
the closed-form KL. Both are
checked here against the helper and against each other. The k-sample bound of the
IWAE is checked against ``torch.distributions`` and a hand-written ``logsumexp``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Independent, Normal, kl_divergence

from vae_course.distributions import GreyPixelsError, posterior_from_encoder
from vae_course.elbo import (
    cross_entropy_standard_normal,
    elbo_terms,
    entropy_normal,
    iwae_bound,
    iwae_terms,
    kl_standard_normal,
    log_importance_weights,
    mean_terms,
    negative_elbo,
)
from vae_course.evaluate import importance_weighted_log_likelihood
from vae_course.models import build_vae


def small_model(latent_dim=3, hidden=(16,), likelihood="bernoulli", seed=0):
    """A small MLP VAE whose posteriors are far from the prior (a non-trivial KL)."""
    torch.manual_seed(seed)
    model = build_vae(latent_dim=latent_dim, hidden_sizes=hidden,
                      likelihood=likelihood)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        last = model.encoder[-1]
        last.bias[:latent_dim] = torch.randn(latent_dim, generator=generator)
        last.bias[latent_dim:] = torch.empty(latent_dim).uniform_(
            -2.0, 0.5, generator=generator)
    return model


def binary_images(n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, 784), 0.3), generator=generator)


def random_posterior(batch=6, latent_dim=5, dtype=torch.float32, requires_grad=False):
    generator = torch.Generator().manual_seed(42)
    loc = torch.randn(batch, latent_dim, generator=generator, dtype=dtype) * 2
    log_scale = torch.empty(batch, latent_dim, dtype=dtype).uniform_(
        -3, 2, generator=generator)
    output = torch.cat([loc, log_scale], dim=1).requires_grad_(requires_grad)
    return output, posterior_from_encoder(output)


def standard_normal(latent_dim, dtype):
    loc = torch.zeros(latent_dim, dtype=dtype)
    return Independent(Normal(loc, torch.ones_like(loc)), 1)


# --- closed forms -------------------------------------------------------------

@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-10),
                                                  (torch.float32, 1e-5)])
def test_closed_forms_agree_with_torch_distributions(dtype, tolerance):
    _, posterior = random_posterior(dtype=dtype)
    prior = standard_normal(5, dtype)
    entropy = entropy_normal(posterior)
    cross_entropy = cross_entropy_standard_normal(posterior)
    kl = kl_standard_normal(posterior)
    torch_kl = kl_divergence(posterior, prior)
    close = {"rtol": tolerance, "atol": tolerance}
    assert entropy.shape == cross_entropy.shape == kl.shape == (6,)
    torch.testing.assert_close(entropy, posterior.entropy(), **close)
    torch.testing.assert_close(kl, torch_kl, **close)
    torch.testing.assert_close(cross_entropy - entropy, torch_kl, **close)
    torch.testing.assert_close(cross_entropy, torch_kl + posterior.entropy(), **close)
    assert (kl > 0).all()


def test_closed_forms_are_exact_for_the_prior_itself():
    posterior = posterior_from_encoder(torch.zeros(2, 8))  # N(0, I)
    torch.testing.assert_close(kl_standard_normal(posterior), torch.zeros(2))
    expected = 0.5 * 4 * (1 + math.log(2 * math.pi))  # 4 units of N(0, 1)
    torch.testing.assert_close(entropy_normal(posterior), torch.full((2,), expected))
    torch.testing.assert_close(cross_entropy_standard_normal(posterior),
                               torch.full((2,), expected))


# --- Monte Carlo against closed form ------------------------------------------

def test_monte_carlo_kl_converges_to_the_closed_form():
    model, x = small_model(), binary_images(1)
    num_samples = 20_000
    exact = elbo_terms(model, x)  # closed form
    torch.manual_seed(0)
    estimate = elbo_terms(model, x, num_samples=num_samples, closed_form=False)
    # Standard errors from an independent set of draws of the same quantities.
    posterior, prior = model.encode(x), model.prior()
    with torch.no_grad():
        z = posterior.sample((num_samples,))
        log_q, log_p = posterior.log_prob(z), prior.log_prob(z)  # (samples, batch)
    root_n = math.sqrt(num_samples)
    for name, draws in (("kl", log_q - log_p), ("entropy", -log_q),
                        ("cross_entropy", -log_p)):
        standard_error = draws.std(0) / root_n
        error = (estimate[name] - exact[name]).abs().detach()
        assert (error < 5 * standard_error).all(), (name, error, standard_error)
    assert (exact["kl"] > 10 * (log_q - log_p).std(0) / root_n).all()  # not trivial


def test_monte_carlo_kl_error_shrinks_with_more_samples():
    model, x = small_model(), binary_images(1)
    exact = elbo_terms(model, x)["kl"].detach()

    def mean_error(num_samples, repeats=16):
        errors = []
        for repeat in range(repeats):
            torch.manual_seed(repeat)
            with torch.no_grad():
                terms = elbo_terms(model, x, num_samples=num_samples, closed_form=False)
            errors.append((terms["kl"] - exact).abs().mean())
        return torch.stack(errors).mean()

    few, many = mean_error(40), mean_error(4000)
    # The standard error falls as 1/sqrt(n): ten times smaller here.
    assert many < few / 4, (few, many)


def test_closed_form_flag_changes_only_the_entropy_terms():
    model, x = small_model(), binary_images(4)
    torch.manual_seed(3)
    closed = elbo_terms(model, x, num_samples=3)
    torch.manual_seed(3)
    sampled = elbo_terms(model, x, num_samples=3, closed_form=False)
    # One set of draws serves both: the reconstruction term is identical.
    torch.testing.assert_close(closed["reconstruction"], sampled["reconstruction"])
    assert not torch.allclose(closed["kl"], sampled["kl"])


def test_terms_fit_together_and_average_the_samples():
    model, x = small_model(), binary_images(4)
    torch.manual_seed(9)
    terms = elbo_terms(model, x, num_samples=5)
    assert set(terms) == {"reconstruction", "entropy", "cross_entropy", "kl", "elbo"}
    for value in terms.values():
        assert value.shape == (4,)
    torch.testing.assert_close(terms["kl"], terms["cross_entropy"] - terms["entropy"])
    torch.testing.assert_close(terms["elbo"], terms["reconstruction"] - terms["kl"])
    torch.manual_seed(9)
    z = model.encode(x).rsample((5,))  # the same draws
    logits = model.decoder(z)  # (5, 4, 784)
    bce = F.binary_cross_entropy_with_logits(logits, x.expand_as(logits),
                                             reduction="none").sum(-1)
    torch.testing.assert_close(terms["reconstruction"], -bce.mean(0))


@pytest.mark.parametrize("closed_form", [True, False])
def test_one_draw_gives_the_numbers_of_a_samples_axis_of_one(closed_form):
    # The trainer's path draws z without a samples axis; written with one, the
    # same draw must give the same terms and the same gradients, bit for bit.
    model, x = small_model(), binary_images(4)
    torch.manual_seed(5)
    terms = elbo_terms(model, x, num_samples=1, closed_form=closed_form)
    terms["elbo"].sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.manual_seed(5)
    posterior = model.encode(x)
    z = posterior.rsample((1,))  # (1, 4, latent_dim)
    reconstruction = model.decode(z).log_prob(x).mean(0)
    if closed_form:
        kl = cross_entropy_standard_normal(posterior) - entropy_normal(posterior)
    else:
        kl = (posterior.log_prob(z) - model.prior().log_prob(z)).mean(0)
    (reconstruction - kl).sum().backward()
    assert terms["reconstruction"].shape == (4,) and terms["kl"].shape == (4,)
    assert torch.equal(terms["reconstruction"], reconstruction)
    assert torch.equal(terms["kl"], kl)
    for mine, reference in zip(grads, (p.grad for p in model.parameters()),
                               strict=True):
        assert torch.equal(mine, reference)


@pytest.mark.parametrize("num_samples", [0, -1])
def test_elbo_terms_refuses_no_samples(num_samples):
    with pytest.raises(ValueError, match="num_samples"):
        elbo_terms(small_model(), binary_images(2), num_samples=num_samples)


# --- the Deep Bayes and the PyTorch examples losses agree -------------------

def pytorch_examples_pieces(model, x):
    """pytorch/examples style: mu, logvar, reparameterize, BCE + KLD."""
    output = model.encoder(x)
    mu, log_scale = output.chunk(2, dim=-1)
    logvar = 2 * log_scale
    std = torch.exp(0.5 * logvar)
    z = mu + torch.randn_like(std) * std
    logits = model.decoder(z)
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return z, logits, bce, kld


def test_reconstruction_term_equals_minus_bce_for_the_same_z():
    model, x = small_model(), binary_images(8)
    torch.manual_seed(11)
    terms = elbo_terms(model, x)
    torch.manual_seed(11)
    _, _, bce, _ = pytorch_examples_pieces(model, x)
    torch.testing.assert_close(terms["reconstruction"].sum(), -bce)


def test_negative_elbo_equals_the_pytorch_examples_loss_for_the_same_z():
    model, x = small_model(), binary_images(8)
    torch.manual_seed(12)
    loss, _ = negative_elbo(model, x)
    torch.manual_seed(12)
    _, _, bce, kld = pytorch_examples_pieces(model, x)
    torch.testing.assert_close(loss, (bce + kld) / len(x))


def test_deep_bayes_loss_equals_the_monte_carlo_path_for_the_same_z():
    model, x = small_model(), binary_images(8)
    torch.manual_seed(13)
    qz_x = model.encode(x)
    z = qz_x.rsample()
    px_z, pz = model.decode(z), model.prior()
    deep_bayes = -(px_z.log_prob(x) + pz.log_prob(z) - qz_x.log_prob(z)).mean()
    torch.manual_seed(13)
    terms = elbo_terms(model, x, closed_form=False)
    torch.testing.assert_close(deep_bayes, -terms["elbo"].mean())


def test_deep_bayes_and_pytorch_examples_losses_agree_in_expectation():
    """Same z for both; only the KL differs (Monte Carlo vs closed form)."""
    model, x = small_model(), binary_images(4)
    num_draws = 2000
    torch.manual_seed(14)
    with torch.no_grad():
        qz_x, pz = model.encode(x), model.prior()
        z = qz_x.rsample((num_draws,))  # (draws, batch, latent)
        px_z = model.decode(z)
        deep_bayes = -(px_z.log_prob(x) + pz.log_prob(z) - qz_x.log_prob(z)).mean(-1)
        mu, log_scale = model.encoder(x).chunk(2, dim=-1)
        logvar = 2 * log_scale
        logits = model.decoder(z)  # the same z, decoded the PyTorch examples way
        bce = F.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none").sum((-1, -2))
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        pytorch_examples = (bce + kld) / len(x)  # (draws,)
    difference = deep_bayes - pytorch_examples
    assert difference.std() > 0  # different estimators draw by draw ...
    standard_error = difference.std() / math.sqrt(num_draws)
    assert difference.mean().abs() < 5 * standard_error  # ... equal on average


# --- the loss: batch size, beta -----------------------------------------------

def z_independent_model():
    """A decoder that ignores z, so the loss with the closed-form KL is exact."""
    model = small_model()
    with torch.no_grad():
        model.decoder[-1].weight.zero_()
        model.decoder[-1].bias.normal_(generator=torch.Generator().manual_seed(5))
    return model


def test_loss_is_a_mean_over_images_not_a_sum():
    model = z_independent_model()
    x = binary_images(10)
    one, _ = negative_elbo(model, x[:1])
    four, _ = negative_elbo(model, x[:1].repeat(4, 1))
    torch.testing.assert_close(one, four)
    whole, _ = negative_elbo(model, x)
    first, _ = negative_elbo(model, x[:5])
    second, _ = negative_elbo(model, x[5:])
    torch.testing.assert_close(whole, (first + second) / 2)
    assert not torch.allclose(first, second)  # the halves do differ


def test_mean_terms_does_not_depend_on_the_batch_size():
    model = z_independent_model()
    x = binary_images(10)
    reference = {name: value.mean().item()
                 for name, value in elbo_terms(model, x).items()}
    for batch_size in (1, 3, 10, 1000):
        averaged = mean_terms(model, x, batch_size=batch_size)
        assert averaged.keys() == reference.keys()
        for name in reference:
            assert averaged[name] == pytest.approx(reference[name], rel=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.5, 2.0])
def test_beta_weighs_the_kl_term(beta):
    model, x = small_model(), binary_images(6)
    torch.manual_seed(21)
    loss, terms = negative_elbo(model, x, beta=beta)
    torch.manual_seed(21)
    reference = elbo_terms(model, x)
    torch.testing.assert_close(terms["reconstruction"], reference["reconstruction"])
    expected = -(reference["reconstruction"] - beta * reference["kl"]).mean()
    torch.testing.assert_close(loss, expected)
    if beta == 0:
        torch.testing.assert_close(loss, -reference["reconstruction"].mean())


# --- numerics and gradients ---------------------------------------------------

@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli"])
@pytest.mark.parametrize("log_scale", [-20.0, 0.0, 20.0])
@pytest.mark.parametrize("logit", [1e4, -1e4])
def test_extreme_outputs_stay_finite(likelihood, log_scale, logit):
    latent_dim = 3
    model = small_model(latent_dim=latent_dim, likelihood=likelihood)
    with torch.no_grad():
        model.encoder[-1].weight.zero_()
        model.encoder[-1].bias[latent_dim:] = log_scale
        model.decoder[-1].weight.zero_()
        signs = torch.ones(784)
        signs[::2] = -1  # half the pixels at +logit, half at -logit
        model.decoder[-1].bias.copy_(signs * logit)
    x = binary_images(4)
    torch.manual_seed(0)
    loss, terms = negative_elbo(model, x)
    for name, value in terms.items():
        assert torch.isfinite(value).all(), name
    loss.backward()
    assert torch.isfinite(loss)
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    if likelihood == "bernoulli":
        # Independent check in float64: log p(x|z) = sum(x * l - softplus(l)).
        logits = (signs * logit).double()
        expected = (x.double() * logits - F.softplus(logits)).sum(-1)
        torch.testing.assert_close(terms["reconstruction"].double(), expected,
                                   rtol=1e-6, atol=0.0)


def test_rsample_carries_gradients_and_sample_does_not():
    output, posterior = random_posterior(requires_grad=True)
    z = posterior.rsample()
    assert z.requires_grad
    z.sum().backward()
    loc_grad, log_scale_grad = output.grad.chunk(2, dim=-1)
    # z = loc + exp(log_scale) * eps: dz/dloc = 1, dz/dlog_scale = z - loc
    torch.testing.assert_close(loc_grad, torch.ones_like(loc_grad))
    torch.testing.assert_close(log_scale_grad, (z - posterior.mean).detach())
    assert not posterior.sample().requires_grad


def test_the_loss_trains_both_networks():
    model, x = small_model(), binary_images(4)
    torch.manual_seed(0)
    loss, _ = negative_elbo(model, x)
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


# --- grey pixels --------------------------------------------------------------

def test_grey_pixels_are_refused_by_a_bernoulli_model():
    grey = torch.rand(3, 784, generator=torch.Generator().manual_seed(0))
    with pytest.raises(GreyPixelsError, match="binarize"):
        elbo_terms(small_model(), grey)
    with pytest.raises(GreyPixelsError):
        negative_elbo(small_model(), grey)


def test_grey_pixels_are_scored_by_a_continuous_bernoulli_model():
    grey = torch.rand(3, 784, generator=torch.Generator().manual_seed(0))
    model = small_model(likelihood="continuous_bernoulli")
    torch.manual_seed(0)
    terms = elbo_terms(model, grey)
    for value in terms.values():
        assert value.shape == (3,) and torch.isfinite(value).all()
    torch.manual_seed(0)
    z = model.encode(grey).rsample()
    expected = torch.distributions.ContinuousBernoulli(
        logits=model.decoder(z)).log_prob(grey).sum(-1)
    torch.testing.assert_close(terms["reconstruction"], expected)


# --- the k-sample bound (IWAE) ---------------------------------------------------

def log_weights_by_distributions(model, x, noise):
    """log p(x|z) + log p(z) - log q(z|x) from torch.distributions: (batch, k)."""
    posterior = model.encode(x)
    normal = posterior.base_dist
    z = normal.loc + normal.scale * noise.transpose(0, 1)  # (k, batch, latent_dim)
    log_w = (model.decode(z).log_prob(x) + model.prior().log_prob(z)
             - posterior.log_prob(z))  # (k, batch)
    return log_w.T


def hand_written_logsumexp(a):
    """log (1/k) sum_i exp(a_i) over the last dimension, with the maximum taken out."""
    peak = a.max(-1, keepdim=True).values
    return (peak + (a - peak).exp().sum(-1, keepdim=True).log()).squeeze(-1) \
        - math.log(a.shape[-1])


def test_log_weights_are_those_of_torch_distributions():
    model, x = small_model().double(), binary_images(5).double()
    noise = torch.randn(5, 7, 3, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)
    expected = log_weights_by_distributions(model, x, noise)
    torch.testing.assert_close(log_importance_weights(model, x, noise), expected)


def test_the_one_sample_bound_is_the_elbo_estimate_with_the_same_z():
    model, x = small_model().double(), binary_images(6).double()
    torch.manual_seed(3)
    bound = iwae_bound(model, x, 1)
    torch.manual_seed(3)
    noise = torch.randn(6, 1, 3, dtype=torch.float64)  # the draw the bound made
    posterior = model.encode(x)
    z = posterior.base_dist.loc + posterior.base_dist.scale * noise[:, 0]
    elbo = (model.decode(z).log_prob(x) + model.prior().log_prob(z)
            - posterior.log_prob(z))  # a one-sample ELBO estimate: (6,)
    torch.testing.assert_close(bound, elbo)
    assert bound.shape == (6,)


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli"])
def test_the_bound_equals_a_hand_written_logsumexp(likelihood):
    model = small_model(likelihood=likelihood).double()
    x = binary_images(4).double()
    if likelihood == "continuous_bernoulli":
        x = x * 0.6 + 0.2  # grey pixels
    torch.manual_seed(5)
    bound = iwae_bound(model, x, 50)
    torch.manual_seed(5)
    noise = torch.randn(4, 50, 3, dtype=torch.float64)
    expected = hand_written_logsumexp(log_weights_by_distributions(model, x, noise))
    torch.testing.assert_close(bound, expected)
    # The same gradients, through z = mu + sigma * noise, for every weight.
    parameters = list(model.parameters())
    for mine, reference in zip(torch.autograd.grad(bound.sum(), parameters),
                               torch.autograd.grad(expected.sum(), parameters),
                               strict=True):
        torch.testing.assert_close(mine, reference)
    # Averaging the log-weights is the ELBO, lower than the bound for every image.
    averaged = log_weights_by_distributions(model, x, noise).mean(-1)
    assert (averaged < bound - 0.1).all()


@torch.no_grad()
def test_the_bound_rises_with_k_and_approaches_the_log_likelihood():
    model, x = small_model(), binary_images(8)
    torch.manual_seed(0)
    repeats = 100
    means, errors = {}, {}
    for k in (1, 10, 100):
        draws = torch.stack([iwae_bound(model, x, k).double()
                             for _ in range(repeats)])  # (repeats, 8)
        per_draw = draws.mean(1)  # the mean over the 8 images of each draw
        means[k] = per_draw.mean().item()
        errors[k] = per_draw.std().item() / math.sqrt(repeats)
    log_likelihood = importance_weighted_log_likelihood(model, x, num_samples=5000)
    exact = log_likelihood.double().mean().item()
    for low, high in [(1, 10), (10, 100)]:
        assert means[high] > means[low] + 4 * math.hypot(errors[low], errors[high])
    gap = exact - means[1]
    assert gap > 1.0  # the ELBO is loose here, so the test says something
    assert means[100] <= exact + 4 * errors[100]
    assert exact - means[100] < 0.2 * gap


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli"])
def test_the_bound_trains_the_encoder_and_the_decoder(likelihood):
    model, x = small_model(likelihood=likelihood), binary_images(4)
    torch.manual_seed(0)
    (-iwae_bound(model, x, 5).mean()).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, \
            name


def test_the_trainers_iwae_loss_is_the_bound_and_reports_the_elbo_terms():
    model, x = small_model(), binary_images(8)
    torch.manual_seed(1)
    terms = iwae_terms(model, x, 10, check=False)
    torch.manual_seed(1)
    torch.testing.assert_close(terms["bound"], iwae_bound(model, x, 10))
    torch.testing.assert_close(terms["kl"], kl_standard_normal(model.encode(x)))
    torch.testing.assert_close(terms["elbo"], terms["reconstruction"] - terms["kl"])
    assert (terms["elbo"] < terms["bound"]).all()


@pytest.mark.parametrize("num_samples", [0, -3, 2.5, True, "5", None])
def test_a_bad_number_of_samples_is_refused(num_samples):
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        iwae_bound(small_model(), binary_images(2), num_samples)


def test_the_bound_refuses_grey_pixels_for_a_bernoulli_model():
    grey = torch.rand(3, 784, generator=torch.Generator().manual_seed(0))
    with pytest.raises(GreyPixelsError, match="binarize"):
        iwae_bound(small_model(), grey, 5)


@pytest.mark.parametrize("function", [
    lambda model, x: elbo_terms(model, x),
    lambda model, x: negative_elbo(model, x),
    lambda model, x: iwae_bound(model, x, 3),
])
def test_an_empty_batch_is_refused(function):
    with pytest.raises(ValueError, match=r"\(N, 784\) with N > 0; got \(0, 784\)"):
        function(small_model(), torch.zeros(0, 784))
