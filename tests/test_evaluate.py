"""Test ELBO and the importance-weighted log-likelihood, checked against quadrature."""

from __future__ import annotations

import copy
import math
import threading

import pytest
import torch
import torch.nn.functional as F

from vae_course.distributions import GreyPixelsError
from vae_course.elbo import elbo_terms
from vae_course.evaluate import (
    ACTIVE_THRESHOLD,
    active_units,
    bits_per_dim,
    evaluate_elbo,
    importance_weighted_log_likelihood,
    unit_activity,
)
from vae_course.models import VAE, build_vae
from vae_course.train import fit

LOG_2PI = math.log(2 * math.pi)


def binary_images(n, seed):
    """Binary images near four random binary prototypes (binarizing keeps them)."""
    generator = torch.Generator().manual_seed(1000)
    prototypes = torch.rand(4, 784, generator=generator).round()
    generator.manual_seed(seed)
    which = torch.randint(0, 4, (n,), generator=generator)
    flips = torch.rand(n, 784, generator=generator) < 0.05
    return (prototypes[which] + flips.float()).remainder(2)


def line_images(n, seed):
    """Binary images from a 1-D latent factor t: pixel logits a * t + b.

    log p(x|t) is concave in t, so the true posterior of each image has one mode.
    """
    generator = torch.Generator().manual_seed(1000)
    a = torch.randn(784, generator=generator) * 0.3
    b = torch.randn(784, generator=generator)
    generator.manual_seed(seed)
    t = torch.randn(n, 1, generator=generator)
    return torch.bernoulli(torch.sigmoid(t * a + b), generator=generator)


def trained_model(latent_dim, images, seed=0):
    torch.manual_seed(seed)
    model = build_vae(latent_dim=latent_dim, hidden_sizes=(32,))
    fit(model, images, num_epochs=6, batch_size=32, learning_rate=3e-3,
        progress=False)
    return model.eval()


@pytest.fixture(scope="module")
def model_2d():
    return trained_model(2, binary_images(256, seed=1))


@pytest.fixture(scope="module")
def model_1d():
    """A 1-D latent model whose encoder scales are doubled after training.

    Any q(z|x) is a valid importance sampler; one wider than the true posterior
    keeps the weights' variance small, so K = 2000 already lands close to log p(x).
    """
    model = trained_model(1, line_images(512, seed=1))
    with torch.no_grad():
        model.encoder[-1].bias[1:] += math.log(2.0)
    return model


@pytest.fixture(scope="module")
def images_1d():
    return line_images(12, seed=2)


@pytest.fixture(scope="module")
def images():
    return binary_images(128, seed=2)


@torch.no_grad()
def accurate_elbo(model, x, num_samples=200):
    """Per-image ELBO with a well-averaged reconstruction term (closed-form KL)."""
    torch.manual_seed(99)
    return torch.cat([elbo_terms(model, x[i:i + 32], num_samples=num_samples)["elbo"]
                      for i in range(0, len(x), 32)])


@torch.no_grad()
def log_marginal_by_quadrature(model, x, limit=10.0, points=10_001):
    """log p(x) = log of the integral of p(x|z) N(z; 0, 1) dz on a fine grid (1-D z)."""
    assert model.latent_dim == 1
    double = copy.deepcopy(model).double()
    z = torch.linspace(-limit, limit, points, dtype=torch.float64)  # (points,)
    logits = double.decoder(z[:, None])  # (points, 784)
    # Bernoulli log-likelihood of every image under every z: (N, points)
    log_likelihood = x.double() @ logits.T - F.softplus(logits).sum(-1)
    log_integrand = log_likelihood - 0.5 * z**2 - 0.5 * LOG_2PI
    peak = log_integrand.max(-1).values
    # The grid must hold the whole mass: nothing left at its ends.
    assert (log_integrand[:, [0, -1]] < peak[:, None] - 50).all()
    step = z[1] - z[0]
    # Trapezoid rule in log space.
    weights = torch.full((points,), math.log(step))
    weights[[0, -1]] -= math.log(2)
    return torch.logsumexp(log_integrand + weights, dim=-1)


# --- the importance-weighted estimate -----------------------------------------

def test_returns_one_cpu_number_per_image(model_2d, images):
    log_p = importance_weighted_log_likelihood(model_2d, images[:10], num_samples=5)
    assert log_p.shape == (10,)
    assert log_p.device.type == "cpu"
    assert log_p.is_floating_point()
    assert torch.isfinite(log_p).all()
    assert (log_p < 0).all()  # binary pixels: p(x) < 1


def test_is_seeded_and_leaves_the_global_rng_alone(model_2d, images):
    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    first = importance_weighted_log_likelihood(model_2d, images[:10], num_samples=5,
                                               seed=3)
    assert torch.equal(torch.rand(3), expected_next)
    second = importance_weighted_log_likelihood(model_2d, images[:10], num_samples=5,
                                                seed=3)
    other = importance_weighted_log_likelihood(model_2d, images[:10], num_samples=5,
                                               seed=4)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_one_sample_equals_the_elbo_in_expectation(model_2d, images):
    elbo = accurate_elbo(model_2d, images)
    single = importance_weighted_log_likelihood(model_2d, images, num_samples=1)
    difference = single - elbo
    standard_error = difference.std() / math.sqrt(len(images))
    assert standard_error > 0
    assert difference.mean().abs() < 5 * standard_error
    # evaluate_elbo (one draw of z, closed-form KL) estimates the same mean ELBO.
    terms = evaluate_elbo(model_2d, images)
    assert abs(terms["elbo"] - elbo.mean().item()) < 5 * standard_error


def test_more_samples_give_a_tighter_bound(model_2d, images):
    elbo = accurate_elbo(model_2d, images)
    one = importance_weighted_log_likelihood(model_2d, images, num_samples=1)
    hundred = importance_weighted_log_likelihood(model_2d, images, num_samples=100)
    standard_error = (one - elbo).std() / math.sqrt(len(images))
    assert hundred.mean() > one.mean() - 3 * standard_error
    assert hundred.mean() > elbo.mean()  # strictly tighter than the ELBO
    # ... and far less noisy: two seeds disagree much less at K = 100.
    one_again = importance_weighted_log_likelihood(model_2d, images, num_samples=1,
                                                   seed=1)
    hundred_again = importance_weighted_log_likelihood(model_2d, images,
                                                       num_samples=100, seed=1)
    assert (hundred - hundred_again).std() < (one - one_again).std() / 3


@torch.no_grad()
def importance_sampling_spread(model, x, num_samples, draws=2000):
    """Standard deviation of the K-sample estimate, by the delta method:
    sd(log mean w) ~ sd(w) / (mean(w) sqrt(K)), from independent draws of w."""
    torch.manual_seed(123)
    posterior, prior = model.encode(x), model.prior()
    z = posterior.sample((draws,))  # (draws, batch, 1)
    log_w = model.decode(z).log_prob(x) + prior.log_prob(z) - posterior.log_prob(z)
    w = (log_w - log_w.max(0).values).exp()
    return w.std(0) / w.mean(0) / math.sqrt(num_samples)


def test_converges_to_the_exact_log_likelihood_from_quadrature(model_1d, images_1d):
    x = images_1d
    exact = log_marginal_by_quadrature(model_1d, x).float()
    elbo = accurate_elbo(model_1d, x, num_samples=500)
    elbo_error = 5 * (model_1d.decode(model_1d.encode(x).sample((500,)))
                      .log_prob(x).std(0).detach() / math.sqrt(500))
    assert (elbo <= exact + elbo_error).all()  # the ELBO is a lower bound ...
    assert (exact - elbo).mean() > 0.3  # ... and a loose one for this encoder
    estimate = importance_weighted_log_likelihood(model_1d, x, num_samples=2000)
    tolerance = 5 * importance_sampling_spread(model_1d, x, 2000) + 1e-3
    assert ((estimate - exact).abs() < tolerance).all(), (estimate - exact, tolerance)
    assert (estimate - exact).abs().mean() < (exact - elbo).mean() / 10


# --- chunks -------------------------------------------------------------------

def record_decoder_calls(model):
    """(codes, outputs) of each call, seen by the decoder's first layer.

    The estimator may run the decoder's last layer itself (its sign flip folded
    in), so the calls are counted where every code enters.
    """
    sizes = []
    outputs = model.decoder[-1].out_features
    handle = model.decoder[0].register_forward_hook(
        lambda module, inputs, output: sizes.append((len(inputs[0]), outputs)))
    return sizes, handle


@pytest.mark.parametrize(("num_images", "num_samples", "max_pixels"), [
    (6, 30, 784 * 10),  # one image at a time, ten samples per call
    (6, 4, 784 * 12),  # three images per call, all their samples at once
    (5, 7, 784 * 1000),  # everything in one call
])
def test_work_is_split_into_bounded_chunks(model_2d, images, num_images, num_samples,
                                           max_pixels):
    sizes, handle = record_decoder_calls(model_2d)
    try:
        importance_weighted_log_likelihood(model_2d, images[:num_images],
                                           num_samples=num_samples,
                                           max_pixels=max_pixels)
    finally:
        handle.remove()
    assert all(rows * pixels <= max_pixels for rows, pixels in sizes)
    # Every (sample, image) pair is decoded exactly once.
    assert sum(rows for rows, _ in sizes) == num_images * num_samples


def test_chunking_does_not_change_the_estimate(model_1d, images_1d):
    x = images_1d[:4]
    exact = log_marginal_by_quadrature(model_1d, x).float()
    tolerance = 5 * importance_sampling_spread(model_1d, x, 1000) + 1e-3
    whole = importance_weighted_log_likelihood(model_1d, x, num_samples=1000)
    assert ((whole - exact).abs() < tolerance).all()
    for max_pixels in (784 * 300, 784 * 7, 784):
        chunked = importance_weighted_log_likelihood(model_1d, x, num_samples=1000,
                                                     max_pixels=max_pixels)
        # The same draws, so the same numbers, not merely the same answer.
        torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-4)


# --- one random stream per image -----------------------------------------------

@torch.no_grad()
def reference_log_likelihood(model, x, num_samples, seed, first_index=0):
    """The estimate written plainly, one image at a time with torch.distributions."""
    from vae_course.evaluate import image_generator

    estimates = []
    for i, image in enumerate(x):
        noise = torch.randn(num_samples, model.latent_dim,
                            generator=image_generator(seed, first_index + i))
        posterior = model.encode(image[None])  # batch of one
        normal = posterior.base_dist
        z = normal.loc + normal.scale * noise  # (K, latent_dim)
        log_w = (model.decode(z).log_prob(image) + model.prior().log_prob(z)
                 - posterior.log_prob(z))  # (K,)
        estimates.append(torch.logsumexp(log_w, 0) - math.log(num_samples))
    return torch.stack(estimates)


# K = 300 decodes codes of several images per call; from K = ROWS_PER_CALL on, one
# image's codes fill a call and a Bernoulli MLP's last layer also flips the signs.
@pytest.mark.parametrize("num_samples", [300, 600])
@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli",
                                        "discretized_logistic"])
def test_agrees_with_a_straightforward_reference(images, likelihood, num_samples):
    torch.manual_seed(0)
    model = build_vae(latent_dim=3, hidden_sizes=(16,), likelihood=likelihood).eval()
    x = images[:6]
    expected = reference_log_likelihood(model, x, num_samples, seed=5)
    estimate = importance_weighted_log_likelihood(model, x, num_samples=num_samples,
                                                  seed=5)
    torch.testing.assert_close(estimate, expected, rtol=1e-5, atol=1e-3)


class ShiftedLogits(VAE):
    """A VAE whose own decode_logits adds 1 to every logit."""

    def decode_logits(self, z):
        return super().decode_logits(z) + 1.0


def test_a_model_with_its_own_decoding_is_scored_by_it(images):
    torch.manual_seed(0)
    plain = build_vae(latent_dim=3, hidden_sizes=(16,)).eval()
    shifted = ShiftedLogits(plain.encoder, plain.decoder, plain.latent_dim,
                            plain.likelihood, plain.config).eval()
    x = images[:3]
    expected = reference_log_likelihood(shifted, x, 600, seed=2)
    estimate = importance_weighted_log_likelihood(shifted, x, num_samples=600, seed=2)
    torch.testing.assert_close(estimate, expected, rtol=1e-5, atol=1e-3)
    plain_estimate = importance_weighted_log_likelihood(plain, x, num_samples=600,
                                                        seed=2)
    assert (plain_estimate - estimate).abs().min() > 1.0


def test_threads_share_the_groups_and_change_no_number(model_2d, images):
    from vae_course.evaluate import CODES_PER_GROUP

    threads = torch.get_num_threads()
    x = images[:4]
    num_samples = CODES_PER_GROUP // 2  # two groups of two images
    try:
        torch.set_num_threads(1)
        alone = importance_weighted_log_likelihood(model_2d, x,
                                                   num_samples=num_samples)
        torch.set_num_threads(2)
        both_encoding = threading.Barrier(2, timeout=10)  # broken if one at a time

        def wait_for_the_other(module, inputs, output):
            both_encoding.wait()  # returning nothing leaves the output as it is

        handle = model_2d.encoder.register_forward_hook(wait_for_the_other)
        try:
            side_by_side = importance_weighted_log_likelihood(
                model_2d, x, num_samples=num_samples)
        finally:
            handle.remove()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    # Each thread runs PyTorch on one intra-op thread, as the single thread did.
    assert torch.equal(side_by_side, alone)


def test_an_image_gets_the_same_estimate_in_any_company(model_2d, images):
    x = images[:150]
    first = importance_weighted_log_likelihood(model_2d, x[:100], num_samples=40)
    later = importance_weighted_log_likelihood(model_2d, x[50:150], num_samples=40,
                                               first_index=50)
    torch.testing.assert_close(later[:50], first[50:], rtol=1e-5, atol=1e-4)
    alone = importance_weighted_log_likelihood(model_2d, x[7:8], num_samples=40,
                                               first_index=7)
    torch.testing.assert_close(alone, first[7:8], rtol=1e-5, atol=1e-4)
    small_chunks = importance_weighted_log_likelihood(model_2d, x[:100], num_samples=40,
                                                      max_pixels=784 * 13)
    torch.testing.assert_close(small_chunks, first, rtol=1e-5, atol=1e-4)
    # Without the offset, images 50.. would reuse the streams of images 0..
    unshifted = importance_weighted_log_likelihood(model_2d, x[50:150], num_samples=40)
    assert (unshifted[:50] - first[50:]).abs().max() > 1e-3


def test_images_draw_unrelated_streams():
    from vae_course.evaluate import image_generator

    draws = {(seed, index): torch.randn(8, generator=image_generator(seed, index))
             for seed in (0, 1) for index in (0, 1, 1_000_003)}
    values = list(draws.values())
    assert all(not torch.equal(a, b) for i, a in enumerate(values)
               for b in values[i + 1:])
    assert torch.equal(torch.randn(8, generator=image_generator(1, 0)), draws[1, 0])


@pytest.mark.parametrize(("name", "value"), [("first_index", -1), ("first_index", 1.5),
                                             ("seed", -3), ("max_pixels", 100)])
def test_bad_offsets_seeds_and_chunk_sizes_are_refused(model_2d, images, name, value):
    with pytest.raises(ValueError, match=name):
        importance_weighted_log_likelihood(model_2d, images[:2], num_samples=3,
                                           **{name: value})


def exact_posterior_model():
    """q(z|x) = p(z) and p(x|z) = p(x): every importance weight equals p(x)."""
    torch.manual_seed(0)
    model = build_vae(latent_dim=2, hidden_sizes=(8,))
    with torch.no_grad():
        model.encoder[-1].weight.zero_()
        model.encoder[-1].bias.zero_()
        model.decoder[-1].weight.zero_()
        model.decoder[-1].bias.normal_()
    return model.eval()


@pytest.mark.parametrize(("num_samples", "max_pixels"), [(1, 2**24), (7, 2**24),
                                                         (7, 784 * 3), (50, 784)])
def test_an_exact_posterior_gives_the_exact_answer(images, num_samples, max_pixels):
    model = exact_posterior_model()
    x = images[:5]
    exact = torch.distributions.Bernoulli(
        logits=model.decoder[-1].bias).log_prob(x).sum(-1).detach()
    estimate = importance_weighted_log_likelihood(model, x, num_samples=num_samples,
                                                  max_pixels=max_pixels)
    torch.testing.assert_close(estimate, exact, atol=1e-3, rtol=0.0)


# --- arguments and pixels -----------------------------------------------------

@pytest.mark.parametrize("num_samples", [0, -1, 2.5, "10"])
def test_bad_sample_counts_are_refused(model_2d, images, num_samples):
    with pytest.raises(ValueError, match="num_samples"):
        importance_weighted_log_likelihood(model_2d, images[:2],
                                           num_samples=num_samples)


def test_grey_images_are_binarized_unless_asked_not_to(model_2d):
    grey = torch.rand(4, 784, generator=torch.Generator().manual_seed(0))
    log_p = importance_weighted_log_likelihood(model_2d, grey, num_samples=3)
    assert torch.isfinite(log_p).all()
    with pytest.raises(GreyPixelsError):
        importance_weighted_log_likelihood(model_2d, grey, num_samples=3,
                                           binarize=False)


# --- evaluate_elbo ------------------------------------------------------------

def test_evaluate_elbo_reports_consistent_terms(model_2d, images):
    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    terms = evaluate_elbo(model_2d, images, seed=1)
    assert torch.equal(torch.rand(3), expected_next)  # global RNG untouched
    assert set(terms) == {"reconstruction", "entropy", "cross_entropy", "kl", "elbo",
                          "negative_elbo"}
    assert terms["negative_elbo"] == -terms["elbo"]
    assert terms["kl"] == pytest.approx(terms["cross_entropy"] - terms["entropy"],
                                        rel=1e-5)
    assert terms["elbo"] == pytest.approx(terms["reconstruction"] - terms["kl"],
                                          rel=1e-5)
    assert evaluate_elbo(model_2d, images, seed=1) == terms  # seeded
    # The closed-form terms do not depend on how the images are batched.
    smaller = evaluate_elbo(model_2d, images, seed=1, batch_size=7)
    for name in ("entropy", "cross_entropy", "kl"):
        assert smaller[name] == pytest.approx(terms[name], rel=1e-5)


def test_huge_logits_are_scored_exactly():
    """log(1 + e^l) overflows past l = 88; those logits must still score right."""
    model = exact_posterior_model()
    with torch.no_grad():
        signs = torch.ones(784)
        signs[::2] = -1
        model.decoder[-1].bias.copy_(signs * 200.0)
    x = (signs > 0).float()[None].repeat(3, 1)  # (3, 784)
    x[1, :5] = 1 - x[1, :5]  # five pixels against a logit of 200: -1000 nats
    x[2, :] = 1 - x[2, :]
    exact = torch.distributions.Bernoulli(
        logits=model.decoder[-1].bias.double()).log_prob(x.double()).sum(-1)
    for num_samples in (4, 600):  # codes of several images a call; one image's
        estimate = importance_weighted_log_likelihood(model, x,
                                                      num_samples=num_samples)
        torch.testing.assert_close(estimate.double(), exact, rtol=1e-6, atol=1e-3)


# --- active units -------------------------------------------------------------

def alternating_means(amplitudes, offsets, num_images=4):
    """Posterior means where unit d is offsets[d] +/- amplitudes[d], image by image.

    With an even number of images the mean of unit d is offsets[d], and its variance
    with Bessel's correction is amplitudes[d]**2 * n / (n - 1).
    """
    signs = torch.tensor([(-1.0) ** i for i in range(num_images)])[:, None]
    return torch.tensor(offsets) + signs * torch.tensor(amplitudes)  # (n, units)


def test_active_units_counts_units_whose_mean_varies_over_images():
    # A large swing; a constant far from 0 (inactive: it is the spread that
    # counts, not the size); just under and just over the 0.01 threshold; and 0.09,
    # active only with Bessel's correction (0.0108, against 0.0081 without).
    amplitudes = [1.0, 0.0, 0.08, 0.1, 0.09]
    means = alternating_means(amplitudes, offsets=[0.0, 5.0, -1.0, 2.0, 0.0])
    expected = torch.tensor([a * a * 4 / 3 for a in amplitudes], dtype=torch.float64)
    assert torch.allclose(unit_activity(means), expected, rtol=1e-6, atol=1e-12)
    assert active_units(means).tolist() == [True, False, False, True, True]
    assert int(active_units(means).sum()) == 3
    assert ACTIVE_THRESHOLD == 0.01
    assert active_units(means, threshold=0.5).tolist() == [True, False, False, False,
                                                            False]


def test_unit_activity_needs_a_matrix_of_at_least_two_images():
    with pytest.raises(ValueError, match="num_images, latent_dim"):
        unit_activity(torch.zeros(5))
    with pytest.raises(ValueError, match="at least two images"):
        unit_activity(torch.zeros(1, 3))


# --- bits per dimension ---------------------------------------------------------

def test_bits_per_dim_divides_by_the_dimensions_and_ln_2():
    # A uniform distribution over the 256 levels of 784 pixels costs 8 bits a pixel;
    # 784 fair coin flips cost 1 bit each.
    assert bits_per_dim(784 * math.log(256)) == pytest.approx(8.0, rel=1e-12)
    assert bits_per_dim(784 * math.log(2)) == pytest.approx(1.0, rel=1e-12)
    assert bits_per_dim(3072 * math.log(2) * 3.5, num_dims=3072) == pytest.approx(3.5)
    nats = torch.tensor([0.0, 543.4273, 1000.0], dtype=torch.float64)
    torch.testing.assert_close(bits_per_dim(nats), nats / (784 * math.log(2)))


@pytest.mark.parametrize("num_dims", [0, -784, 78.4, True])
def test_bits_per_dim_refuses_bad_dimensions(num_dims):
    with pytest.raises(ValueError, match="num_dims"):
        bits_per_dim(100.0, num_dims=num_dims)


def test_discretized_logistic_log_likelihood_is_a_log_probability():
    """On grey levels, the estimate is <= 0 and tighter than the ELBO."""
    # Two grey levels, 26 / 255 and 204 / 255, on the 256-level grid.
    grey = ((binary_images(64, seed=3) * 0.7 + 0.1) * 255).round() / 255
    torch.manual_seed(0)
    model = build_vae(latent_dim=2, hidden_sizes=(32,),
                      likelihood="discretized_logistic")
    fit(model, grey, num_epochs=4, batch_size=32, learning_rate=3e-3, progress=False)
    estimate = importance_weighted_log_likelihood(model, grey[:8], num_samples=200)
    assert estimate.shape == (8,) and bool(torch.isfinite(estimate).all())
    assert bool((estimate <= 0).all())
    elbo = accurate_elbo(model, grey[:8])
    assert float(estimate.mean()) > float(elbo.mean())
