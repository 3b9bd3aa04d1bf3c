"""Epoch time of the course's in-memory trainer against a seed-000-style DataLoader loop.

Both loops train the same default model (784-100-100-64 / 32-100-100-784) with the
same step: dynamic binarization, the negative ELBO, Adam; and, like seed 000, both
end each epoch with a pass over the test set. They differ only in where batches come
from: torchvision DataLoaders that convert each image from PIL on every pass
(seed 000), or one tensor in memory sliced by ``randperm`` (``vc.train.fit``).
Both run in this one process, alternating epochs, so machine noise hits them alike.

    python benchmarks/epoch_speed.py --epochs 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchvision import datasets, transforms

import vae_course as vc


def dataloader_epoch(model, optimizer, train_loader, test_loader) -> float:
    started = time.perf_counter()
    model.train()
    for images, _ in train_loader:
        batch = vc.data.binarize(images.reshape(-1, 784))  # (batch, 784)
        loss, _ = vc.elbo.negative_elbo(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        for images, _ in test_loader:
            vc.elbo.negative_elbo(model, vc.data.binarize(images.reshape(-1, 784)))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each loop")
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    vc.setup(seed=0)
    root = vc.data.data_root()
    vc.data.load_mnist("train")  # fetch the files first if they are missing
    loaders = [torch.utils.data.DataLoader(
        datasets.MNIST(root, train=train, transform=transforms.ToTensor()),
        batch_size=args.batch_size, shuffle=True) for train in (True, False)]
    images, _ = vc.data.load_mnist("train")
    test_images, _ = vc.data.load_mnist("test")
    print(f"{torch.get_num_threads()} threads, {len(images)} images, "
          f"batch {args.batch_size}")
    loader_model, memory_model = vc.models.build_vae(), vc.models.build_vae()
    loader_optimizer = torch.optim.Adam(loader_model.parameters(), lr=1e-3)
    memory_optimizer = torch.optim.Adam(memory_model.parameters(), lr=1e-3)
    loader_times, memory_times = [], []
    memory_history = None
    for epoch in range(1, args.epochs + 1):
        loader_times.append(dataloader_epoch(loader_model, loader_optimizer, *loaders))
        started = time.perf_counter()
        memory_history = vc.train.fit(memory_model, images, test_images,
                                      num_epochs=epoch, batch_size=args.batch_size,
                                      progress=False, history=memory_history,
                                      optimizer=memory_optimizer)
        memory_times.append(time.perf_counter() - started)
        print(f"epoch {epoch}: DataLoader {loader_times[-1]:.2f} s, "
              f"in memory {memory_times[-1]:.2f} s")
    loader_median = statistics.median(loader_times)
    memory_median = statistics.median(memory_times)
    print(f"median epoch (train + test pass): DataLoader {loader_median:.2f} s, "
          f"in memory {memory_median:.2f} s, ratio {loader_median / memory_median:.1f}x")


if __name__ == "__main__":
    main()
