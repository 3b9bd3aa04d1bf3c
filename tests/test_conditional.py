"""The conditional VAE: its networks, its ELBO, training, evaluation and checkpoints.

Every distribution of a conditional VAE is given the label y as well, q(z|x,y) and
p(x|z,y); these tests check that the label really goes in, that the package's ELBO
of such a model is what ``torch.distributions`` computes by hand, and that fit,
evaluate and checkpoints treat it as they treat the plain VAE.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Normal, kl_divergence

from vae_course.checkpoints import load_checkpoint, save_checkpoint
from vae_course.elbo import elbo_terms, negative_elbo
from vae_course.evaluate import evaluate_elbo, importance_weighted_log_likelihood
from vae_course.models import (
    IMAGE_SIZE,
    ConditionalVAE,
    build_vae,
    count_parameters,
    is_conditional,
)
from vae_course.plots import latent_means
from vae_course.train import fit

NUM_CLASSES = 10


def labelled_images(n, seed):
    """Binary images near four prototypes; the label of each is its prototype."""
    generator = torch.Generator().manual_seed(1000)  # the same prototypes every time
    prototypes = torch.rand(4, IMAGE_SIZE, generator=generator).round()
    generator.manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=generator)
    flips = torch.rand(n, IMAGE_SIZE, generator=generator) < 0.05
    return (prototypes[labels] + flips.float()).remainder(2), labels


def conditional_model(latent_dim=3, seed=0, **kwargs):
    torch.manual_seed(seed)
    return build_vae(latent_dim=latent_dim, hidden_sizes=(16,),
                     num_classes=NUM_CLASSES, **kwargs)


def linear_shapes(module):
    return [(layer.in_features, layer.out_features) for layer in module.modules()
            if isinstance(layer, torch.nn.Linear)]


@pytest.fixture(scope="module")
def data():
    return labelled_images(256, seed=1), labelled_images(64, seed=2)


def train(model, data, **kwargs):
    (train_images, train_labels), (validation_images, validation_labels) = data
    kwargs = {"num_epochs": 2, "batch_size": 64, "progress": False,
              "train_labels": train_labels, "validation_labels": validation_labels,
              **kwargs}
    return fit(model, train_images, validation_images, **kwargs)


# --- the model ------------------------------------------------------------------

def test_both_networks_take_the_one_hot_label_as_extra_inputs():
    model = build_vae(latent_dim=2, hidden_sizes=(100, 100), num_classes=10)
    assert isinstance(model, ConditionalVAE) and is_conditional(model)
    assert not is_conditional(build_vae(latent_dim=2))
    assert linear_shapes(model.encoder) == [(794, 100), (100, 100), (100, 4)]
    assert linear_shapes(model.decoder) == [(12, 100), (100, 100), (100, 784)]
    plain = build_vae(latent_dim=2, hidden_sizes=(100, 100))
    # Ten more inputs per network: 10 x 100 weights more in each first layer.
    assert count_parameters(model) == count_parameters(plain) + 2 * 10 * 100
    assert model.config == {"architecture": "mlp", "latent_dim": 2,
                            "hidden_sizes": [100, 100], "likelihood": "bernoulli",
                            "num_classes": 10}
    assert "num_classes" not in plain.config  # the committed checkpoints stay valid


def test_methods_have_the_documented_shapes():
    model = conditional_model(latent_dim=3)
    images, labels = labelled_images(5, seed=0)
    posterior = model.encode(images, labels)
    assert posterior.batch_shape == (5,) and posterior.event_shape == (3,)
    likelihood = model.decode(torch.randn(5, 3), labels)
    assert likelihood.batch_shape == (5,) and likelihood.event_shape == (IMAGE_SIZE,)
    # Labels (batch,) serve codes (samples, batch, latent_dim).
    assert model.decode(torch.randn(4, 5, 3), labels).batch_shape == (4, 5)
    assert model.decode_logits(torch.randn(4, 5, 3), labels).shape == (4, 5, IMAGE_SIZE)
    posterior, z, likelihood = model(images, labels)
    assert z.shape == (5, 3) and z.requires_grad
    samples = model.sample(torch.arange(10), torch.Generator().manual_seed(0))
    reconstructions = model.reconstruct(images, labels)
    assert samples.shape == (10, IMAGE_SIZE)
    assert reconstructions.shape == (5, IMAGE_SIZE)
    for pixels in (samples, reconstructions):
        assert not pixels.requires_grad
        assert pixels.min() >= 0 and pixels.max() <= 1


def test_the_label_changes_the_decoder_output():
    model = conditional_model()
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        threes = model.decode(z, torch.full((6,), 3)).mean
        sevens = model.decode(z, torch.full((6,), 7)).mean
        again = model.decode(z, torch.full((6,), 3)).mean
        by_hand = torch.sigmoid(model.decoder(torch.cat(
            [z, F.one_hot(torch.full((6,), 7), 10).float()], dim=-1)))
    assert torch.equal(threes, again)
    assert (threes - sevens).abs().max() > 1e-3
    torch.testing.assert_close(sevens, by_hand)


def test_the_label_changes_the_encoder_output():
    model = conditional_model()
    images, _ = labelled_images(4, seed=0)
    with torch.no_grad():
        first = model.encode(images, torch.zeros(4, dtype=torch.int64)).mean
        second = model.encode(images, torch.full((4,), 9)).mean
    assert (first - second).abs().max() > 1e-4


def test_one_hot_rows_act_like_their_labels_and_mixtures_are_allowed():
    model = conditional_model()
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 3, 9, 3, 1])
    rows = F.one_hot(labels, 10).float()
    with torch.no_grad():
        torch.testing.assert_close(model.decode(z, rows).mean,
                                   model.decode(z, labels).mean)
        halfway = 0.5 * F.one_hot(torch.full((5,), 2), 10).float() + 0.5 * rows
        assert model.decode(z, halfway).mean.shape == (5, IMAGE_SIZE)


@pytest.mark.parametrize(("labels", "error", "message"), [
    (F.one_hot(torch.tensor([0, 3, 8, 2]), 9).float(), ValueError, "10 classes"),
    (F.one_hot(torch.tensor([0, 3, 8, 2]), 11).float(), ValueError, "10 classes"),
    (torch.tensor([0.0, 3.0, 8.0, 2.0]), ValueError, "int64 class indices"),
    (torch.tensor([0, 3, 8, 2], dtype=torch.int32), TypeError, "int64"),
    (torch.tensor([0, 3, 10, 2]), ValueError, "0..9"),
    (torch.tensor([-1, 3, 8, 2]), ValueError, "0..9"),
    (F.one_hot(torch.tensor([0, 3, 8, 2]), 10), ValueError, "int64 label per image"),
    (torch.tensor([0, 3, 8]), ValueError, "do not fit"),
])
def test_wrong_labels_are_refused_with_a_reason(labels, error, message):
    model = conditional_model()
    images, _ = labelled_images(4, seed=0)
    with pytest.raises(error, match=message):
        model.encode(images, labels)
    with pytest.raises(error, match=message):
        model.decode(torch.zeros(4, 3), labels)


@pytest.mark.parametrize("kwargs", [{"architecture": "conv"}, {"num_classes": 1},
                                    {"num_classes": True}, {"num_classes": 2.5},
                                    {"latent_dim": 0}, {"likelihood": "gaussian"}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        build_vae(**{"num_classes": 10, **kwargs})


# --- the ELBO -------------------------------------------------------------------

@pytest.mark.parametrize("closed_form", [True, False])
def test_elbo_terms_equal_torch_distributions_by_hand(closed_form):
    model = conditional_model(latent_dim=3).double()
    images, labels = labelled_images(6, seed=3)
    images = images.double()
    one_hot = F.one_hot(labels, 10).double()
    torch.manual_seed(7)
    terms = elbo_terms(model, images, num_samples=4, closed_form=closed_form,
                       labels=labels)
    # By hand: q(z|x,y) from the encoder fed [x, one-hot], p(x|z,y) from the
    # decoder fed [z, one-hot], with the same four draws of z.
    loc, log_scale = model.encoder(torch.cat([images, one_hot], -1)).chunk(2, -1)
    posterior = Normal(loc, log_scale.exp())
    torch.manual_seed(7)
    z = posterior.rsample((4,))  # (4, 6, 3)
    logits = model.decoder(torch.cat([z, one_hot.expand(4, 6, 10)], -1))
    reconstruction = Bernoulli(logits=logits).log_prob(images).sum(-1).mean(0)
    prior = Normal(torch.zeros_like(loc), torch.ones_like(loc))
    if closed_form:
        kl = kl_divergence(posterior, prior).sum(-1)
        entropy = posterior.entropy().sum(-1)
    else:
        entropy = -posterior.log_prob(z).sum(-1).mean(0)
        kl = (posterior.log_prob(z) - prior.log_prob(z)).sum(-1).mean(0)
    expected = {"reconstruction": reconstruction, "entropy": entropy,
                "cross_entropy": kl + entropy, "kl": kl,
                "elbo": reconstruction - kl}
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value, rtol=1e-10, atol=1e-10)


def test_the_elbo_depends_on_the_label():
    model = conditional_model()
    images, labels = labelled_images(8, seed=3)
    right = elbo_terms(model, images, labels=labels)["kl"]
    other = elbo_terms(model, images, labels=(labels + 5) % 10)["kl"]
    assert (right - other).abs().max() > 1e-4


def test_labels_are_needed_exactly_when_the_model_is_conditional():
    images, labels = labelled_images(4, seed=0)
    with pytest.raises(ValueError, match="needs the label"):
        elbo_terms(conditional_model(), images)
    with pytest.raises(ValueError, match="not conditional"):
        elbo_terms(build_vae(latent_dim=3, hidden_sizes=(16,)), images, labels=labels)
    loss, terms = negative_elbo(conditional_model(), images, labels=labels)
    assert loss.dim() == 0 and loss.requires_grad
    assert terms["elbo"].shape == (4,)


# --- training -------------------------------------------------------------------

def test_fit_trains_it_and_reports_both_splits(data):
    model = conditional_model()
    before = evaluate_elbo(model, data[1][0], labels=data[1][1])["negative_elbo"]
    history = train(model, data, num_epochs=8, batch_size=32, learning_rate=1e-2)
    losses = history.column("validation_loss")
    assert losses == sorted(losses, reverse=True)
    assert losses[-1] < before - 100
    # The closed-form terms do not depend on z: evaluate_elbo with the same
    # binarization (seed 0) must agree with the last validation pass.
    terms = evaluate_elbo(model, data[1][0], labels=data[1][1])
    for name in ("entropy", "cross_entropy", "kl"):
        assert history.rows[-1][f"validation_{name}"] == pytest.approx(terms[name],
                                                                       rel=1e-5)


def test_fit_with_the_same_seed_is_reproducible_and_labels_matter(data):
    first, second, shuffled = conditional_model(), conditional_model(), \
        conditional_model()
    rows = train(first, data).rows
    assert [r["train_loss"] for r in rows] == [r["train_loss"]
                                               for r in train(second, data).rows]
    (images, labels), validation = data
    other = train(shuffled, ((images, labels.flip(0)), validation)).rows
    assert other[-1]["train_loss"] != rows[-1]["train_loss"]


@pytest.mark.parametrize(("change", "message"), [
    ({"train_labels": None}, "needs train_labels"),
    ({"validation_labels": None}, "needs validation_labels"),
    ({"train_labels": "floats"}, "labels as floats"),
    ({"train_labels": "short"}, r"shape \(256,\)"),
    ({"train_labels": "too large"}, "0..9"),
    ({"validation_labels": "int32"}, "int64"),
])
def test_fit_refuses_missing_or_wrong_labels(data, change, message):
    (images, labels), (validation_images, validation_labels) = data
    broken = {"floats": labels.float(), "short": labels[:-1], "too large": labels + 7,
              "int32": validation_labels.int(), None: None}
    kwargs = {name: broken[value] for name, value in change.items()}
    model = conditional_model()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises((ValueError, TypeError), match=message):
        train(model, data, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fit_refuses_labels_a_plain_vae_cannot_use(data):
    (images, labels), (validation_images, validation_labels) = data
    plain = build_vae(latent_dim=3, hidden_sizes=(16,))
    with pytest.raises(ValueError, match="train_labels were given but this VAE is not"):
        fit(plain, images, num_epochs=1, train_labels=labels, progress=False)
    with pytest.raises(ValueError, match="without the images"):
        fit(conditional_model(), images, num_epochs=1, train_labels=labels,
            validation_labels=validation_labels, progress=False)


# --- evaluation -----------------------------------------------------------------

@pytest.fixture(scope="module")
def model_1d():
    """A 1-D conditional model, its encoder's scales doubled (a wide, valid q)."""
    model = conditional_model(latent_dim=1)
    train(model, (labelled_images(256, seed=1), labelled_images(64, seed=2)),
          num_epochs=12, batch_size=32, learning_rate=1e-2)
    with torch.no_grad():
        model.encoder[-1].bias[1:] += math.log(2.0)
    return model.eval()


@torch.no_grad()
def log_likelihood_by_quadrature(model, images, labels, limit=10.0, points=10_001):
    """log p(x|y) = log of the integral of p(x|z,y) N(z; 0, 1) dz on a grid (1-D z)."""
    double = copy.deepcopy(model).double()
    z = torch.linspace(-limit, limit, points, dtype=torch.float64)  # (points,)
    results = []
    for image, label in zip(images.double(), labels, strict=True):
        one_hot = F.one_hot(label, 10).double().expand(points, 10)
        logits = double.decoder(torch.cat([z[:, None], one_hot], -1))  # (points, 784)
        log_integrand = (image @ logits.T - F.softplus(logits).sum(-1)
                         - 0.5 * z**2 - 0.5 * math.log(2 * math.pi))
        assert (log_integrand[[0, -1]] < log_integrand.max() - 50).all()
        weights = torch.full((points,), math.log(z[1] - z[0]))
        weights[[0, -1]] -= math.log(2)
        results.append(torch.logsumexp(log_integrand + weights, 0))
    return torch.stack(results)


def test_importance_sampling_converges_to_log_p_x_given_y(model_1d):
    images, labels = labelled_images(6, seed=4)
    exact = log_likelihood_by_quadrature(model_1d, images, labels)
    estimate = importance_weighted_log_likelihood(model_1d, images, num_samples=2000,
                                                  labels=labels, max_pixels=784 * 300)
    torch.testing.assert_close(estimate, exact.float(), atol=0.05, rtol=0)
    # The same images under other labels are other, less likely, events.
    wrong = importance_weighted_log_likelihood(model_1d, images, num_samples=2000,
                                               labels=(labels + 1) % 4)
    assert (wrong < exact.float() - 1).all()


def test_one_sample_is_the_elbo_and_evaluate_needs_the_labels(model_1d):
    images, labels = labelled_images(64, seed=5)
    one = importance_weighted_log_likelihood(model_1d, images, num_samples=1,
                                             labels=labels)
    elbo = evaluate_elbo(model_1d, images, labels=labels)["elbo"]
    assert one.mean().item() == pytest.approx(elbo, abs=1.0)
    with pytest.raises(ValueError, match="needs labels"):
        importance_weighted_log_likelihood(model_1d, images, num_samples=2)
    with pytest.raises(ValueError, match="needs labels"):
        evaluate_elbo(model_1d, images)
    with pytest.raises(ValueError, match=r"shape \(64,\)"):
        evaluate_elbo(model_1d, images, labels=labels[:10])


# --- checkpoints and pictures -----------------------------------------------------

def test_checkpoint_round_trip_keeps_the_config_and_the_outputs(tmp_path, data):
    model = conditional_model(likelihood="continuous_bernoulli")
    history = train(model, data, num_epochs=1, binarize=True)
    path = save_checkpoint(tmp_path / "cvae.pt", model, history=history)
    loaded, payload = load_checkpoint(path)
    assert isinstance(loaded, ConditionalVAE)
    assert loaded.config == model.config and loaded.config["num_classes"] == 10
    assert payload["history"].rows == history.rows
    images, labels = data[1]
    with torch.no_grad():
        torch.testing.assert_close(loaded.reconstruct(images, labels),
                                   model.reconstruct(images, labels))


def test_latent_means_use_the_labels_of_a_conditional_model(data):
    model = conditional_model()
    images, labels = data[1]
    means = latent_means(model, images, batch_size=10, labels=labels)
    with torch.no_grad():
        torch.testing.assert_close(means, model.encode(images, labels).mean)
    with pytest.raises(ValueError, match="needs the label"):
        latent_means(model, images)
