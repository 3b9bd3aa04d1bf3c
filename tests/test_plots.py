"""Pictures: every function returns a figure showing what it says it shows."""

from __future__ import annotations

import io
import statistics

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from vae_course import plots  # noqa: E402
from vae_course.models import build_vae  # noqa: E402
from vae_course.train import History  # noqa: E402

TILE = 28 + 2  # a 28-pixel image and its 2-pixel padding


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def images():
    return torch.rand(20, 784, generator=torch.Generator().manual_seed(0))


def model(latent_dim=2, seed=0):
    torch.manual_seed(seed)
    return build_vae(latent_dim=latent_dim, hidden_sizes=(16,)).eval()


def tile(grid, row, column):
    """The 28 x 28 picture at (row, column) of a grid with 2-pixel padding."""
    top, left = 2 + row * TILE, 2 + column * TILE
    return torch.as_tensor(np.asarray(grid))[top:top + 28, left:left + 28]


def shown(figure):
    """The array drawn by the figure's first (only) image."""
    (ax,) = figure.axes
    return torch.as_tensor(np.asarray(ax.images[0].get_array()))


# --- grids --------------------------------------------------------------------

def test_image_grid_tiles_images_row_by_row(images):
    grid = plots.image_grid(images, nrow=10)
    assert grid.shape == (2 * 28 + 3 * 2, 10 * 28 + 11 * 2)
    for index in (0, 9, 10, 13, 19):
        row, column = divmod(index, 10)
        assert torch.equal(tile(grid, row, column), images[index].reshape(28, 28))
    assert (grid[:2] == 0.5).all() and (grid[:, :2] == 0.5).all()  # the padding


@pytest.mark.parametrize(("count", "nrow", "rows", "columns"), [(7, 10, 1, 7),
                                                                 (12, 5, 3, 5),
                                                                 (2, 8, 1, 2)])
def test_image_grid_shape_follows_count_and_nrow(count, nrow, rows, columns):
    grid = plots.image_grid(torch.zeros(count, 784), nrow=nrow)
    assert grid.shape == (rows * TILE + 2, columns * TILE + 2)


def test_show_images_draws_the_grid(images):
    figure = plots.show_images(images, nrow=10, title="twenty")
    assert isinstance(figure, Figure)
    assert torch.equal(shown(figure), plots.image_grid(images, 10))
    assert figure.axes[0].get_title() == "twenty"


def test_show_images_draws_into_a_given_axes(images):
    figure, (left, right) = plt.subplots(1, 2)
    assert plots.show_images(images[:4], nrow=2, ax=right) is figure
    assert len(right.images) == 1 and len(left.images) == 0


def test_plot_samples_shows_decoded_prior_samples():
    vae = model()
    figure = plots.plot_samples(vae, n=16, nrow=4, seed=3)
    assert isinstance(figure, Figure)
    expected = vae.sample(16, generator=torch.Generator().manual_seed(3))
    assert torch.equal(shown(figure), plots.image_grid(expected, 4))


def test_plot_reconstructions_puts_originals_over_reconstructions(images):
    vae = model()
    figure = plots.plot_reconstructions(vae, images, n=6)
    grid = shown(figure)
    assert grid.shape == (2 * TILE + 2, 6 * TILE + 2)
    reconstructions = vae.reconstruct(images[:6])
    for column in range(6):
        assert torch.equal(tile(grid, 0, column), images[column].reshape(28, 28))
        torch.testing.assert_close(tile(grid, 1, column),
                                   reconstructions[column].reshape(28, 28))


# --- the latent space ---------------------------------------------------------

def test_latent_means_are_the_posterior_means(images):
    vae = model(latent_dim=3)
    means = plots.latent_means(vae, images, batch_size=7)
    assert means.shape == (20, 3)
    torch.testing.assert_close(means, vae.encode(images).mean.detach())


def test_project_2d_keeps_2d_codes_and_finds_principal_components():
    codes = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plots.project_2d(codes), codes)

    generator = torch.Generator().manual_seed(1)
    codes = torch.randn(200, 5, generator=generator, dtype=torch.float64)
    codes = codes * torch.tensor([0.5, 3.0, 0.2, 1.5, 0.1], dtype=torch.float64) + 7
    projected = plots.project_2d(codes)
    assert projected.shape == (200, 2)
    centred = codes - codes.mean(0)
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    expected = centred @ vectors[:, [-1, -2]]
    for column in range(2):  # each direction is defined up to its sign
        sign = torch.sign((projected[:, column] * expected[:, column]).sum())
        torch.testing.assert_close(projected[:, column], sign * expected[:, column])


@pytest.mark.parametrize(("latent_dim", "title"), [(2, "latent means"),
                                                   (5, "principal components")])
def test_latent_scatter_places_each_image_at_its_code(images, latent_dim, title):
    vae = model(latent_dim=latent_dim)
    labels = torch.arange(20) % 10
    figure = plots.plot_latent_scatter(vae, images, labels)
    assert isinstance(figure, Figure)
    ax = figure.axes[0]
    assert title in ax.get_title()
    (points,) = ax.collections
    expected = plots.project_2d(vae.encode(images).mean.detach())
    np.testing.assert_allclose(points.get_offsets(), expected.numpy(), rtol=1e-5)
    np.testing.assert_array_equal(points.get_array(), labels.numpy())


def test_manifold_codes_form_a_grid_of_normal_quantiles():
    n = 5
    codes = plots.manifold_codes(n)
    assert codes.shape == (n * n, 2)
    quantiles = torch.tensor([statistics.NormalDist().inv_cdf(p)
                              for p in np.linspace(0.05, 0.95, n)])
    torch.testing.assert_close(codes[:n, 0], quantiles, atol=1e-5, rtol=0)
    torch.testing.assert_close(quantiles, -quantiles.flip(0), atol=1e-5, rtol=0)
    grid = codes.reshape(n, n, 2)  # (row, column, unit)
    for row in range(n):
        assert torch.equal(grid[row, :, 0], codes[:n, 0])  # z1 runs along each row
        assert (grid[row, :, 1] == grid[row, 0, 1]).all()  # z2 fixed in a row
    z2 = grid[:, 0, 1]
    assert (z2[1:] < z2[:-1]).all()  # z2 decreases down the rows (points up)
    torch.testing.assert_close(z2, quantiles.flip(0), atol=1e-5, rtol=0)


def test_plot_manifold_decodes_the_grid():
    vae = model(latent_dim=2)
    figure = plots.plot_manifold(vae, n=4)
    assert isinstance(figure, Figure)
    decoded = vae.decode(plots.manifold_codes(4)).mean.detach()
    grid = shown(figure)
    assert grid.shape == (4 * TILE + 2, 4 * TILE + 2)
    torch.testing.assert_close(grid, plots.image_grid(decoded, 4))


@pytest.mark.parametrize("latent_dim", [1, 3, 32])
def test_plot_manifold_needs_a_2d_latent_space(latent_dim):
    with pytest.raises(ValueError, match="2-D"):
        plots.plot_manifold(model(latent_dim=latent_dim))


def test_interpolation_runs_between_the_two_posterior_means(images):
    vae = model(latent_dim=3)
    path = plots.interpolate(vae, images[0], images[1], steps=5)
    assert path.shape == (5, 784)
    torch.testing.assert_close(path[0], vae.reconstruct(images[:1])[0])
    torch.testing.assert_close(path[-1], vae.reconstruct(images[1:2])[0])
    means = vae.encode(images[:2]).mean.detach()
    middle = vae.decode(means.mean(0, keepdim=True)).mean.detach()[0]
    torch.testing.assert_close(path[2], middle)


def test_plot_interpolation_frames_the_path_with_the_originals(images):
    vae = model()
    figure = plots.plot_interpolation(vae, images[0], images[1], steps=4)
    grid = shown(figure)
    assert grid.shape == (TILE + 2, 6 * TILE + 2)
    assert torch.equal(tile(grid, 0, 0), images[0].reshape(28, 28))
    assert torch.equal(tile(grid, 0, 5), images[1].reshape(28, 28))
    path = plots.interpolate(vae, images[0], images[1], steps=4)
    torch.testing.assert_close(tile(grid, 0, 1), path[0].reshape(28, 28))


# --- the live explorer --------------------------------------------------------

def find_widgets(widget, kind):
    found = [widget] if isinstance(widget, kind) else []
    for child in getattr(widget, "children", ()):
        found += find_widgets(child, kind)
    return found


def png_pixels(data: bytes, scale=6) -> torch.Tensor:
    picture = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    return torch.as_tensor(picture[::scale, ::scale].copy())  # undo the enlargement


def test_latent_explorer_redraws_when_a_slider_moves():
    widgets = pytest.importorskip("ipywidgets")
    vae = model(latent_dim=2)
    explorer = plots.latent_explorer(vae)
    assert isinstance(explorer, widgets.Widget)
    sliders = find_widgets(explorer, widgets.FloatSlider)
    (image,) = find_widgets(explorer, widgets.Image)
    assert [s.description for s in sliders] == ["z1", "z2"]
    first = bytes(image.value)
    assert first.startswith(b"\x89PNG")

    sliders[0].value = 2.0
    moved = bytes(image.value)
    assert moved != first
    expected = vae.decode(torch.tensor([[2.0, 0.0]])).mean.detach().reshape(28, 28)
    difference = png_pixels(moved).int() - (expected * 255).int()
    assert difference.abs().max() <= 1  # 8-bit rounding only

    sliders[0].value = 0.0
    assert bytes(image.value) == first


def test_latent_explorer_needs_a_2d_latent_space():
    pytest.importorskip("ipywidgets")
    with pytest.raises(ValueError, match="2-D"):
        plots.latent_explorer(model(latent_dim=3))


# --- learning curves ----------------------------------------------------------

def history(with_test=True):
    rows = []
    for epoch in (1, 2, 3):
        row = {"epoch": epoch, "seconds": 1.0}
        for term in ("loss", "reconstruction", "entropy", "cross_entropy", "kl"):
            row[f"train_{term}"] = 100.0 / epoch + len(term)
            if with_test:
                row[f"validation_{term}"] = 90.0 / epoch + len(term)
        rows.append(row)
    return History(rows)


def test_plot_history_draws_train_and_test_per_term():
    curves = history()
    figure = plots.plot_history(curves)
    assert isinstance(figure, Figure)
    terms = ("loss", "reconstruction", "entropy", "cross_entropy")
    assert len(figure.axes) == len(terms)
    for ax, term in zip(figure.axes, terms, strict=True):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(lines) == {"train", "validation"}
        for split, line in lines.items():
            assert list(line.get_xdata()) == [1, 2, 3]
            assert list(line.get_ydata()) == curves.column(f"{split}_{term}")
        assert ax.get_xlabel() == "epoch"


def test_plot_history_without_test_rows_draws_train_only():
    figure = plots.plot_history(history(with_test=False), terms=("loss", "kl"))
    assert len(figure.axes) == 2
    for ax in figure.axes:
        assert [line.get_label() for line in ax.get_lines()] == ["train"]


def test_plot_history_of_a_single_term():
    figure = plots.plot_history(history(), terms=("kl",))
    assert len(figure.axes) == 1
    assert len(figure.axes[0].get_lines()) == 2


# --- figures a reader can read ------------------------------------------------
# Every helper labels what it draws: plots name both axes, image grids (no axes to
# label) carry a title, colour that encodes a value comes with a colour bar, and a
# model's name passed in reaches the title.

NAME = "the test model"


def labelled(ax):
    return bool(ax.get_xlabel().strip()) and bool(ax.get_ylabel().strip())


def titles(figure):
    suptitle = figure._suptitle.get_text() if figure._suptitle else ""
    return [suptitle] + [ax.get_title() for ax in figure.axes]


def colour_bars(figure):
    """Axes that hold a colour bar (matplotlib marks them with ``_colorbar``)."""
    return [ax for ax in figure.axes if getattr(ax, "_colorbar", None) is not None]


def image_grid_figures(images):
    vae = model(latent_dim=2)
    return {
        "samples": plots.plot_samples(vae, n=4, nrow=2, model_name=NAME),
        "reconstructions": plots.plot_reconstructions(vae, images, n=3,
                                                      model_name=NAME),
        "interpolation": plots.plot_interpolation(vae, images[0], images[1], steps=3,
                                                  model_name=NAME),
    }


@pytest.mark.parametrize("kind", ["samples", "reconstructions", "interpolation"])
def test_image_grid_helpers_have_a_title_naming_the_model(images, kind):
    figure = image_grid_figures(images)[kind]
    (ax,) = figure.axes
    assert NAME in ax.get_title()
    assert ax.get_title() != NAME  # the name, and what the tiles are


def test_image_grid_titles_without_a_model_name_still_say_what_they_show(images):
    vae = model(latent_dim=2)
    figure = plots.plot_samples(vae, n=4, nrow=2)
    assert figure.axes[0].get_title() == "samples from the prior"


def test_interpolations_of_different_models_have_different_titles(images):
    small, large = model(latent_dim=2), model(latent_dim=5)
    first = plots.plot_interpolation(small, images[0], images[1], steps=3)
    second = plots.plot_interpolation(large, images[0], images[1], steps=3)
    assert first.axes[0].get_title() != second.axes[0].get_title()
    assert "2-D" in first.axes[0].get_title() and "5-D" in second.axes[0].get_title()


@pytest.mark.parametrize(("latent_dim", "x_words"), [(2, "z₁"),
                                                     (5, "principal component 1")])
def test_latent_scatter_labels_its_axes_and_colour_bar(images, latent_dim, x_words):
    vae = model(latent_dim=latent_dim)
    figure = plots.plot_latent_scatter(vae, images, torch.arange(20) % 10,
                                       model_name=NAME)
    ax = figure.axes[0]
    assert labelled(ax)
    assert x_words in ax.get_xlabel()
    assert NAME in ax.get_title()
    (bar,) = colour_bars(figure)
    assert bar._colorbar.ax.get_ylabel() == "digit"


def test_latent_scatter_colour_bar_names_the_label_kind(images):
    figure = plots.plot_latent_scatter(model(), images, torch.arange(20) % 10,
                                       label_name="class")
    (bar,) = colour_bars(figure)
    assert bar._colorbar.ax.get_ylabel() == "class"


def test_manifold_labels_its_axes_with_the_codes():
    vae = model(latent_dim=2)
    figure = plots.plot_manifold(vae, n=5, model_name=NAME)
    (ax,) = figure.axes
    assert ax.axison and labelled(ax)
    assert "z₁" in ax.get_xlabel() and "z₂" in ax.get_ylabel()
    assert NAME in ax.get_title()
    codes = plots.manifold_codes(5).tolist()
    x_ticks = [float(t.get_text()) for t in ax.get_xticklabels()]
    y_ticks = [float(t.get_text()) for t in ax.get_yticklabels()]
    assert x_ticks == pytest.approx([codes[i][0] for i in (0, 2, 4)], abs=0.01)
    assert y_ticks == pytest.approx([codes[i][1] for i in (0, 10, 20)], abs=0.01)
    # each tick sits at the centre of its tile
    assert list(ax.get_xticks()) == [16, 16 + 2 * TILE, 16 + 4 * TILE]


def test_plot_history_labels_every_panel_and_names_the_model():
    figure = plots.plot_history(history(), terms=("loss", "kl"), model_name=NAME)
    for ax in figure.axes:
        assert labelled(ax)
        assert ax.get_ylabel() == "nats per image"
    assert NAME in titles(figure)


def test_titled_prefixes_the_model_name_only_when_given():
    assert plots.titled("samples") == "samples"
    assert plots.titled("samples", "β = 4") == "β = 4: samples"


def test_manifold_with_an_even_grid_ticks_only_its_ends():
    figure = plots.plot_manifold(model(latent_dim=2), n=4)
    assert list(figure.axes[0].get_xticks()) == [16, 16 + 3 * TILE]
