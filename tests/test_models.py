"""Encoder and decoder shapes, parameter counts, and the VAE module's methods."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vae_course.models import (
    IMAGE_SIZE,
    VAE,
    build_vae,
    conv_decoder,
    conv_encoder,
    count_parameters,
    init_output_bias,
    mlp,
)


def linear_shapes(module: nn.Module) -> list[tuple[int, int]]:
    return [(layer.in_features, layer.out_features) for layer in module.modules()
            if isinstance(layer, nn.Linear)]


def mlp_parameter_count(sizes) -> int:
    """Weights plus biases of Linear layers between consecutive sizes."""
    return sum(n_in * n_out + n_out for n_in, n_out in zip(sizes[:-1], sizes[1:],
                                                              strict=True))


@pytest.fixture
def images():
    return torch.rand(5, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))


def test_default_is_the_deep_bayes_tutorials_mlp():
    torch.manual_seed(0)
    model = build_vae()
    assert isinstance(model, VAE)
    assert model.latent_dim == 32
    assert model.likelihood == "bernoulli"
    assert linear_shapes(model.encoder) == [(784, 100), (100, 100), (100, 64)]
    assert linear_shapes(model.decoder) == [(32, 100), (100, 100), (100, 784)]
    encoder_count = mlp_parameter_count([784, 100, 100, 64])
    decoder_count = mlp_parameter_count([32, 100, 100, 784])
    assert count_parameters(model.encoder) == encoder_count
    assert count_parameters(model.decoder) == decoder_count
    assert count_parameters(model) == encoder_count + decoder_count
    assert model.config == {"architecture": "mlp", "latent_dim": 32,
                            "hidden_sizes": [100, 100], "likelihood": "bernoulli"}


def test_mlp_puts_relu_between_layers_and_nothing_after_the_last():
    net = mlp([4, 3, 2])
    kinds = [type(layer) for layer in net]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear]


@pytest.mark.parametrize("sizes", [[5], [], [4, 0, 2], [4, -1]])
def test_mlp_refuses_bad_sizes(sizes):
    with pytest.raises(ValueError):
        mlp(sizes)


@pytest.mark.parametrize(("latent_dim", "hidden"), [(2, (16,)), (8, (50, 40, 30)),
                                                    (20, (400,))])
def test_mlp_sizes_are_configurable(latent_dim, hidden):
    model = build_vae(latent_dim=latent_dim, hidden_sizes=hidden)
    encoder_sizes = [IMAGE_SIZE, *hidden, 2 * latent_dim]
    decoder_sizes = [latent_dim, *reversed(hidden), IMAGE_SIZE]
    assert linear_shapes(model.encoder) == list(zip(encoder_sizes[:-1],
                                                    encoder_sizes[1:], strict=True))
    assert linear_shapes(model.decoder) == list(zip(decoder_sizes[:-1],
                                                    decoder_sizes[1:], strict=True))
    assert count_parameters(model) == (mlp_parameter_count(encoder_sizes)
                                       + mlp_parameter_count(decoder_sizes))
    assert model.config["hidden_sizes"] == list(hidden)


def test_conv_networks_map_images_to_codes_and_back(images):
    torch.manual_seed(0)
    encoder, decoder = conv_encoder(latent_dim=6), conv_decoder(latent_dim=6)
    assert encoder(images).shape == (5, 12)
    assert decoder(torch.randn(5, 6)).shape == (5, IMAGE_SIZE)


def test_conv_channels_set_its_width_and_are_recorded_in_its_config(images):
    default, narrow = build_vae("conv"), build_vae("conv", channels=8)
    assert default.config["channels"] == 32 and narrow.config["channels"] == 8
    widths = [layer.out_channels for layer in narrow.modules()
              if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d)]
    assert widths == [8, 16, 8, 1]  # encoder, then decoder
    assert narrow.decoder(torch.randn(5, 32)).shape == (5, IMAGE_SIZE)
    assert narrow.encode(images).mean.shape == (5, 32)
    assert "channels" not in build_vae().config  # an MLP has no channels


@pytest.mark.parametrize("kwargs, message", [
    ({"channels": 8}, "conv architecture"),
    ({"architecture": "conv", "channels": 0}, "channels"),
    ({"architecture": "conv", "channels": 2.0}, "channels"),
    ({"architecture": "conv", "channels": True}, "channels"),
])
def test_bad_channels_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_vae(**kwargs)


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli",
                                        "discretized_logistic"])
def test_vae_methods_have_the_documented_shapes(architecture, likelihood, images):
    torch.manual_seed(0)
    model = build_vae(architecture, latent_dim=3, hidden_sizes=(20,),
                      likelihood=likelihood)
    assert model.config["architecture"] == architecture
    posterior = model.encode(images)
    assert posterior.batch_shape == (5,)
    assert posterior.event_shape == (3,)
    assert posterior.mean.shape == (5, 3)

    likelihood_dist = model.decode(torch.randn(5, 3))
    assert likelihood_dist.batch_shape == (5,)
    assert likelihood_dist.event_shape == (IMAGE_SIZE,)
    # Leading sample dimensions are kept: (samples, batch, latent) -> (samples, batch)
    assert model.decode(torch.randn(4, 5, 3)).batch_shape == (4, 5)

    posterior, z, likelihood_dist = model(images)
    assert z.shape == (5, 3)
    assert z.requires_grad  # forward uses rsample
    assert likelihood_dist.batch_shape == (5,)

    samples = model.sample(7)
    assert samples.shape == (7, IMAGE_SIZE)
    reconstructions = model.reconstruct(images)
    assert reconstructions.shape == (5, IMAGE_SIZE)
    for pixels in (samples, reconstructions):
        assert not pixels.requires_grad
        assert pixels.min() >= 0 and pixels.max() <= 1


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_decoders_have_one_output_per_pixel_and_two_for_the_discretized_logistic(
        architecture):
    torch.manual_seed(0)
    z = torch.randn(3, 4)
    for likelihood, outputs in [("bernoulli", 1), ("continuous_bernoulli", 1),
                                ("discretized_logistic", 2)]:
        model = build_vae(architecture, latent_dim=4, hidden_sizes=(20,),
                          likelihood=likelihood)
        assert model.decoder(z).shape == (3, outputs * IMAGE_SIZE)
    hidden = (100, 100)
    assert count_parameters(build_vae(likelihood="discretized_logistic").decoder) \
        == mlp_parameter_count([32, *hidden, 2 * IMAGE_SIZE])
    assert count_parameters(build_vae(likelihood="continuous_bernoulli").decoder) \
        == mlp_parameter_count([32, *hidden, IMAGE_SIZE])


def test_reconstruct_decodes_the_posterior_mean(images):
    torch.manual_seed(0)
    model = build_vae(latent_dim=4, hidden_sizes=(16,))
    with torch.no_grad():
        loc = model.encoder(images)[:, :4]
        expected = torch.sigmoid(model.decoder(loc))
    torch.testing.assert_close(model.reconstruct(images), expected)


def test_sample_with_a_generator_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(0)
    model = build_vae(latent_dim=4, hidden_sizes=(16,))
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    first = model.sample(6, generator=torch.Generator().manual_seed(11))
    assert torch.equal(torch.rand(3), expected_next)
    second = model.sample(6, generator=torch.Generator().manual_seed(11))
    assert torch.equal(first, second)
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        torch.testing.assert_close(first, torch.sigmoid(model.decoder(z)))


@pytest.mark.parametrize("kwargs", [{"architecture": "transformer"},
                                    {"architecture": "MLP"},
                                    {"likelihood": "gaussian"},
                                    {"latent_dim": 0},
                                    {"latent_dim": -3},
                                    {"hidden_sizes": (100, 0)}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        build_vae(**kwargs)


def test_vae_refuses_an_unknown_likelihood():
    with pytest.raises(ValueError, match="poisson"):
        VAE(nn.Identity(), nn.Identity(), 2, likelihood="poisson")


def test_a_fractional_latent_dim_is_refused_clearly():
    with pytest.raises(ValueError, match="latent_dim"):
        build_vae(latent_dim=2.5)
    with pytest.raises(ValueError, match="hidden_sizes"):
        build_vae(hidden_sizes=(100.5,))


def test_init_output_bias_starts_the_decoder_at_the_mean_digit():
    torch.manual_seed(0)
    model = build_vae(latent_dim=4, hidden_sizes=(8,))
    images = torch.rand(50, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    images[:, 0] = 0.0  # a pixel never inked: its logit is clipped, not -inf
    images[:, 1] = 1.0
    assert init_output_bias(model, images) is model
    bias = model.decoder[-1].bias
    means = images.double().mean(0).clamp(1e-3, 1 - 1e-3)
    torch.testing.assert_close(torch.sigmoid(bias.double()), means, rtol=0, atol=1e-6)
    assert torch.isfinite(bias).all()
    # With the last weights at zero every code decodes to exactly the mean digit.
    with torch.no_grad():
        model.decoder[-1].weight.zero_()
    decoded = model.decode(torch.randn(3, 4)).mean
    torch.testing.assert_close(decoded, means.float().expand(3, -1), rtol=0, atol=1e-6)


def test_init_output_bias_refuses_what_it_cannot_do():
    images = torch.rand(5, IMAGE_SIZE)
    with pytest.raises(ValueError, match="MLP decoder"):
        init_output_bias(build_vae("conv", latent_dim=4), images)
    with pytest.raises(ValueError, match="shape"):
        init_output_bias(build_vae(), images[:, :10])
    with pytest.raises(ValueError, match="clip"):
        init_output_bias(build_vae(), images, clip=0.0)
