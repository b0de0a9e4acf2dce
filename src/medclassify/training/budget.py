"""``--time-budget``: size a run from the throughput of its first steps, so that it ends in time.

The trainer times a few training steps and a validation pass on copies of the model (the run's own
model, optimiser and random streams are left as they were), and :func:`plan_epochs` turns those
rates into the number of epochs that fits. The chosen number goes into the run's config, so that
``--resume`` and a re-run from ``config.json`` train exactly as many. Should the machine slow down
during the run, :meth:`BudgetPlan.out_of_time` ends training at an epoch's end instead of letting the
run overrun its budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ..errors import ConfigError

# Share of the budget that is planned; the rest absorbs the measurement's noise.
PLANNED_SHARE = 0.95
MEASURE_SECONDS = 2.0  # time the training step for about this long (after the warm-up steps)
CARD_PROBE_RESAMPLES = 10  # bootstrap resamples timed to estimate the model card's


@dataclass
class BudgetPlan:
    """How the epochs of a time-budgeted run were chosen; every time in seconds."""

    budget_s: float
    spent_s: float  # before the first epoch: data, model and this measurement
    train_images_per_s: float
    eval_images_per_s: float
    epoch_s: float  # one epoch: training, validation and its checkpoints
    final_s: float  # the evaluation of the best checkpoint on validation and test, and the model card
    epochs: int

    def record(self) -> dict:
        return {key: round(value, 3) if isinstance(value, float) else value for key, value in asdict(self).items()}

    def out_of_time(self, elapsed_s: float, last_epoch_s: float) -> bool:
        """Whether one more epoch and the final evaluation, each slowed as much as the last epoch was
        against the plan, would end after the budget: the machine got slower than when it was timed
        (another job started beside the run). At the planned pace this is never true, since the plan
        leaves the budget's last ``1 - PLANNED_SHARE`` free."""
        pace = max(1.0, last_epoch_s / self.epoch_s)
        return elapsed_s + pace * (self.epoch_s + self.final_s) > self.budget_s


def images_per_second(step: Callable[[], int], warmup: int = 2, seconds: float = MEASURE_SECONDS) -> float:
    """The rate of ``step`` (which returns how many images it processed) after ``warmup`` calls,
    timed over at least 3 calls and about ``seconds``."""
    for _ in range(warmup):
        step()
    images, calls, started = 0, 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - started < seconds:
        images += step()
        calls += 1
    return images / (time.perf_counter() - started)


def plan_epochs(
    budget_s: float,
    spent_s: float,
    train_images_per_s: float,
    eval_images_per_s: float,
    train_images: int,
    val_images: int,
    test_images: int,
    test_views: int = 1,
    epoch_overhead_s: float = 0.0,
    card_s: float = 0.0,
    max_epochs: int | None = None,
) -> BudgetPlan:
    """The most epochs (at most ``max_epochs``, the run's ``--epochs``) that end, with the final
    evaluation, within ``PLANNED_SHARE`` of the budget.

    ``train_images``/``val_images`` are one process's share of an epoch; ``test_views`` is how
    many predictions each image of the final evaluation gets (test-time flips);
    ``epoch_overhead_s`` what an epoch costs besides its images (metrics, checkpoints, records), which
    the final evaluation pays twice (validation and test); ``card_s`` what the model card written
    after the test evaluation costs (its bootstrap intervals over the test images)."""
    epoch_s = train_images / train_images_per_s + val_images / eval_images_per_s + epoch_overhead_s
    final_s = (val_images + test_images) * test_views / eval_images_per_s + 2 * epoch_overhead_s + card_s
    epochs = math.floor((PLANNED_SHARE * budget_s - spent_s - final_s) / epoch_s)
    if epochs < 1:
        needed = (spent_s + final_s + epoch_s) / PLANNED_SHARE
        raise ConfigError(
            f"time_budget {budget_s:g} s is too short: one epoch and the evaluation need about {needed:.0f} s here",
            parameters=("time_budget",),
        )
    if max_epochs is not None:
        epochs = min(epochs, max_epochs)
    return BudgetPlan(budget_s, spent_s, train_images_per_s, eval_images_per_s, epoch_s, final_s, epochs)
