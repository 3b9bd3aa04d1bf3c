"""The in-memory training loop: history, determinism, resuming, argument checks."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.distributions import Distribution

from vae_course.checkpoints import load_checkpoint, restore_optimizer, save_checkpoint
from vae_course.distributions import GreyPixelsError
from vae_course.evaluate import evaluate_elbo
from vae_course.models import build_vae
from vae_course.train import History, fit

TERMS = ("loss", "reconstruction", "entropy", "cross_entropy", "kl")
ROW_KEYS = {"epoch", "seconds", *(f"{split}_{term}" for split in ("train", "validation")
                                  for term in TERMS)}


def synthetic_images(n, seed):
    """Grey images near four random binary prototypes, like a tiny digit set."""
    generator = torch.Generator().manual_seed(1000)  # the same prototypes every time
    prototypes = torch.rand(4, 784, generator=generator).round()
    generator.manual_seed(seed)
    which = torch.randint(0, 4, (n,), generator=generator)
    noise = torch.rand(n, 784, generator=generator) * 0.2
    return (prototypes[which] * 0.8 + noise).clamp(0, 1)


@pytest.fixture(scope="module")
def data():
    return synthetic_images(256, seed=1), synthetic_images(64, seed=2)


def tiny_model(seed=0, likelihood="bernoulli"):
    torch.manual_seed(seed)
    return build_vae(latent_dim=4, hidden_sizes=(32,), likelihood=likelihood)


def train(model, data, **kwargs):
    kwargs = {"num_epochs": 2, "batch_size": 64, "progress": False, **kwargs}
    return fit(model, *data, **kwargs)


def without_seconds(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history.rows]


def parameters_equal(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                 b.state_dict().values(), strict=True))


# --- the history --------------------------------------------------------------

def test_history_has_one_row_per_epoch_with_every_term(data):
    model = tiny_model()
    history = train(model, data, num_epochs=3)
    assert isinstance(history, History)
    assert len(history) == 3
    assert history.column("epoch") == [1, 2, 3]
    for row in history.rows:
        assert set(row) == ROW_KEYS
        assert row["seconds"] > 0
        for split in ("train", "validation"):
            loss = row[f"{split}_loss"]
            assert math.isfinite(loss)
            expected = -(row[f"{split}_reconstruction"] + row[f"{split}_entropy"]
                         - row[f"{split}_cross_entropy"])
            assert loss == pytest.approx(expected, rel=1e-5, abs=1e-3)
            kl = row[f"{split}_cross_entropy"] - row[f"{split}_entropy"]
            assert row[f"{split}_kl"] == pytest.approx(kl, rel=1e-5, abs=1e-3)
            assert row[f"{split}_kl"] >= 0
            assert row[f"{split}_reconstruction"] < 0  # binary pixels: log p <= 0


def test_test_terms_are_those_of_the_trained_model(data):
    """The closed-form test terms do not depend on z: evaluate_elbo must agree."""
    model = tiny_model()
    last = train(model, data, num_epochs=2, seed=5).rows[-1]
    terms = evaluate_elbo(model, data[1], seed=5)  # the same fixed binarization
    for name in ("entropy", "cross_entropy", "kl"):
        assert last[f"validation_{name}"] == pytest.approx(terms[name], rel=1e-5)


def test_without_test_images_only_train_columns_are_kept(data):
    history = train(tiny_model(), (data[0], None), num_epochs=1)
    assert set(history.rows[0]) == {"epoch", "seconds",
                                    *(f"train_{term}" for term in TERMS)}


def test_loss_decreases_on_real_mnist(real_data_root):
    from vae_course.data import load_mnist

    root = real_data_root
    train_images, _ = load_mnist("train", "mnist", root)
    validation_images, _ = load_mnist("validation", "mnist", root)
    torch.manual_seed(0)
    model = build_vae()
    before = evaluate_elbo(model, validation_images[:200])["negative_elbo"]
    history = fit(model, train_images[:1000], validation_images[:200], num_epochs=3,
                  batch_size=50, progress=False)
    train_loss = history.column("train_loss")
    validation_loss = history.column("validation_loss")
    assert train_loss == sorted(train_loss, reverse=True)
    assert validation_loss == sorted(validation_loss, reverse=True)
    assert validation_loss[-1] < before - 100  # 545 nats untrained; about 250 after


# --- reproducibility and resuming ---------------------------------------------

def test_same_seed_gives_the_same_history_and_weights(data):
    first_model, second_model = tiny_model(), tiny_model()
    first = train(first_model, data, num_epochs=2, seed=3)
    second = train(second_model, data, num_epochs=2, seed=3)
    assert without_seconds(first) == without_seconds(second)
    assert parameters_equal(first_model, second_model)
    other = train(tiny_model(), data, num_epochs=2, seed=4)
    assert without_seconds(other) != without_seconds(first)


def test_resuming_from_a_checkpoint_equals_a_straight_run(data, tmp_path):
    straight_model = tiny_model()
    straight = train(straight_model, data, num_epochs=4, learning_rate=3e-3)

    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = train(model, data, num_epochs=2, optimizer=optimizer)
    save_checkpoint(tmp_path / "checkpoint.pt", model, optimizer, history)
    del model, optimizer

    model, payload = load_checkpoint(tmp_path / "checkpoint.pt")
    optimizer = restore_optimizer(torch.optim.Adam(model.parameters(), lr=3e-3),
                                  payload)
    resumed = train(model, data, num_epochs=4, learning_rate=3e-3,
                    optimizer=optimizer, history=payload["history"])
    assert resumed.column("epoch") == [1, 2, 3, 4]
    assert without_seconds(resumed) == without_seconds(straight)
    assert parameters_equal(model, straight_model)


# --- argument checks ----------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "name"), [
    ({"num_epochs": 0}, "num_epochs"),
    ({"num_epochs": -1}, "num_epochs"),
    ({"num_epochs": 1.5}, "num_epochs"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"learning_rate": 0}, "learning_rate"),
    ({"learning_rate": -1}, "learning_rate"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"learning_rate": float("inf")}, "learning_rate"),
    ({"beta": -1.0}, "beta"),
    ({"warmup_epochs": -1}, "warmup_epochs"),
    ({"iwae_samples": 0}, "iwae_samples"),
    ({"iwae_samples": 2.5}, "iwae_samples"),
    ({"iwae_samples": True}, "iwae_samples"),
    ({"iwae_samples": 5, "beta": 0.5}, "iwae_samples=5 .* beta"),
    ({"iwae_samples": 5, "warmup_epochs": 1}, "iwae_samples=5 .* warmup_epochs"),
])
def test_bad_arguments_are_refused_before_training(data, kwargs, name):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises((TypeError, ValueError), match=name):
        train(model, data, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("images", [
    torch.rand(8, 28, 28),
    torch.rand(8, 100),
    torch.rand(0, 784),
    torch.randint(0, 2, (8, 784)),
    (torch.rand(8, 784) * 255).to(torch.uint8),
    torch.rand(8, 784) * 255,
    torch.rand(8, 784) - 0.5,
], ids=["28x28", "100-pixels", "empty", "int64", "uint8", "0-255", "negative"])
@pytest.mark.parametrize("split", ["train_images", "validation_images"])
def test_bad_images_are_refused(data, images, split):
    train_images, validation_images = data
    arguments = {"train_images": train_images, "validation_images": validation_images,
                 split: images}
    with pytest.raises(ValueError, match=split):
        fit(tiny_model(), arguments["train_images"], arguments["validation_images"],
            num_epochs=1, progress=False)


def test_a_list_is_not_an_image_tensor(data):
    with pytest.raises(TypeError, match="torch.Tensor"):
        fit(tiny_model(), data[0].tolist(), num_epochs=1, progress=False)


# --- failures, callbacks, progress --------------------------------------------

def poison_after_first_epoch(value):
    def callback(model, optimizer, history):
        if len(history) == 1:
            with torch.no_grad():
                model.decoder[-1].bias[0] = value
    return callback


def test_a_non_finite_loss_names_the_epoch_and_the_step(data):
    # An infinite logit passes torch's support check and makes the loss nan.
    with pytest.raises(FloatingPointError, match=r"epoch 2, step 1\b"):
        train(tiny_model(), data, num_epochs=3,
              callback=poison_after_first_epoch(float("inf")))


def test_a_nan_weight_stops_with_a_floating_point_error(data):
    # torch.distributions refuses nan parameters with a ValueError of its own; the
    # loop must still say where training broke.
    with pytest.raises(FloatingPointError, match=r"epoch 2, step 1\b"):
        train(tiny_model(), data, num_epochs=3,
              callback=poison_after_first_epoch(float("nan")))


def test_a_huge_learning_rate_stops_with_a_floating_point_error(data):
    with pytest.raises(FloatingPointError, match=r"epoch \d+, step \d+"):
        train(tiny_model(), data, num_epochs=2, learning_rate=1e30)


def test_callback_runs_once_after_every_epoch(data):
    calls = []
    model = tiny_model()

    def callback(model_seen, optimizer, history):
        calls.append((model_seen, optimizer, len(history), history.rows[-1]["epoch"]))

    history = train(model, data, num_epochs=3, callback=callback)
    assert [(length, epoch) for _, _, length, epoch in calls] == [(1, 1), (2, 2),
                                                                  (3, 3)]
    assert all(seen is model for seen, _, _, _ in calls)
    assert all(isinstance(opt, torch.optim.Adam) for _, opt, _, _ in calls)
    assert len(history) == 3


def test_progress_false_prints_nothing(data, capsys):
    train(tiny_model(), data, num_epochs=1, progress=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_true_shows_a_bar(data, capsys):
    train(tiny_model(), data, num_epochs=1, progress=True)
    captured = capsys.readouterr()
    assert "training" in captured.out + captured.err


# --- likelihoods and binarization ---------------------------------------------

def test_grey_pixels_train_a_continuous_bernoulli_model(data):
    history = train(tiny_model(likelihood="continuous_bernoulli"), data)
    assert all(math.isfinite(row["validation_loss"]) for row in history.rows)


def test_grey_levels_train_a_discretized_logistic_model(data):
    # On the 256 levels k / 255, as load_mnist gives them.
    levels = [(images * 255).round() / 255 for images in data]
    model = tiny_model(likelihood="discretized_logistic")
    before = copy.deepcopy(model)
    history = train(model, levels, num_epochs=3, learning_rate=3e-3)
    assert not parameters_equal(model, before)
    losses = history.column("validation_loss")
    assert all(math.isfinite(loss) and loss > 0 for loss in losses)  # -log P >= 0
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="256 grey levels"):
        train(tiny_model(likelihood="discretized_logistic"), data)  # off the levels


def test_grey_pixels_without_binarizing_are_refused_by_bernoulli(data):
    with pytest.raises(GreyPixelsError):
        train(tiny_model(), data, binarize=False)


def test_grey_validation_images_are_refused_before_the_first_step(data):
    """Binary training images and grey validation images, with binarize=False: the
    validation images are refused before any step, so no epoch is lost to them."""
    model = tiny_model()
    before = [p.clone() for p in model.parameters()]
    epochs = []
    with pytest.raises(GreyPixelsError):
        train(model, (data[0].round(), data[1]), binarize=False,
              callback=lambda *args: epochs.append(args))
    assert epochs == []
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(),
                                                  strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_cuda():
    data = synthetic_images(256, seed=1), synthetic_images(64, seed=2)
    model = tiny_model().cuda()
    history = train(model, data, num_epochs=2)
    assert model.device.type == "cuda"
    assert all(p.is_cuda for p in model.parameters())
    for row in history.rows:
        assert all(math.isfinite(value) for value in row.values())


# --- inputs that used to be accepted and then crashed --------------------------

@pytest.mark.parametrize("name", ["num_epochs", "batch_size", "learning_rate", "beta",
                                  "warmup_epochs", "seed"])
def test_true_is_not_a_number(data, name):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError, match=name):
        train(model, data, **{name: True})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["beta", "warmup_epochs"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_infinite_beta_and_warmup_are_refused_up_front(data, name, value):
    with pytest.raises(ValueError, match=name):
        train(tiny_model(), data, **{name: value})


@pytest.mark.parametrize("split", ["train_images", "validation_images"])
def test_nan_images_are_refused_before_training(data, split):
    poisoned = data[0 if split == "train_images" else 1].clone()
    poisoned[3, 100] = float("nan")
    arguments = dict(zip(("train_images", "validation_images"), data, strict=True))
    arguments[split] = poisoned
    model = tiny_model(likelihood="continuous_bernoulli")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"{split}.*NaN"):
        fit(model, arguments["train_images"], arguments["validation_images"],
            num_epochs=1, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("split", ["train_images", "validation_images"])
def test_float64_images_are_refused_before_training(data, split):
    # torch.from_numpy gives float64; nn.Linear with float32 weights refuses it.
    arguments = dict(zip(("train_images", "validation_images"), data, strict=True))
    arguments[split] = arguments[split].double()
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"{split}.*float64.*float32"):
        fit(model, arguments["train_images"], arguments["validation_images"],
            num_epochs=1, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_float64_model_trains_on_float64_images(data):
    model = tiny_model().double()
    history = fit(model, data[0].double(), data[1].double(), num_epochs=1,
                  batch_size=64, progress=False)
    assert math.isfinite(history.rows[0]["validation_loss"])


@pytest.mark.parametrize("images, message", [
    (torch.full((4, 784), float("nan")), "NaN"),
    (torch.rand(4, 784, dtype=torch.float64), "float64"),
], ids=["nan", "float64"])
def test_evaluate_elbo_checks_images_like_fit(data, images, message):
    with pytest.raises(ValueError, match=message):
        evaluate_elbo(tiny_model(likelihood="continuous_bernoulli"), images)


@pytest.mark.parametrize("kwargs", [{"seed": True}, {"batch_size": True},
                                    {"batch_size": 0}, {"seed": float("nan")}])
def test_evaluate_elbo_checks_its_numbers(data, kwargs):
    with pytest.raises((TypeError, ValueError), match=next(iter(kwargs))):
        evaluate_elbo(tiny_model(), data[1], **kwargs)


class _PoisonOnLastStep(torch.optim.Adam):
    """Adam that writes a NaN weight on the last step of the first epoch."""

    def __init__(self, params, steps_per_epoch):
        self.params_list = list(params)
        super().__init__(self.params_list, lr=1e-3)
        self.steps, self.steps_per_epoch = 0, steps_per_epoch

    @torch.no_grad()
    def step(self, closure=None):
        result = super().step(closure)
        self.steps += 1
        if self.steps == self.steps_per_epoch:
            self.params_list[0][0, 0] = float("nan")
        return result


@pytest.mark.parametrize("with_validation_images", [True, False])
def test_divergence_in_the_last_step_of_an_epoch_is_reported(data,
                                                             with_validation_images):
    model = tiny_model()
    optimizer = _PoisonOnLastStep(model.parameters(), steps_per_epoch=256 // 64)
    saved = []
    held_out = data[1] if with_validation_images else None
    with pytest.raises(FloatingPointError, match=r"epoch 1\b.*learning rate"):
        train(model, (data[0], held_out), num_epochs=2, optimizer=optimizer,
              callback=lambda *args: saved.append(args))
    assert saved == []  # a diverged model is never handed on to be saved


# --- the fast loop computes what the plain loop computes ----------------------

def straightforward_fit(model, train_images, *, num_epochs, batch_size, seed, beta,
                        warmup_epochs, learning_rate=1e-3):
    """The loop written plainly: every step checked, every term summed as it comes."""
    from vae_course.data import binarize
    from vae_course.elbo import negative_elbo

    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    steps_per_epoch = math.ceil(len(train_images) / batch_size)
    rows = []
    for epoch in range(1, num_epochs + 1):
        torch.manual_seed(seed * 1_000_003 + epoch)
        totals = dict.fromkeys(TERMS, 0.0)
        order = torch.randperm(len(train_images))
        for step, start in enumerate(range(0, len(train_images), batch_size), start=1):
            batch = binarize(train_images[order[start:start + batch_size]])
            global_step = (epoch - 1) * steps_per_epoch + step
            weight = beta * min(1.0, global_step / (warmup_epochs * steps_per_epoch)) \
                if warmup_epochs else beta
            loss, terms = negative_elbo(model, batch, beta=weight)
            assert torch.isfinite(loss)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            totals["loss"] += -terms["elbo"].sum().item()
            for name in TERMS[1:]:
                totals[name] += terms[name].sum().item()
        rows.append({f"train_{name}": total / len(train_images)
                     for name, total in totals.items()})
    return rows


def lesson_04_epochs(model, images, num_epochs, batch_size, seed):
    """Lesson 04's hand-written loop, as the lesson writes it, seeded as fit seeds."""
    from vae_course.elbo import kl_standard_normal

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    epoch_losses = []
    for epoch in range(1, num_epochs + 1):
        torch.manual_seed(seed * 1_000_003 + epoch)
        model.train()
        order = torch.randperm(len(images))  # a new shuffle
        losses = []
        for start in range(0, len(images), batch_size):
            batch = torch.bernoulli(images[order[start:start + batch_size]])
            posterior = model.encode(batch)
            z = posterior.rsample()
            reconstruction = model.decode(z).log_prob(batch)
            kl = kl_standard_normal(posterior)
            loss = -(reconstruction - kl).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item() * len(batch))
        epoch_losses.append(sum(losses) / len(images))
    return epoch_losses


def test_fit_gives_the_numbers_of_lesson_04s_loop(data):
    """The same seed, the same draws and steps: the same numbers. (fit's KL is the
    cross-entropy minus the entropy, the lesson's the closed form: equal up to
    rounding.)"""
    model, by_hand = tiny_model(), tiny_model()
    history = train(model, (data[0], None), num_epochs=2, seed=4, batch_size=50)
    losses = lesson_04_epochs(by_hand, data[0], num_epochs=2, batch_size=50, seed=4)
    assert history.column("train_loss") == pytest.approx(losses, rel=1e-6)
    for mine, reference in zip(model.parameters(), by_hand.parameters(), strict=True):
        torch.testing.assert_close(mine, reference)


@pytest.mark.parametrize(("beta", "warmup_epochs", "batch_size"),
                         [(1.0, 0, 64), (0.5, 2, 50)])
def test_fit_matches_a_straightforward_loop(data, beta, warmup_epochs, batch_size):
    model, reference_model = tiny_model(), tiny_model()
    history = train(model, (data[0], None), num_epochs=3, seed=2, beta=beta,
                    warmup_epochs=warmup_epochs, batch_size=batch_size)
    expected = straightforward_fit(reference_model, data[0], num_epochs=3, seed=2,
                                   beta=beta, warmup_epochs=warmup_epochs,
                                   batch_size=batch_size)
    assert len(history) == len(expected) == 3
    for row, expected_row in zip(history.rows, expected, strict=True):
        for name, value in expected_row.items():
            assert row[name] == pytest.approx(value, rel=1e-5, abs=1e-4), name
    for mine, reference in zip(model.parameters(), reference_model.parameters(),
                               strict=True):
        torch.testing.assert_close(mine, reference)


def test_divergence_is_found_at_its_step_between_two_looks(data):
    """The loop looks at the loss every CHECK_EVERY steps; it still names the first
    step whose loss was not finite, not the step at which it looked."""
    from vae_course.train import CHECK_EVERY

    images = data[0].repeat(2, 1)  # 512 images: 128 steps of 4 per epoch
    poisoned_step = 73
    assert poisoned_step % CHECK_EVERY != 0
    model = tiny_model()
    calls = []

    def poison(module, inputs, output):  # the encoder runs once per training step
        calls.append(len(inputs[0]))
        if len(calls) == 128 + poisoned_step:
            return output * float("nan")
        return None

    handle = model.encoder.register_forward_hook(poison)
    try:
        with pytest.raises(FloatingPointError,
                           match=rf"epoch 2, step {poisoned_step}\b"):
            fit(model, images, num_epochs=2, batch_size=4, progress=False)
    finally:
        handle.remove()


# --- what fit optimises and what it reports ------------------------------------

def record_training_batches(model):
    """Wrap ``model.encode`` to keep a copy of every batch it sees while training."""
    batches = []
    encode = model.encode

    def recording_encode(x):
        if model.training:
            batches.append(x.detach().clone())
        return encode(x)

    model.encode = recording_encode
    return batches


def record_training_losses(monkeypatch):
    """Record the KL weight and the ELBO of every step fit takes.

    fit's loop calls ``step_loss`` once per optimizer step; the wrapper passes
    everything through unchanged.
    """
    import vae_course.train

    steps = []
    real_step_loss = vae_course.train.step_loss

    def recording(terms, weight):
        steps.append({"beta": weight, "images": len(terms["elbo"]),
                      "elbo_sum": terms["elbo"].detach().sum().item()})
        return real_step_loss(terms, weight)

    monkeypatch.setattr(vae_course.train, "step_loss", recording)
    return steps


def binary_rows(batches):
    return sorted(tuple(row.tolist()) for batch in batches for row in batch)


def test_every_batch_gets_a_fresh_binarization(data):
    model = tiny_model()
    batches = record_training_batches(model)
    # One batch holds the whole training set, so each epoch sees every image once.
    train(model, data, num_epochs=2, batch_size=len(data[0]))
    assert len(batches) == 2
    for batch in batches:
        assert set(batch.unique().tolist()) <= {0.0, 1.0}
    # Had the images been binarized once, epoch 2 would show the same binary images
    # in another order.
    first, second = binary_rows(batches[:1]), binary_rows(batches[1:])
    assert first != second
    # Each is a draw from the grey images: pixel by pixel, the share of ink over the
    # 256 images is close to the mean grey level.
    grey_mean = data[0].mean(0)
    for batch in batches:
        assert (batch.mean(0) - grey_mean).abs().max() < 0.2


def test_warm_up_reaches_beta_after_warmup_epochs_and_fit_uses_it(data, monkeypatch):
    steps = record_training_losses(monkeypatch)
    beta, warmup_epochs, steps_per_epoch = 4.0, 2, 4  # 256 images, batches of 64
    train(tiny_model(), data, num_epochs=4, beta=beta, warmup_epochs=warmup_epochs)
    weights = [step["beta"] for step in steps]
    warmup_steps = warmup_epochs * steps_per_epoch
    assert len(weights) == 4 * steps_per_epoch
    # Linear from beta / T at step 1 to exactly beta at step T, then beta.
    for step, weight in enumerate(weights[:warmup_steps], start=1):
        assert weight == pytest.approx(beta * step / warmup_steps, rel=1e-12)
    assert weights[warmup_steps - 1] == beta
    assert weights[warmup_steps:] == [beta] * (len(weights) - warmup_steps)


def test_without_warm_up_every_step_uses_beta(data, monkeypatch):
    steps = record_training_losses(monkeypatch)
    train(tiny_model(), data, num_epochs=2, beta=0.5)
    assert [step["beta"] for step in steps] == [0.5] * 8


@pytest.mark.parametrize(("beta", "warmup_epochs"), [(0.0, 0), (4.0, 0), (1.0, 3)])
def test_history_reports_the_true_elbo_whatever_is_optimised(data, monkeypatch, beta,
                                                              warmup_epochs):
    steps = record_training_losses(monkeypatch)
    model = tiny_model()
    history = train(model, data, num_epochs=2, beta=beta, warmup_epochs=warmup_epochs,
                    seed=5)
    last = history.rows[-1]
    # Train: the mean -ELBO (beta = 1) of the last epoch's steps, image-weighted.
    last_epoch = steps[len(steps) // 2:]
    true_train = -sum(s["elbo_sum"] for s in last_epoch) / len(data[0])
    assert last["train_loss"] == pytest.approx(true_train, rel=1e-6)
    # Test: the closed-form terms match an independent evaluation exactly ...
    reference = evaluate_elbo(model, data[1], seed=5)
    for name in ("entropy", "cross_entropy", "kl"):
        assert last[f"validation_{name}"] == pytest.approx(reference[name], rel=1e-5)
    assert last["validation_loss"] == pytest.approx(-last["validation_reconstruction"]
                                              + last["validation_kl"], rel=1e-6)
    # ... and the one-draw reconstruction agrees with a 200-draw estimate within
    # 4 standard errors.
    from vae_course.elbo import elbo_terms
    from vae_course.train import fixed_binarization

    validation_binary = fixed_binarization(data[1], binarize=True, seed=5)
    with torch.no_grad():
        draws = torch.stack([elbo_terms(model, validation_binary)["reconstruction"]
                             for _ in range(200)])  # (200, 64)
    standard_error = draws.std(0).pow(2).mean().sqrt().item() / len(data[1]) ** 0.5
    accurate = -draws.mean().item() + reference["kl"]
    assert last["validation_loss"] == pytest.approx(accurate, abs=4 * standard_error)
    # The checks above can tell: a loss weighted by the last step's beta would be off
    # by far more than their tolerance.
    weight = beta if warmup_epochs == 0 else beta * min(1.0, 8 / (warmup_epochs * 4))
    assert abs(1 - weight) * reference["kl"] > 1e-3 * abs(last["validation_loss"])


# --- the k-sample bound (IWAE) ---------------------------------------------------

def test_one_iwae_sample_is_exactly_the_vae_training(data):
    vae_model, one_sample_model = tiny_model(), tiny_model()
    vae = train(vae_model, data, num_epochs=2, seed=3)
    one_sample = train(one_sample_model, data, num_epochs=2, seed=3, iwae_samples=1)
    assert without_seconds(one_sample) == without_seconds(vae)
    assert parameters_equal(one_sample_model, vae_model)
    # And that is the VAE's loop written plainly: the ELBO with its closed-form KL.
    reference_model = tiny_model()
    expected = straightforward_fit(reference_model, data[0], num_epochs=2, seed=3,
                                   beta=1.0, warmup_epochs=0, batch_size=64)
    for row, expected_row in zip(one_sample.rows, expected, strict=True):
        for name, value in expected_row.items():
            assert row[name] == pytest.approx(value, rel=1e-5, abs=1e-4), name
    for mine, reference in zip(one_sample_model.parameters(),
                               reference_model.parameters(), strict=True):
        torch.testing.assert_close(mine, reference)
    # The k-sample objective trains another model, even at k = 2.
    two_samples = train(tiny_model(), data, num_epochs=2, seed=3, iwae_samples=2)
    assert without_seconds(two_samples) != without_seconds(vae)


def test_iwae_training_matches_a_straightforward_loop_on_the_bound(data):
    from vae_course.data import binarize
    from vae_course.elbo import iwae_bound

    model, reference = tiny_model(), tiny_model()
    history = train(model, (data[0], None), num_epochs=2, seed=2, iwae_samples=5)
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3)
    for epoch in (1, 2):
        torch.manual_seed(2 * 1_000_003 + epoch)
        order = torch.randperm(len(data[0]))
        for start in range(0, len(data[0]), 64):
            batch = binarize(data[0][order[start:start + 64]])
            loss = -iwae_bound(reference, batch, 5).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for mine, expected in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine, expected)
    # The history still reports the ELBO's terms, not the bound.
    assert set(history.rows[0]) == {"epoch", "seconds",
                                    *(f"train_{name}" for name in TERMS)}
    row = history.rows[-1]
    assert row["train_loss"] == pytest.approx(row["train_kl"]
                                              - row["train_reconstruction"], rel=1e-6)


def test_iwae_training_resumes_like_a_straight_run(data, tmp_path):
    straight_model = tiny_model()
    straight = train(straight_model, data, num_epochs=3, iwae_samples=4)
    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = train(model, data, num_epochs=1, optimizer=optimizer, iwae_samples=4)
    resumed = train(model, data, num_epochs=3, optimizer=optimizer, history=history,
                    iwae_samples=4)
    assert without_seconds(resumed) == without_seconds(straight)
    assert parameters_equal(model, straight_model)


# --- the compiled step ----------------------------------------------------------

@pytest.mark.parametrize("kwargs", [{"warmup_epochs": 1, "batch_size": 48},
                                    {"iwae_samples": 3}])
def test_a_compiled_step_trains_like_an_eager_one(data, graph_compiler, kwargs):
    import torch._dynamo

    torch._dynamo.reset()
    # PyTorch switches the distributions' checks off at the first torch.compile of
    # a process (TorchPatcher.patch, cached); forget that it did, so that it does.
    patcher = getattr(torch._dynamo.eval_frame, "TorchPatcher", None)
    if patcher is not None:
        patcher.patch.cache_clear()
    eager, compiled = tiny_model(), tiny_model()
    eager_history = train(eager, data, seed=3, **kwargs)
    assert graph_compiler == []
    compiled_history = train(compiled, data, seed=3, compiled=True, **kwargs)
    assert len(graph_compiler) == 1  # one function compiled, once
    # The same draws and the same maths; only the order of some sums may differ.
    for eager_row, compiled_row in zip(without_seconds(eager_history),
                                       without_seconds(compiled_history), strict=True):
        assert compiled_row == pytest.approx(eager_row, rel=1e-5)
    for p, q in zip(eager.parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6)
    assert not parameters_equal(compiled, tiny_model())  # it did train
    assert Distribution._validate_args is True  # a learner's bad input is still caught


def test_compiled_must_be_a_bool(data):
    with pytest.raises(ValueError, match="compiled must be True or False"):
        train(tiny_model(), data, compiled="yes")
