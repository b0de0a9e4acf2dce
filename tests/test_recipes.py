import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import interrupt_training_at_epoch
from medclassify import TrainConfig, train
from medclassify.data import BatchAugment, compute_normalization, tta_views
from medclassify.data.memory import BatchLoader, Split
from medclassify.errors import ConfigError
from medclassify.models import available_models, create_model
from medclassify.training.recipe import (
    EarlyStopping,
    FocalLoss,
    balanced_sample_weights,
    build_loss,
    build_optimizer,
    build_scheduler,
    class_weights,
)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(available_models()))
def test_every_model_trains_one_step_at_every_size_and_channel_count(name):
    torch.manual_seed(0)
    for size in (28, 64, 128, 224):
        for channels in (1, 3):
            model = create_model(name, channels, 3, size)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
            x, y = torch.randn(2, channels, size, size), torch.tensor([0, 2])
            before = [p.detach().clone() for p in model.parameters()]
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            assert torch.isfinite(loss) and model(x).shape == (2, 3)
            assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters())), (
                f"{name} {size}px {channels}ch did not learn"
            )


def cfg(**values):
    return TrainConfig(dataset="bloodmnist", **values)


def test_balanced_class_weights_change_the_loss_as_computed_by_hand():
    labels = torch.tensor([0, 0, 0, 1])  # imbalanced: 3 vs 1
    weights = class_weights(labels, 2, multi_label=False)
    assert weights.tolist() == pytest.approx([4 / (2 * 3), 4 / (2 * 1)])
    logits = torch.tensor([[2.0, 0.0], [1.0, 0.5], [0.0, 1.0], [0.3, 0.1]])
    ce = -F.log_softmax(logits, 1)[torch.arange(4), labels]
    by_hand = (ce * weights[labels]).sum() / weights[labels].sum()
    weighted = build_loss(cfg(class_weights="balanced"), labels, 2, False)(logits, labels)
    plain = build_loss(cfg(), labels, 2, False)(logits, labels)
    assert weighted.item() == pytest.approx(by_hand.item()) and plain.item() == pytest.approx(ce.mean().item())
    assert weighted.item() != pytest.approx(plain.item())


def test_focal_loss_with_gamma_zero_is_cross_entropy_and_downweights_easy_examples():
    torch.manual_seed(0)
    logits, target = torch.randn(16, 5), torch.randint(0, 5, (16,))
    weight = torch.rand(5) + 0.5
    assert FocalLoss(0.0)(logits, target).item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)
    assert FocalLoss(0.0, weight)(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target, weight=weight).item(), rel=1e-6
    )
    p_true = F.softmax(logits, 1)[torch.arange(16), target]
    by_hand = (-((1 - p_true) ** 2) * p_true.log()).mean()
    assert FocalLoss(2.0)(logits, target).item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_label_smoothing_matches_pytorchs_definition():
    torch.manual_seed(1)
    logits, target = torch.randn(8, 4), torch.randint(0, 4, (8,))
    eps = 0.1
    smoothed = torch.full((8, 4), eps / 4)
    smoothed[torch.arange(8), target] += 1 - eps
    by_hand = -(smoothed * F.log_softmax(logits, 1)).sum(1).mean()
    loss = build_loss(cfg(label_smoothing=eps), target, 4, False)(logits, target)
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_early_stopping_stops_at_the_right_epoch_on_a_scripted_history():
    history = [0.80, 0.85, 0.84, 0.86, 0.85, 0.85, 0.84, 0.90]
    stopper = EarlyStopping(patience=3, mode="max")
    improved = []
    for value in history:
        improved.append(stopper.step(value))
        if stopper.should_stop:
            break
    assert (
        len(improved) == 7 and stopper.best == 0.86
    )  # stopped at epoch 7: best at 4, then 5, 6, 7 without improvement
    assert improved == [True, True, False, True, False, False, False]
    losses = EarlyStopping(patience=2, mode="min")
    stops = []
    for value in (1.0, 0.9, 0.95, math.nan):
        losses.step(value)
        stops.append(losses.should_stop)
    assert stops == [False, False, False, True], "NaN never improves"
    never = EarlyStopping(patience=0)
    for value in (3, 2, 1):
        never.step(value)
    assert not never.should_stop


def test_early_stopping_ends_a_run_and_records_it(blood_dir, tmp_path):
    config = TrainConfig(
        dataset="bloodmnist",
        data_dir=str(blood_dir),
        out=str(tmp_path / "run"),
        verify=False,
        quiet=True,
        epochs=8,
        lr=1e-9,
        select_metric="acc",
        early_stopping=2,
        optimizer="sgd",
        momentum=0.0,
    )
    result = train(config)
    assert result.metrics["epochs_run"] == 3, "a rate of 1e-9 leaves val accuracy flat: epochs 2 and 3 bring nothing"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["stopped_by"] == "early_stopping"
    card = (tmp_path / "run" / "MODEL_CARD.md").read_text()
    assert "Training ended after epoch 3 of 8: validation acc stopped improving (early stopping)." in card


def test_balanced_sampler_draws_classes_evenly():
    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    split = Split(torch.zeros(1000, 1, 1, 1, dtype=torch.uint8), labels)
    loader = BatchLoader(
        split,
        100,
        compute_normalization(split.images, "none"),
        torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        sample_weights=balanced_sample_weights(labels),
    )
    drawn = torch.cat([torch.cat([y for _, y in loader]) for _ in range(10)])
    shares = torch.bincount(drawn, minlength=3).float() / len(drawn)
    assert shares.tolist() == pytest.approx([1 / 3] * 3, abs=0.03)


def asymmetric_batch(n=64, side=28):
    images = torch.zeros(n, 1, side, side)
    images[:, :, :, : side // 2] = 1.0  # bright left half
    images[:, :, : side // 4, :] = 0.5  # and a grey top band
    return images


@pytest.mark.parametrize("preset", ["light", "exact", "medmnistc"])
@pytest.mark.parametrize("orientation", ["fixed", "mirror-x", "free"])
def test_augmentation_only_uses_the_transforms_the_orientation_allows(orientation, preset):
    from medclassify.data.corruptions import corruption_set

    corruptions = corruption_set("organamnist", 1)[1] if preset == "medmnistc" else None
    out = BatchAugment(preset, orientation, torch.Generator().manual_seed(0), corruptions)(asymmetric_batch())
    left, right = out[..., :10].mean(dim=(1, 2, 3)), out[..., -10:].mean(dim=(1, 2, 3))
    mirrored = (right > left).float().mean().item()
    if orientation == "fixed":
        assert mirrored == 0.0, "chest X-rays and abdominal CT are never mirrored"
    else:
        assert 0.2 < mirrored < 0.8
    assert out.shape == (64, 1, 28, 28) and out.min() >= 0 and out.max() <= 1


def _shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``image`` moved by whole pixels, its border pixels repeated into the gap."""
    rows = (torch.arange(image.shape[-2]) + dy).clamp(0, image.shape[-2] - 1)
    cols = (torch.arange(image.shape[-1]) + dx).clamp(0, image.shape[-1] - 1)
    return image[..., rows, :][..., cols]


def test_exact_augmentation_moves_whole_pixels_and_never_blurs():
    """At 28 px a bilinear resample softens every training image; ``exact`` only permutes pixels."""
    images = torch.randperm(16 * 28 * 28).float().div(16 * 28 * 28).view(16, 1, 28, 28)
    free = BatchAugment("exact", "free", torch.Generator().manual_seed(1))(images)
    for source, out in zip(images, free):
        assert torch.isin(out, source).all(), "every pixel comes from the source image unchanged"
    fixed = BatchAugment("exact", "fixed", torch.Generator().manual_seed(1))(images)
    for source, out in zip(images, fixed):
        shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if torch.equal(out, _shifted(source, dy, dx))]
        assert len(shifts) == 1, "fixed data is only shifted, by at most 2 of 28 pixels"
    assert len({tuple(out.flatten()[:40].tolist()) for out in fixed}) > 4


def test_augmentation_draws_per_image_and_is_seeded():
    batch = asymmetric_batch()
    first = BatchAugment("strong", "free", torch.Generator().manual_seed(3))(batch)
    again = BatchAugment("strong", "free", torch.Generator().manual_seed(3))(batch)
    assert torch.equal(first, again)
    assert len({tuple(img.flatten()[::37].tolist()) for img in first}) > 32, (
        "images of one batch get different transforms"
    )


def test_tta_views_follow_the_orientation():
    batch = asymmetric_batch(2)
    assert (
        len(tta_views(batch, "fixed")) == 1
        and len(tta_views(batch, "mirror-x")) == 2
        and len(tta_views(batch, "free")) == 4
    )
    assert torch.equal(tta_views(batch, "mirror-x")[1], batch.flip(-1))


def test_schedules_follow_their_definitions():
    def rates(**values):
        config = cfg(epochs=4, lr=0.1, **values)
        optimizer = build_optimizer(config, [nn.Parameter(torch.zeros(1))])
        scheduler = build_scheduler(config, optimizer, steps_per_epoch=10)
        seen = []
        for _ in range(40):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return seen

    cosine = rates(schedule="cosine")
    assert cosine[0] == pytest.approx(0.1) and cosine[20] == pytest.approx(0.05) and cosine[-1] < 0.001
    warm = rates(schedule="cosine", warmup_epochs=1)
    # linear ramp from lr/10 over the 10 warm-up steps, then the cosine from the full rate
    assert (
        warm[0] == pytest.approx(0.01) and warm[9] == pytest.approx(0.01 + 0.009 * 9) and warm[10] == pytest.approx(0.1)
    )
    step = rates(schedule="step", milestones=[2, 3], gamma=0.5)
    assert step[19] == pytest.approx(0.1) and step[20] == pytest.approx(0.05) and step[30] == pytest.approx(0.025)
    onecycle = rates(schedule="onecycle")
    assert max(onecycle) == pytest.approx(0.1) and onecycle[0] < 0.01 and onecycle[-1] < 0.001
    assert build_scheduler(cfg(), build_optimizer(cfg(), [nn.Parameter(torch.zeros(1))]), 10) is None


def test_optimisers_and_weight_decay():
    params = [nn.Parameter(torch.zeros(1))]
    assert isinstance(build_optimizer(cfg(), params), torch.optim.Adam)
    adamw = build_optimizer(cfg(optimizer="adamw", weight_decay=0.01), params)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.01
    sgd = build_optimizer(cfg(optimizer="sgd", momentum=0.9), params)
    assert sgd.param_groups[0]["momentum"] == 0.9 and sgd.param_groups[0]["nesterov"]


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_fused_optimiser_takes_the_loop_implementations_steps(name):
    def weights_after_steps(fused: bool) -> torch.Tensor:
        weight = nn.Parameter(torch.linspace(-1, 1, 50))
        optimizer = build_optimizer(
            cfg(optimizer=name, momentum=0.9, weight_decay=0.01, fused_optimizer=fused), [weight]
        )
        assert bool(optimizer.param_groups[0]["fused"]) == fused
        for step in range(5):
            optimizer.zero_grad()
            (weight**2 * (step + 1)).sum().backward()
            optimizer.step()
        return weight.detach()

    assert torch.allclose(weights_after_steps(True), weights_after_steps(False), rtol=1e-5, atol=1e-6)


def test_frozen_backbone_trains_only_the_head_until_unfrozen(blood_dir, tmp_path):
    def weights(run_dir):
        state = torch.load(run_dir / "last.pt", weights_only=True)["model_state"]
        return state["features.0.weight"], state["classifier.3.weight"]

    base = dict(dataset="bloodmnist", model="paper-cnn-bn", data_dir=str(blood_dir), verify=False, quiet=True, seed=0)
    torch.manual_seed(0)
    initial = create_model("paper-cnn-bn", 3, 8, 28).state_dict()
    frozen = train(TrainConfig(**base, out=str(tmp_path / "frozen"), epochs=1, freeze_backbone=True))
    conv, head = weights(frozen.run_dir)
    assert torch.equal(conv, initial["features.0.weight"]) and not torch.equal(head, initial["classifier.3.weight"])
    unfrozen = train(
        TrainConfig(**base, out=str(tmp_path / "unfrozen"), epochs=2, freeze_backbone=True, unfreeze_after=1)
    )
    assert not torch.equal(weights(unfrozen.run_dir)[0], initial["features.0.weight"])


def test_pretrained_weights_offline_give_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ConfigError) as excinfo:
        create_model("resnet18", 1, 2, 28, pretrained=True)
    message = str(excinfo.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert "download https://" in message and "\n" not in message
    with pytest.raises(ConfigError, match="model 'paper-cnn' has no ImageNet weights"):
        create_model("paper-cnn", 3, 2, 28, pretrained=True)


def test_pretrained_one_channel_stem_sums_the_rgb_weights(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(0)
    imagenet = torchvision.models.resnet18().state_dict()  # stands in for the downloaded file
    torch.save(imagenet, cache / "resnet18-f37072fd.pth")
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("must use the cached file"))
    grey = create_model("resnet18", 1, 4, 28, pretrained=True)
    assert grey.conv1.weight.shape == (64, 1, 7, 7) and grey.conv1.stride == (1, 1)
    assert torch.allclose(grey.conv1.weight, imagenet["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(grey.layer1[0].conv1.weight, imagenet["layer1.0.conv1.weight"]) and grey.fc.out_features == 4
    colour = create_model("resnet18", 3, 4, 224, pretrained=True)
    assert torch.equal(colour.conv1.weight, imagenet["conv1.weight"]) and colour.conv1.stride == (2, 2)


def test_recipes_fill_the_config_and_options_override_them():
    config = TrainConfig.from_dict({"recipe": "paper-bn-aug", "dataset": "bloodmnist", "epochs": 3})
    assert (config.model, config.augment, config.optimizer, config.epochs, config.recipe) == (
        "paper-cnn-bn",
        "light",
        "adamw",
        3,
        "paper-bn-aug",
    )
    paper = TrainConfig.from_recipe("paper", dataset="bloodmnist")
    default = TrainConfig(dataset="bloodmnist", recipe="paper")
    assert paper.to_dict() == default.to_dict(), "the paper recipe is the default"
    with pytest.raises(ConfigError, match="unknown recipe 'fastest'; choose one of: .*paper-bn-aug"):
        TrainConfig.from_dict({"recipe": "fastest"})


def test_every_packaged_recipe_and_study_is_a_valid_run():
    from importlib.resources import files

    from medclassify.config import available_recipes
    from medclassify.experiments import Study

    for name in available_recipes():
        TrainConfig.from_recipe(name, dataset="bloodmnist").validate()
    protocol = TrainConfig.from_recipe("medmnist-v2", dataset="organamnist")
    assert (protocol.model, protocol.epochs, protocol.milestones, protocol.batch_size, protocol.normalize) == (
        "resnet18", 100, [50, 75], 128, "half",
    )  # fmt: skip
    study = Study.from_yaml(files("medclassify") / "studies" / "medmnist-v2.yaml")
    study.validate()
    assert len(study.datasets) == 12 and study.sizes == [28] and study.train == {"recipe": "medmnist-v2"}


@pytest.mark.parametrize(
    "values, message",
    [
        ({"schedule": "step"}, "schedule step needs milestones"),
        ({"warmup_epochs": 10}, "warmup_epochs 10 must be fewer than epochs 10"),
        ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\)"),
        ({"unfreeze_after": 3}, "unfreeze_after needs freeze_backbone"),
        ({"pretrained": True}, "model 'paper-cnn' has no ImageNet weights"),
        ({"augment": "extreme"}, "augment must be one of none, light, exact, strong, randaug"),
        ({"weight_decay": -1.0}, "weight_decay must be a number >= 0"),
        ({"milestones": [0, 12]}, "milestones must be epochs between 1 and 9"),
    ],
)
def test_recipe_options_reject_impossible_values(values, message):
    with pytest.raises(ConfigError, match=message):
        cfg(**values).validate()


def test_resume_with_schedule_augmentation_ema_and_mixing_matches_an_uninterrupted_run(
    blood_dir, tmp_path, monkeypatch
):
    from medclassify.training import trainer

    base = dict(
        dataset="bloodmnist",
        data_dir=str(blood_dir),
        verify=False,
        quiet=True,
        epochs=3,
        model="paper-cnn-bn",
        schedule="cosine",
        warmup_epochs=1,
        augment="strong",
        optimizer="adamw",
        weight_decay=1e-4,
        ema_decay=0.9,
        mix="mixup-cutmix",
    )
    straight = train(TrainConfig(**base, out=str(tmp_path / "straight")))
    real_epoch = interrupt_training_at_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**base, out=str(tmp_path / "resumed")))
    monkeypatch.setattr(trainer, "train_one_epoch", real_epoch)
    resumed = train(TrainConfig(**base, out=str(tmp_path / "resumed"), resume=True))
    assert resumed.metrics["test"] == straight.metrics["test"]
    assert [r["val_loss"] for r in resumed.history] == [r["val_loss"] for r in straight.history]


def test_tta_is_applied_and_recorded(blood_dir, tmp_path):
    result = train(
        TrainConfig(
            dataset="bloodmnist",
            data_dir=str(blood_dir),
            verify=False,
            quiet=True,
            epochs=1,
            out=str(tmp_path / "tta"),
            tta=True,
        )
    )
    import json

    assert json.loads((result.run_dir / "metrics.json").read_text())["tta"] is True
    assert np.isfinite(result.metrics["test"]["auc"])
