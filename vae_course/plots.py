"""Pictures of a VAE: image grids, samples, reconstructions, the latent space, curves.

Each returns its matplotlib figure (end the notebook line with ``;`` to show it once)
and puts ``model_name`` in its title, so that figures side by side say which model
drew each; axes carry their units.
"""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import torch
from torch.distributions import Normal

from .models import VAE, is_conditional, label_arguments


def titled(text: str, model_name: str | None = None) -> str:
    """``text``, prefixed with the model's name when one is given."""
    return f"{model_name}: {text}" if model_name else text


def image_grid(images: torch.Tensor, nrow: int = 10, padding: int = 2) -> torch.Tensor:
    """Flattened images (N, 784) tiled into one (H, W) picture."""
    from torchvision.utils import make_grid  # torchvision's import is slow: when used

    tiles = images.detach().cpu().reshape(-1, 1, 28, 28)
    return make_grid(tiles, nrow=nrow, padding=padding, pad_value=0.5)[0]


def show_images(images: torch.Tensor, nrow: int = 10, title: str | None = None,
                ax=None):
    """Show flattened images (N, 784) as a grid with ``nrow`` images per row."""
    if ax is None:
        _, ax = plt.subplots(figsize=(nrow * 0.6, 0.6 * -(-len(images) // nrow) + 0.4))
    ax.imshow(image_grid(images, nrow).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax.figure


def plot_samples(model: VAE, n: int = 64, nrow: int = 8, seed: int = 0,
                 model_name: str | None = None):
    """Pixel means decoded from ``n`` codes drawn from the prior."""
    images = model.sample(n, generator=torch.Generator().manual_seed(seed))
    return show_images(images, nrow, title=titled("samples from the prior", model_name))


def plot_reconstructions(model: VAE, images: torch.Tensor, n: int = 10,
                         model_name: str | None = None):
    """Originals on the top row, their reconstructions below."""
    originals = images[:n].to(model.device)
    both = torch.cat([originals, model.reconstruct(originals)])  # (2n, 784)
    title = titled("originals (top) and reconstructions (bottom)", model_name)
    return show_images(both, nrow=n, title=title)


@torch.no_grad()
def latent_means(model: VAE, images: torch.Tensor, batch_size: int = 1000,
                 labels: torch.Tensor | None = None):
    """Posterior means of every image: (N, latent_dim) on the CPU (those of q(z|x,y)
    for a conditional VAE, given the ``labels``)."""
    model.eval()
    means = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(model.device)
        given = label_arguments(model, None if labels is None else
                                labels[start:start + batch_size].to(model.device))
        means.append(model.encode(batch, *given).mean.cpu())
    return torch.cat(means)


def project_2d(codes: torch.Tensor) -> torch.Tensor:
    """Codes unchanged when 2-D, else their first two principal components."""
    if codes.shape[1] <= 2:
        return codes
    centred = codes - codes.mean(0)
    _, _, directions = torch.linalg.svd(centred, full_matrices=False)
    return centred @ directions[:2].T  # (N, 2)


def plot_latent_scatter(model: VAE, images: torch.Tensor, labels: torch.Tensor, ax=None,
                        model_name: str | None = None, label_name: str = "digit",
                        split: str = "test"):
    """Posterior means coloured by label, by PCA when latent_dim > 2 (a conditional VAE
    gets the ``labels`` as its y too); ``split`` names the images in the title."""
    conditions = labels if is_conditional(model) else None
    points = project_2d(latent_means(model, images, labels=conditions)).numpy()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 5))
    scatter = ax.scatter(points[:, 0], points[:, 1], c=torch.as_tensor(labels).numpy(),
                         cmap="tab10", s=3, vmin=-0.5, vmax=9.5)
    ax.figure.colorbar(scatter, ax=ax, ticks=range(10), label=label_name)
    if model.latent_dim <= 2:
        kind = "latent means"
        ax.set_xlabel("latent unit z₁ (posterior mean)")
        ax.set_ylabel("latent unit z₂ (posterior mean)")
    else:
        kind = f"first two principal components of {model.latent_dim}-D latent means"
        ax.set_xlabel("principal component 1 of the latent means")
        ax.set_ylabel("principal component 2 of the latent means")
    ax.set_title(titled(f"{split} set, {kind}", model_name))
    return ax.figure


def manifold_codes(n: int = 20, low: float = 0.05, high: float = 0.95) -> torch.Tensor:
    """An n x n grid of 2-D codes at evenly spaced quantiles of N(0, 1): (n*n, 2).
    Rows run from high to low z2, so that z2 points up in the picture."""
    quantiles = Normal(0.0, 1.0).icdf(torch.linspace(low, high, n))  # (n,)
    z1 = quantiles.repeat(n)
    z2 = quantiles.flip(0).repeat_interleave(n)
    return torch.stack([z1, z2], dim=1)


@torch.no_grad()
def plot_manifold(model: VAE, n: int = 20, model_name: str | None = None):
    """Decode a grid of quantiles of a 2-D latent space into one picture, a map of
    (z1, z2): ticks at the first, last (and middle, code 0, for odd n) tiles."""
    if model.latent_dim != 2:
        raise ValueError(f"the manifold needs a 2-D latent space; this model has "
                         f"{model.latent_dim}")
    codes = manifold_codes(n)
    images = model.decode(codes.to(model.device)).mean
    title = titled("decoded grid of N(0, 1) quantiles", model_name)
    fig = show_images(images, nrow=n, title=title)
    fig.set_size_inches(7, 7.4)
    ax = fig.axes[0]
    ax.set_axis_on()
    picked = sorted({0, n - 1} | ({n // 2} if n % 2 else set()))
    centres = [2 + index * 30 + 14 for index in picked]  # 28-pixel tiles, 2 padding
    ax.set_xticks(centres, [f"{codes[i, 0]:.2f}" for i in picked])
    ax.set_yticks(centres, [f"{codes[i * n, 1]:.2f}" for i in picked])
    ax.set(xlabel="latent unit z₁", ylabel="latent unit z₂")
    return fig


@torch.no_grad()
def interpolate(model: VAE, image_a: torch.Tensor, image_b: torch.Tensor,
                steps: int = 10) -> torch.Tensor:
    """Decode evenly spaced points between two images' posterior means."""
    pair = torch.stack([image_a, image_b]).reshape(2, -1).to(model.device)
    start, end = model.encode(pair).mean  # (latent_dim,) each
    weights = torch.linspace(0, 1, steps, device=model.device)[:, None]  # (steps, 1)
    return model.decode((1 - weights) * start + weights * end).mean  # (steps, 784)


def plot_interpolation(model: VAE, image_a, image_b, steps: int = 10,
                       model_name: str | None = None):
    """The two originals at the ends, the decoded path between them inside."""
    path = interpolate(model, image_a, image_b, steps)
    ends = [image.reshape(1, -1).to(path) for image in (image_a, image_b)]
    row = torch.cat([ends[0], path, ends[1]])  # (steps + 2, 784)
    title = titled(f"interpolation in its {model.latent_dim}-D latent space "
                   "(originals at the ends)", model_name)
    return show_images(row, nrow=steps + 2, title=title)


def plot_history(history, terms=("loss", "reconstruction", "entropy", "cross_entropy"),
                 model_name: str | None = None):
    """One panel per term: train and (when present) validation, per epoch, in nats."""
    fig, axes = plt.subplots(1, len(terms), figsize=(3.6 * len(terms), 3), squeeze=False)
    epochs = history.column("epoch")
    for ax, term in zip(axes[0], terms, strict=True):
        for split in ("train", "validation"):
            key = f"{split}_{term}"
            if history.rows and key in history.rows[0]:
                ax.plot(epochs, history.column(key), marker=".", label=split)
        # Each panel has its own scale, so each says its unit.
        ax.set(title=term.replace("_", "-"), xlabel="epoch", ylabel="nats per image")
        ax.legend()
    if model_name:
        fig.suptitle(model_name)
    fig.tight_layout()
    return fig


def latent_explorer(model: VAE, limit: float = 3.0):
    """An ipywidgets box: two sliders over a 2-D latent space and the digit they
    decode, redrawn as a slider moves."""
    import ipywidgets as widgets
    from PIL import Image

    if model.latent_dim != 2:
        raise ValueError("the explorer needs a model with a 2-D latent space")
    sliders = [widgets.FloatSlider(value=0.0, min=-limit, max=limit, step=0.1,
                                   description=name, continuous_update=True)
               for name in ("z1", "z2")]
    picture = widgets.Image(format="png", width=168, height=168)

    def redraw(_change=None):  # the sliders' code decoded, as a PNG enlarged 6 times
        code = torch.tensor([[s.value for s in sliders]], device=model.device)
        with torch.no_grad():
            digit = model.decode(code).mean[0].reshape(28, 28)
        pixels = (digit.clamp(0, 1) * 255).byte().cpu().numpy()
        png = io.BytesIO()
        Image.fromarray(pixels).resize((168, 168), Image.NEAREST).save(png, format="PNG")
        picture.value = png.getvalue()

    for slider in sliders:
        slider.add_class("vae-explorer-slider")
        slider.observe(redraw, names="value")
    picture.add_class("vae-explorer-image")
    redraw()
    return widgets.HBox([widgets.VBox(sliders), picture])
