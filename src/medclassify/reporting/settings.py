"""The training settings a report states, read from each run's ``config.json`` and nothing else:
what every experiment shared, and what differed between experiments or between two compared sides.

A setting that does not apply to a run (SGD's momentum under Adam, the focal γ under cross-entropy)
is shown as "–", so that the report never attributes a value to a run that did not use it.
"""

from __future__ import annotations

from ..tasks import Task

NOT_USED = "–"
# the values of a setting that is off: the report's main text leaves these out (its appendix lists all)
INACTIVE = frozenset({NOT_USED, "none", "off", "no", "0", "0.0"})
# In the order the report lists them.
SETTINGS = (
    "optimizer",
    "lr",
    "weight_decay",
    "momentum",
    "schedule",
    "milestones",
    "gamma",
    "warmup_epochs",
    "epochs",
    "batch_size",
    "loss",
    "focal_gamma",
    "label_smoothing",
    "class_weights",
    "sampler",
    "augment",
    "mix",
    "mix_alpha",
    "orientation",
    "early_stopping",
    "grad_clip",
    "ema_decay",
    "tta",
    "pretrained",
    "freeze_backbone",
    "unfreeze_after",
    "normalize",
    "select_metric",
)


def _text(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return ", ".join(map(_text, value)) or NOT_USED
    return NOT_USED if value is None else str(value)


def run_settings(record: dict) -> dict[str, str]:
    """One run's settings (``config.json`` as written by ``train``) as display strings."""
    config = record["config"]
    multi_label = record["data"]["task"] == Task.MULTI_LABEL
    focal = config.get("loss") == "focal"
    step = config.get("schedule") == "step"
    values = {
        "optimizer": config.get("optimizer", "adam"),
        "lr": config["lr"],
        "weight_decay": config.get("weight_decay", 0.0),
        "momentum": config.get("momentum") if config.get("optimizer") == "sgd" else None,
        "schedule": config.get("schedule", "none"),
        "milestones": config.get("milestones") if step else None,
        "gamma": config.get("gamma") if step else None,
        "warmup_epochs": config.get("warmup_epochs", 0),
        "epochs": config["epochs"],
        "batch_size": config["batch_size"],
        "loss": ("focal (sigmoid)" if focal else "binary cross-entropy")
        if multi_label
        else ("focal" if focal else "cross-entropy"),
        "focal_gamma": config.get("focal_gamma") if focal else None,
        "label_smoothing": config.get("label_smoothing", 0.0)
        if not (multi_label or focal)
        else None,  # cross-entropy only
        "class_weights": config.get("class_weights", "none"),
        "sampler": config.get("sampler", "shuffle"),
        "augment": config.get("augment", "none"),
        "mix": config.get("mix", "none"),
        "mix_alpha": config.get("mix_alpha") if config.get("mix", "none") != "none" else None,
        "ema_decay": config.get("ema_decay", 0.0) or "off",
        "orientation": record["data"].get("orientation"),
        "early_stopping": config.get("early_stopping", 0) or "off",
        "grad_clip": config.get("grad_clip", 0.0) or "off",
        "tta": config.get("tta", False),
        "pretrained": config.get("pretrained", False),
        "freeze_backbone": config.get("freeze_backbone", False),
        "unfreeze_after": (config.get("unfreeze_after") or "never") if config.get("freeze_backbone") else None,
        "normalize": config.get("normalize", "dataset"),
        "select_metric": config.get("select_metric", "auc"),
    }
    return {key: _text(values[key]) for key in SETTINGS}


def experiment_settings(experiment) -> dict[str, str]:
    """An experiment's settings over its seeds' runs: one value, or every value joined by ' / '
    when its runs differed (a study may set a seed apart)."""
    per_run = [run_settings(record) for record in experiment.records]
    keys = dict.fromkeys(key for settings in per_run for key in settings)
    return {key: " / ".join(dict.fromkeys(settings.get(key, NOT_USED) for settings in per_run)) for key in keys}


def split_settings(experiments) -> tuple[dict[str, str], list[str]]:
    """The settings every experiment shares (key -> value), and the keys whose values differ."""
    all_settings = [experiment_settings(e) for e in experiments]
    keys = list(dict.fromkeys(key for settings in all_settings for key in settings))
    differing = [key for key in keys if len({settings.get(key, NOT_USED) for settings in all_settings}) > 1]
    shared = {key: all_settings[0].get(key, NOT_USED) for key in keys if key not in differing}
    return shared, differing


def differing_settings(a, b) -> list[str]:
    """The settings in which two experiments differ (beyond what the grid varies). A setting that one
    side does not use (focal loss's gamma beside cross-entropy, label smoothing beside focal loss) is
    the consequence of the setting that decides its use, which is counted itself, not a difference of
    its own."""
    settings_a, settings_b = experiment_settings(a), experiment_settings(b)
    return [
        key
        for key in dict.fromkeys([*settings_a, *settings_b])
        if NOT_USED not in (settings_a.get(key, NOT_USED), settings_b.get(key, NOT_USED))
        and settings_a[key] != settings_b[key]
    ]
