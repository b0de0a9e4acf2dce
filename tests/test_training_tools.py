"""The training tools of the faster recipes: weight EMA, MixUp/CutMix, and the time budget."""

import json
import time
from dataclasses import replace

import pytest
import torch
from torch import nn

from helpers import interrupt_training_at_epoch
from medclassify import TrainConfig, train
from medclassify.config import parse_duration
from medclassify.data import BatchAugment
from medclassify.data.augment import INTENSITY_OPS
from medclassify.errors import ConfigError
from medclassify.runs import load_checkpoint
from medclassify.runtime import environment
from medclassify.training import trainer
from medclassify.training.budget import PLANNED_SHARE, plan_epochs
from medclassify.training.recipe import build_ema, build_mixer, ema_decay_at


def test_ema_weights_are_the_hand_computed_moving_average():
    model = nn.Linear(2, 1)
    ema = build_ema(model, 0.9)
    seen = []
    for value in (1.0, 3.0, -2.0):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update_parameters(model)
        seen.append(value)
    # the first update copies the weights; then decay min(0.9, (1 + n) / (10 + n)) for n = 1, 2
    d1, d2 = 2 / 11, 3 / 12
    expected = d2 * (d1 * 1.0 + (1 - d1) * 3.0) + (1 - d2) * -2.0
    assert torch.allclose(ema.module.weight, torch.full((1, 2), expected))
    assert [ema_decay_at(0.9, n) for n in (1, 2, 100)] == [d1, d2, 0.9]
    assert build_ema(model, 0.0) is None


def test_ema_weights_are_validated_checkpointed_and_tested(blood_dir, tmp_path):
    config = TrainConfig(
        dataset="bloodmnist", data_dir=str(blood_dir), verify=False, quiet=True, epochs=2,
        ema_decay=0.5, select_metric="loss", out=str(tmp_path / "ema"),
    )  # fmt: skip
    result = train(config)
    last = load_checkpoint(tmp_path / "ema" / "last.pt")
    best = load_checkpoint(tmp_path / "ema" / "best.pt")
    averaged = {k.removeprefix("module."): v for k, v in last["ema_state"].items() if k.startswith("module.")}
    assert set(averaged) == set(last["model_state"])
    assert any(not torch.equal(averaged[k], last["model_state"][k]) for k in averaged)  # not the raw weights
    if result.metrics["best_epoch"] == 2:
        assert all(torch.equal(best["model_state"][k], averaged[k]) for k in averaged)


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixed_targets_sum_to_one_and_no_pixel_moves(kind):
    torch.manual_seed(0)
    config = TrainConfig(mix=kind, mix_alpha=1.0)
    mixer = build_mixer(config, num_classes=5, multi_label=False)
    images, labels = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    mixed, targets = mixer(images, labels)
    partner = images.roll(1, 0)  # torchvision mixes each image with its neighbour in the batch
    assert targets.shape == (6, 5) and torch.allclose(targets.sum(1), torch.ones(6))
    lam = targets[0, 0].item()  # labels 0 and 0 would merge: image 1 (label 1, partner label 0) is clean
    lam = targets[1, 1].item()
    assert 0 < lam <= 1 and targets[1, 0].item() == pytest.approx(1 - lam)
    if kind == "mixup":
        assert torch.allclose(mixed, lam * images + (1 - lam) * partner, atol=1e-6)
    else:  # every pixel is the image's own or its partner's at the same place: no flip, no shift
        own, pasted = mixed == images, mixed == partner
        assert bool((own | pasted).all())
        assert (~own).float().mean().item() == pytest.approx(1 - lam, abs=0.05)


def test_mixing_refuses_multi_label_tasks_and_the_focal_loss():
    with pytest.raises(ConfigError, match="multi-label"):
        build_mixer(TrainConfig(mix="mixup"), num_classes=3, multi_label=True)
    with pytest.raises(ConfigError, match="mix needs the cross-entropy loss"):
        TrainConfig(dataset="bloodmnist", mix="cutmix", loss="focal").validate()
    assert build_mixer(TrainConfig(), num_classes=3, multi_label=False) is None


def test_durations_parse_and_bad_ones_name_the_option():
    assert [parse_duration(t) for t in ("10m", "90s", "1h30m", "600", "0.5m")] == [600, 90, 5400, 600, 30]
    for bad in ("", "10x", "0s", "-1", "m"):
        with pytest.raises(ConfigError, match="time_budget"):
            parse_duration(bad)


def test_plan_fits_the_epochs_and_the_final_evaluation_into_the_budget():
    plan = plan_epochs(
        budget_s=600, spent_s=10, train_images_per_s=1000, eval_images_per_s=4000,
        train_images=12000, val_images=2000, test_images=4000, test_views=2, epoch_overhead_s=0.5, card_s=9.0,
    )  # fmt: skip
    # an epoch: 12 s training + 0.5 s validation + 0.5 s; the end: 6000 x 2 views / 4000 + 2 x 0.5 + the card's 9 s
    assert plan.epoch_s == pytest.approx(13.0) and plan.final_s == pytest.approx(13.0)
    assert plan.epochs == int((PLANNED_SHARE * 600 - 10 - 13.0) // 13.0) == 42
    with pytest.raises(ConfigError, match="time_budget 20 s is too short: one epoch and the evaluation need about"):
        plan_epochs(20, 10, 1000, 4000, 12000, 2000, 4000)


def test_the_budget_ends_training_early_only_when_the_run_went_slower_than_planned():
    plan = plan_epochs(600, 10, 1000, 4000, 12000, 2000, 4000, test_views=2, epoch_overhead_s=0.5, card_s=9.0)
    assert (plan.epoch_s, plan.final_s, plan.epochs) == (pytest.approx(13.0), pytest.approx(13.0), 42)
    # at the planned pace (or faster) no epoch ends training: 10 s + 41 epochs + the next + the end = 569 s
    assert not any(plan.out_of_time(10 + 13.0 * epoch, 13.0) for epoch in range(1, plan.epochs))
    assert not plan.out_of_time(10 + 13.0 * 41, 6.5)
    # epoch 41 took twice its 13 s: 556 s spent, and one more epoch and the end at that pace, 2 x 26 s, give 608 s
    assert plan.out_of_time(10 + 13.0 * 40 + 26.0, 26.0)
    assert not plan.out_of_time(10 + 13.0 * 39 + 26.0, 26.0)  # one epoch earlier it still fits: 595 s


@pytest.mark.slow
def test_a_run_that_slows_down_stops_at_an_epochs_end_within_its_budget_and_says_why(
    blood_dir, tmp_path, monkeypatch, caplog
):
    budget = 40  # the run's own work takes about 8 s here, up to twice that beside another test worker
    config = TrainConfig(
        dataset="bloodmnist", data_dir=str(blood_dir), verify=False, model="bn-cnn", epochs=100,
        time_budget=f"{budget}s", out=str(tmp_path / "slowed"),
    )  # fmt: skip
    real_epoch, calls = trainer.train_one_epoch, {"n": 0}

    def second_epoch_slowed(*args, **kwargs):  # as if another job took the machine during epoch 2
        calls["n"] += 1
        if calls["n"] == 2:
            # half the budget gone in one epoch: spent so far + another epoch at this pace > the budget
            time.sleep(0.5 * budget)
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", second_epoch_slowed)
    started = time.perf_counter()
    with caplog.at_level("INFO", logger="medclassify"):
        result = train(config)
    elapsed = time.perf_counter() - started
    record = json.loads((tmp_path / "slowed" / "config.json").read_text())
    planned = record["config"]["epochs"]
    assert planned == record["time_budget"]["epochs"] >= 3  # the plan, from the first steps' speed, had room for more
    assert result.metrics["epochs_run"] == 2 and elapsed < budget
    metrics = json.loads((tmp_path / "slowed" / "metrics.json").read_text())
    assert metrics["stopped_by"] == "time_budget" and metrics["epochs_run"] == 2
    assert f"so training stops after epoch 2 of {planned}" in caplog.text
    card = (tmp_path / "slowed" / "MODEL_CARD.md").read_text()
    assert (
        f"Training ended after epoch 2 of {planned}: the run went slower than planned and its 40 s time budget" in card
    )
    # --resume knows the run ended: nothing more is trained
    monkeypatch.setattr(trainer, "train_one_epoch", real_epoch)
    assert train(replace(config, resume=True)).already_complete


@pytest.mark.slow
def test_time_budget_records_its_epochs_and_resumes_to_the_same_run(blood_dir, tmp_path, monkeypatch):
    config = TrainConfig(
        dataset="bloodmnist", data_dir=str(blood_dir), verify=False, quiet=True, model="bn-cnn", epochs=3,
        schedule="onecycle", time_budget="60s", out=str(tmp_path / "budget"),
    )  # fmt: skip
    straight = train(config)
    record = json.loads((tmp_path / "budget" / "config.json").read_text())
    # three short epochs fit in a minute: the budget and --epochs are both limits, the smaller decides
    assert record["time_budget"]["epochs"] == 3 and straight.metrics["epochs_run"] == 3
    assert record["config"]["epochs"] == 3 and record["config"]["time_budget"] is None
    assert json.loads((tmp_path / "budget" / "metrics.json").read_text())["stopped_by"] is None

    # the recorded config trains as many epochs; interrupted and resumed under the budget option, too
    again = replace(TrainConfig(**record["config"]), out=str(tmp_path / "again"))
    real_epoch = interrupt_training_at_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(again)
    monkeypatch.setattr(trainer, "train_one_epoch", real_epoch)
    resumed = train(replace(again, time_budget="60s", epochs=1, resume=True))
    assert [r["val_loss"] for r in resumed.history] == [r["val_loss"] for r in straight.history]
    assert resumed.metrics["test"] == straight.metrics["test"]


@pytest.mark.parametrize("op", INTENSITY_OPS, ids=lambda op: op.__name__.strip("_"))
def test_intensity_operations_move_no_pixel_and_stay_in_range(op):
    """Each op commutes with a left-right mirror and a transpose: it changes values, never positions,
    so it keeps left/right organ labels true on any orientation."""
    x = torch.rand(4, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    m, s = torch.rand(4, 1, 1, 1), torch.tensor([1.0, -1.0, 1.0, -1.0]).view(4, 1, 1, 1)
    out = op(x, m, s)
    assert torch.allclose(op(x.flip(-1), m, s), out.flip(-1), atol=1e-6)
    assert torch.allclose(op(x.transpose(-1, -2), m, s), out.transpose(-1, -2), atol=1e-6)
    assert torch.allclose(op(torch.full_like(x, 0.25), m, s).std(dim=(2, 3)), torch.zeros(4, 3), atol=1e-6)


def test_randaug_preset_draws_per_image_and_keeps_fixed_orientation_images_unmirrored():
    images = torch.rand(64, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    augment = BatchAugment("randaug", "fixed", torch.Generator().manual_seed(0))
    out = augment(images)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    again = BatchAugment("randaug", "fixed", torch.Generator().manual_seed(0))(images)
    assert torch.equal(out, again)  # the generator decides everything: resumable
    # a bright left half stays on the left: no mirroring for 'fixed' data
    half = torch.zeros(64, 1, 16, 16)
    half[..., :8] = 0.8
    moved = BatchAugment("randaug", "fixed", torch.Generator().manual_seed(0))(half)
    assert bool((moved[..., :4].mean(dim=(1, 2, 3)) > moved[..., 12:].mean(dim=(1, 2, 3))).all())
    mirrored = BatchAugment("randaug", "free", torch.Generator().manual_seed(0))(half)  # free data may flip
    assert not bool((mirrored[..., :4].mean(dim=(1, 2, 3)) > mirrored[..., 12:].mean(dim=(1, 2, 3))).all())


def _fast_step_run(blood_dir, out, **settings):
    config = TrainConfig(
        dataset="bloodmnist", data_dir=str(blood_dir), verify=False, quiet=True, epochs=2, batch_size=16,
        model="bn-cnn", ema_decay=0.9, out=str(out), **settings,
    )  # fmt: skip
    result = train(config)
    return result, load_checkpoint(out / "best.pt")["model_state"]


def test_channels_last_and_the_fused_optimiser_train_the_same_model(blood_dir, tmp_path):
    """Layout and fused optimiser change how the step runs, not what it computes: the same seed gives
    the default run's losses up to rounding (grown over 2 epochs by BatchNorm), and a bundle like the
    default one."""
    settings = {"channels_last": True, "fused_optimizer": True}
    plain, plain_state = _fast_step_run(blood_dir, tmp_path / "plain")
    fast, fast_state = _fast_step_run(blood_dir, tmp_path / "fast", **settings)
    assert list(fast_state) == list(plain_state)
    for before, after in zip(plain.history, fast.history, strict=True):
        assert after["train_loss"] == pytest.approx(before["train_loss"], rel=1e-2)
        assert after["val_loss"] == pytest.approx(before["val_loss"], rel=5e-2)
    record = json.loads((tmp_path / "fast" / "config.json").read_text())["config"]
    assert all(record[key] == value for key, value in settings.items())


BF16_CPU = environment.cpu_has_bfloat16()


@pytest.mark.skipif(not BF16_CPU, reason="this CPU has no bfloat16 instructions, where --cpu-bf16 is not used")
def test_cpu_bf16_trains_in_bfloat16_and_evaluates_in_float32(blood_dir, tmp_path):
    from medclassify.runs import evaluate_run

    plain, _ = _fast_step_run(blood_dir, tmp_path / "plain", channels_last=True)
    fast, _ = _fast_step_run(blood_dir, tmp_path / "bf16", channels_last=True, cpu_bf16=True)
    record = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert record["config"]["cpu_bf16"] and record["precision"] == {"training": "bfloat16", "evaluation": "float32"}
    losses = [(a["train_loss"], b["train_loss"]) for a, b in zip(plain.history, fast.history, strict=True)]
    assert all(a != b for a, b in losses) and all(b == pytest.approx(a, rel=0.1) for a, b in losses)  # rounded, close
    # validation and test ran in float32: evaluating the saved weights again gives the recorded figures
    again = evaluate_run(tmp_path / "bf16", device="cpu")
    for split, figures in (("val", again.val), ("test", again.test)):
        assert figures["acc"] == fast.metrics[split]["acc"] and figures["auc"] == fast.metrics[split]["auc"]


def test_cpu_bf16_is_not_used_where_the_cpu_has_no_bfloat16(blood_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(environment, "cpu_has_bfloat16", lambda: False)
    plain, _ = _fast_step_run(blood_dir, tmp_path / "plain")
    asked, _ = _fast_step_run(blood_dir, tmp_path / "asked", cpu_bf16=True)
    assert json.loads((tmp_path / "asked" / "config.json").read_text())["precision"]["training"] == "float32"
    assert [r["train_loss"] for r in asked.history] == [r["train_loss"] for r in plain.history]
