"""The study report: ``report.md`` and a self-contained ``report.html`` (figures embedded), written
from the measured numbers in the paper's order: environment, datasets, models, training settings,
results (Table 2, comparisons, figures) and discussion."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..citation import PAPER, software_citation
from ..data import get_dataset_info
from ..defaults import BOOTSTRAP_RESAMPLES
from ..evaluation.metrics import REPORTED_CALIBRATION_METRICS
from ..evaluation.robustness import bootstrap_mean_difference
from ..experiments.results import (
    conformal_rows,
    ensemble_rows,
    explanation_records,
    load_experiments,
    operating_point_rows,
    results_rows,
    robustness_rows,
    split_shift_rows,
)
from ..io import atomic_path
from ..models import available_models
from ..runs.card import explanation_verdict
from ..tasks import Task
from .discussion import Comparison, compare, harder_dataset, overfitting
from .figures import MIN_BIN_IMAGES, study_figures
from .published import CITATIONS
from .published import report_rows as published_report_rows
from .settings import INACTIVE, NOT_USED, experiment_settings, split_settings
from .tables import LINE, metric_cell, write_results_table
from .texts import METRIC_NAMES, TEXTS, dataset_title, experiment_title, row_title

LANGUAGES = tuple(TEXTS)


def _ci(d: dict) -> str:
    return f"{d['difference']:+.4f}{LINE}({d['ci_low']:+.4f} to {d['ci_high']:+.4f})"


def _with_ci(value: float, ci: list[float]) -> str:
    return f"{value:.4f}{LINE}({ci[0]:.4f}–{ci[1]:.4f})"


def _estimate(estimate: dict) -> str:
    """An explanation measure (a mean over images with its bootstrap interval) as a cell."""
    return _with_ci(estimate["mean"], [estimate["low"], estimate["high"]])


def _level(experiment, factor: str, t: dict) -> str:
    value = getattr(experiment, factor)
    if factor == "dataset":
        return dataset_title(value)
    return t["pixels"].format(size=value) if factor == "size" else str(value)


def _intervals_excluding_zero(difference: dict, b: str, t: dict, names: dict) -> str:
    """The sentence naming every metric whose difference interval excludes 0, and which way."""
    excluding = [
        t["higher_for" if d["ci_low"] > 0 else "lower_for"].format(metric=names[m], b=b)
        for m, d in difference.items()
        if d["ci_low"] > 0 or d["ci_high"] < 0
    ]
    return t["excludes_zero"].format(metrics="; ".join(excluding)) if excluding else t["none_excludes_zero"]


def _seed_p(tests: list[dict] | None, t: dict, key: str) -> str:
    return "; ".join(t[key].format(seed=test["seed_a"], p=test["p_value"]) for test in tests or [])


def _held_fixed(factor: str, value, t: dict) -> str:
    """A setting a comparison holds fixed, as the tables write it elsewhere (28 px, BloodMNIST)."""
    if factor == "size":
        return t["pixels"].format(size=value)
    return dataset_title(value) if factor == "dataset" else f"{t['factor'][factor]} {value}"


def _load_range(experiments, t: dict) -> str:
    """The 1-minute load average at the start and at the end of the runs that recorded both (range
    over those runs; runs from before medclassify recorded it are left out)."""
    recorded = [
        (start[0], end[0])
        for e in experiments
        for record, metrics in zip(e.records, e.metrics)
        if (start := record["environment"].get("load_average_start")) and (end := metrics.get("load_average_end"))
    ]
    if not recorded:
        return t["not_recorded"]
    starts, ends = zip(*recorded)
    return t["load_range"].format(
        start_low=min(starts), start_high=max(starts), end_low=min(ends), end_high=max(ends), n=len(recorded)
    )


def _setting_value(value: str, t: dict) -> str:
    return t["values"].get(value, value)


Block = tuple  # ("h1"|"h2"|"h3"|"p", text), ("table", header, rows) or ("figure", png path, caption)


@dataclass
class _Report:
    """What every section of one report reads: the study's records, the figures drawn from them, the
    language's sentences, and what more than one section uses (the comparisons, the operating points,
    the shared settings). Each section method appends its blocks; tables are numbered in order."""

    study: Any
    experiments: list[Any]
    rows: list[dict]
    figures: dict
    lang: str
    n_boot: int
    ensembles: list[dict]
    robustness: list[dict]
    blocks: list[Block] = field(default_factory=list)
    table_numbers: Iterator[int] = field(default_factory=lambda: iter(range(1, 1000)))

    def __post_init__(self) -> None:
        self.t: dict[str, Any] = TEXTS[self.lang]
        self.names: dict[str, str] = METRIC_NAMES[self.lang]
        self.labels: dict[str, str] = self.t["setting_names"]
        self.title_of = {e.name: experiment_title(e) for e in self.experiments}
        self.shared, self.differing = split_settings(self.experiments)
        self.seeds = {e.name: ", ".join(map(str, e.seeds)) for e in self.experiments}
        if len(set(self.seeds.values())) == 1:
            self.shared["seeds"] = next(iter(self.seeds.values()))
        else:
            self.differing.append("seeds")
        self.points = operating_point_rows(self.experiments)
        self.comparisons = compare(self.experiments, self.n_boot)

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)

    def table(self, caption: str, header: list[str], body: list[list]) -> None:
        self.add(("p", self.t["table"].format(n=next(self.table_numbers), caption=caption)), ("table", header, body))

    def datasets_in_order(self) -> list[str]:
        return list(dict.fromkeys(e.dataset for e in self.experiments))

    # ---- sections, in the paper's order ---------------------------------------------------------
    def title(self) -> None:
        self.add(
            ("h1", self.t["title"].format(name=self.study.name)), ("p", self.t["generated"].format(version=__version__))
        )

    def environment(self) -> None:
        t, env = self.t, self.experiments[0].records[0]["environment"]
        packages = env["packages"]
        values = [
            env["device"] + (f" ({env['gpu']})" if env.get("gpu") else ""),
            env.get("cpu_model", env["processor"]),
            env["cpu_count"],
            _load_range(self.experiments, t),
            env["python"],
            packages["torch"],
            packages["torchvision"],
            packages["medmnist"],
            packages["scikit-learn"],
        ]
        self.add(("h2", t["environment"]))
        self.table(t["environment_caption"], t["kv_header"], [[k, str(v)] for k, v in zip(t["env_rows"], values)])

    def datasets(self) -> None:
        t, experiments = self.t, self.experiments
        dataset_rows, sources = [], []
        for dataset in self.datasets_in_order():
            e = next(x for x in experiments if x.dataset == dataset)
            splits = e.records[0]["data"]["source"]["split_sizes"]
            sizes = ", ".join(str(x.size) for x in experiments if x.dataset == dataset and x.model == e.model)
            dataset_rows.append(
                [
                    dataset_title(dataset),
                    e.task,
                    str(e.records[0]["data"]["channels"]),
                    str(len(e.class_names)),
                    sizes,
                    " / ".join(str(splits[s]) for s in ("train", "val", "test")),
                ]
            )
            if dataset != "folder":
                info = get_dataset_info(dataset)
                sources.append(
                    t["source"].format(
                        dataset=info.display_name,
                        license=info.license,
                        description=info.description,
                        source=info.source,
                    )
                )
        self.add(("h2", t["datasets"]))
        self.table(t["dataset_caption"], t["dataset_header"], dataset_rows)
        if sources:
            self.add(("h3", t["sources"]), *(("p", text) for text in sources))
            if any(not get_dataset_info(e.dataset).synthetic for e in experiments if e.dataset != "folder"):
                self.add(("p", t["medmnist_citation"]))

    def models(self) -> None:
        t, registry = self.t, available_models()
        model_rows = [
            [
                e.model,
                registry[e.model].description if e.model in registry else "",
                f"{e.records[0]['model']['in_channels']}×{e.size}×{e.size}",
                f"{e.records[0]['model']['parameters']:,}",
            ]
            for e in {(x.model, x.size, x.records[0]["model"]["in_channels"]): x for x in self.experiments}.values()
        ]
        self.add(("h2", t["models"]))
        self.table(t["model_caption"], t["model_header"], model_rows)
        if any(e.model.startswith("paper-cnn") for e in self.experiments):
            self.add(("p", t["paper_source"].format(paper=PAPER)))

    def training(self) -> None:
        t, labels = self.t, self.labels
        self.add(("h2", t["training"]))
        self.table(
            t["shared_caption"],
            t["kv_header"],
            [[labels[k], _setting_value(v, t)] for k, v in self.shared.items() if v not in INACTIVE],
        )
        if self.differing:
            per_experiment = []
            for e in self.experiments:
                settings = {**experiment_settings(e), "seeds": self.seeds[e.name]}
                per_experiment.append(
                    [experiment_title(e)] + [_setting_value(settings.get(k, NOT_USED), t) for k in self.differing]
                )
            self.table(t["differing_caption"], [t["experiment"]] + [labels[k] for k in self.differing], per_experiment)

    def results(self) -> None:
        t, rows = self.t, self.rows + self.ensembles
        self.add(("h2", t["results"]))
        measured = [
            [
                row_title(r, self.lang),
                str(r["size"]),
                metric_cell(r, "acc", LINE),
                metric_cell(r, "f1_macro", LINE),
                metric_cell(r, "auc", LINE),
            ]
            for r in rows
        ]
        published = [
            p
            for dataset, size in dict.fromkeys((e.dataset, e.size) for e in self.experiments)
            for p in published_report_rows(dataset, size)
        ]
        self.table(
            t["results_caption"],
            t["results_header"],
            measured
            + [
                [
                    t["published_row"].format(dataset=p.title, method=p.method),
                    str(p.trained_size),
                    f"{p.acc:.3f}",
                    "–",
                    "–" if p.auc is None else f"{p.auc:.3f}",
                ]
                for p in published
            ],
        )
        if self.ensembles:
            self.add(("p", t["ensemble_note"]))
        for source in dict.fromkeys(p.source for p in published):
            self.add(("p", t["published_note"][source].format(citation=CITATIONS[source])))

    def calibration(self) -> None:
        t = self.t
        self.add(("p", t["calibration_intro"]))
        self.table(
            t["calibration_caption"],
            [t["experiment"], *(t["calibration_names"][m] for m in REPORTED_CALIBRATION_METRICS)],
            [
                [row_title(r, self.lang), *(metric_cell(r, m, LINE) for m in REPORTED_CALIBRATION_METRICS)]
                for r in self.rows + self.ensembles
            ],
        )

    def conformal(self) -> None:
        t, title_of = self.t, self.title_of
        conformal = conformal_rows(self.experiments)
        if not conformal:
            return
        self.add(("p", t["conformal_intro"]))
        self.table(
            t["conformal_caption"],
            t["conformal_header"],
            [
                [
                    title_of[r["experiment"]],
                    r["score"],
                    f"{r['target']:.0%}",
                    f"{r['coverage']:.4f}"
                    + (f" ± {r['coverage_sd']:.4f}" if r["coverage_sd"] is not None else "")
                    + f"{LINE}({r['ci'][0]:.4f}–{r['ci'][1]:.4f})",
                    f"{r['mean_size']:.2f}",
                    f"{r['empty_share']:.1%}",
                    ", ".join(r["classes_below_target"]) or "–",
                ]
                for r in conformal
            ],
        )
        short = [title_of[r["experiment"]] for r in conformal if r["ci"][1] < r["target"]]
        if short:
            self.add(("p", t["conformal_short"].format(names=", ".join(short))))

    def operating_points(self) -> None:
        t = self.t
        if not self.points:
            return
        self.add(("p", t["operating_intro"]))
        self.table(
            t["operating_caption"],
            t["operating_header"],
            [
                [
                    self.title_of[r["experiment"]],
                    f"{r['rule']} ({r['positive_class']})",
                    ", ".join(f"{x:.3g}" for x in r["thresholds"]),
                    *(
                        _with_ci(r[f"{split}_{m}"]["value"], r[f"{split}_{m}"]["ci"])
                        for m in ("sensitivity", "specificity")
                        for split in ("val", "test")
                    ),
                ]
                for r in self.points
            ],
        )

    def robustness_table(self) -> None:
        t, robustness = self.t, self.robustness
        if not robustness:
            return
        sources = {r["corruptions"] for r in robustness}
        severity_sets = {tuple(r["severities"]) for r in robustness}
        counts = {r["n_corruptions"] for r in robustness}
        intro = t["robustness_intro"].format(
            n=" / ".join(map(str, sorted(counts))),
            severities=" / ".join(", ".join(map(str, s)) for s in sorted(severity_sets)),
            source=t["robustness_source"][sources.pop() if len(sources) == 1 else "mixed"],
        )
        self.add(("p", intro))
        self.table(
            t["robustness_caption"],
            t["robustness_header"],
            [
                [
                    self.title_of[r["experiment"]],
                    _with_ci(r["clean_acc"], r["clean_acc_ci"]),
                    _with_ci(r["corrupted_acc"], r["corrupted_acc_ci"]),
                    _with_ci(r["acc_drop"], r["acc_drop_ci"]),
                    f"{r['mce']:.4f}",
                    f"{r['relative_mce']:.4f}",
                    f"{r['worst_corruption']} ({r['worst_ce']:.4f})",
                ]
                for r in robustness
            ],
        )

    def class_aucs(self) -> None:
        t = self.t
        for dataset in self.datasets_in_order():
            chosen = [
                (e, r) for e, r in zip(self.experiments, self.rows) if e.dataset == dataset and e.task != Task.BINARY
            ]
            if chosen:
                self.table(
                    t["class_auc_caption"].format(dataset=dataset_title(dataset)),
                    [t["class"], *(experiment_title(e) for e, _ in chosen)],
                    [
                        [name, *(metric_cell(r, f"auc_{name}", LINE) for _, r in chosen)]
                        for name in chosen[0][0].class_names
                    ],
                )

    def comparison_table(self) -> None:
        t = self.t
        if not self.comparisons:
            return
        self.add(("h3", t["comparisons"]))
        self.table(
            t["comparison_caption"],
            t["comparison_header"],
            [
                [
                    t["factor"][c.factor],
                    ", ".join(_held_fixed(k, v, t) for k, v in c.fixed.items()),
                    _level(c.a, c.factor, t),
                    _level(c.b, c.factor, t),
                    _ci(c.difference["acc"]),
                    _ci(c.difference["f1_macro"]),
                    _ci(c.difference["auc"]),
                    _seed_p(c.mcnemar, t, "seed_p") if c.mcnemar else "–",
                    ", ".join(self.labels[k] for k in c.also_differs) or "–",
                ]
                for c in self.comparisons
            ],
        )

    def figure_list(self) -> None:
        t, figures = self.t, self.figures
        self.add(("h3", t["figures"]))
        several = any(len(e.seeds) > 1 for e in self.experiments)
        self.add(
            ("figure", figures["loss_curves"][0], t["fig_loss"].format(band=t["fig_loss_band"] if several else ""))
        )
        numbered: list[tuple[str, str, dict[str, Any]]] = [
            (f"{d}_roc", t["fig_dataset"], {"dataset": dataset_title(d)}) for d in self.datasets_in_order()
        ]
        numbered.append(
            ("test_metrics", t["fig_metrics"], {"ensembles": t["fig_metrics_ensembles"] if self.ensembles else ""})
        )
        numbered.append(("reliability", t["fig_reliability"], {"minimum": MIN_BIN_IMAGES}))
        if "robustness" in figures:
            numbered.append(("robustness", t["fig_robustness"], {}))
        numbered += [
            (f"confusion_{e.name}", t["fig_confusion"], {"experiment": experiment_title(e)}) for e in self.experiments
        ]
        for number, (key, caption, values) in enumerate(numbered, start=2):
            self.add(("figure", figures[key][0], caption.format(n=number, **values)))

    def discussion(self) -> None:
        t = self.t
        self.add(("h2", t["discussion"]))
        for factor, title in (
            ("dataset", "dataset_title"),
            ("size", "size_title"),
            ("model", "model_title"),
            ("variant", "variant_title"),
        ):
            chosen = [c for c in self.comparisons if c.factor == factor]
            if not chosen:
                continue
            self.add(("h3", t[title]))
            for c in chosen:
                confounded = (
                    t["confounded"].format(
                        factor=t["factor"][factor], settings=", ".join(self.labels[k] for k in c.also_differs)
                    )
                    if c.also_differs
                    else ""
                )
                if factor == "dataset":
                    self._harder_dataset(c, confounded)
                else:
                    self._verdict(c, factor, confounded)
            if factor == "dataset":
                self.add(("p", t["unpaired_note"]))

    def _harder_dataset(self, c: Comparison, confounded: str) -> None:
        t, h = self.t, harder_dataset(c)
        details = "; ".join(
            t["metric_delta"].format(metric=self.names[m], value_hard=hard, value_easy=easy, delta=hard - easy)
            for m, (hard, easy) in h["metrics"].items()
        )
        key = "harder" if h["agree"] else "harder_mixed"
        sentence = t[key].format(hard=experiment_title(h["hard"]), easy=experiment_title(h["easy"]), details=details)
        self.add(("p", sentence + confounded))

    def _verdict(self, c: Comparison, factor: str, confounded: str) -> None:
        t, d = self.t, c.difference
        fixed = dataset_title(c.fixed.get("dataset", c.a.dataset))
        pixels = t["pixels"].format(size=c.fixed.get("size", c.a.size))
        context = {"size": c.fixed.get("model", c.a.model), "variant": f"{c.a.model}, {pixels}"}.get(factor, pixels)
        a, b = _level(c.a, factor, t), _level(c.b, factor, t)
        sentence = t[f"verdict_{c.verdict}"].format(
            dataset=fixed,
            model=context,
            a=a,
            b=b,
            delta_acc=d["acc"]["difference"],
            low=d["acc"]["ci_low"],
            high=d["acc"]["ci_high"],
            delta_f1=d["f1_macro"]["difference"],
            f1_low=d["f1_macro"]["ci_low"],
            f1_high=d["f1_macro"]["ci_high"],
            delta_auc=d["auc"]["difference"],
            auc_low=d["auc"]["ci_low"],
            auc_high=d["auc"]["ci_high"],
            p=_seed_p(c.mcnemar, t, "seed_p_sentence"),
        )
        self.add(("p", sentence + _intervals_excluding_zero(d, b, t, self.names) + confounded))
        tested = {r["experiment"]: r for r in self.robustness}
        if c.paired and c.a.name in tested and c.b.name in tested:
            ra, rb = tested[c.a.name], tested[c.b.name]
            delta, (low, high) = bootstrap_mean_difference(
                ra["per_seed_corrupted"], rb["per_seed_corrupted"], self.n_boot
            )
            delta_clean, (low_clean, high_clean) = bootstrap_mean_difference(
                ra["per_seed_clean"], rb["per_seed_clean"], self.n_boot
            )
            sentence = t["robustness_difference"].format(
                a=a,
                b=b,
                context=f"{fixed}, {context}",
                delta=delta,
                low=low,
                high=high,
                delta_clean=delta_clean,
                low_clean=low_clean,
                high_clean=high_clean,
            )
            self.add(("p", sentence))

    def split_shift(self) -> None:
        t, title_of = self.t, self.title_of
        self.add(("h3", t["shift_title"]))
        shifts = split_shift_rows(self.experiments)
        shifted_points = {r["experiment"]: r for r in self.points if r["shifted"]}
        for r in shifts:
            if not r["shifted"]:
                continue
            text = t["shifted"].format(
                experiment=title_of[r["experiment"]],
                val=r["val"]["value"],
                val_low=r["val"]["ci"][0],
                val_high=r["val"]["ci"][1],
                test=r["test"]["value"],
                test_low=r["test"]["ci"][0],
                test_high=r["test"]["ci"][1],
            )
            if r["experiment"] in shifted_points:
                text += " " + t["shifted_threshold"]
            self.add(("p", text))
        if shifts and not any(r["shifted"] for r in shifts):
            self.add(("p", t["not_shifted"]))
        for r in self.points:
            if r["shifted"] and not any(s["shifted"] and s["experiment"] == r["experiment"] for s in shifts):
                self.add(("p", t["threshold_only_shifted"].format(experiment=title_of[r["experiment"]])))

    def overfitting(self) -> None:
        t = self.t
        self.add(("h3", t["overfit_title"]))
        for e in self.experiments:
            o = overfitting(e)
            key = "overfit_short" if o["overfits"] is None else "overfit" if o["overfits"] else "no_overfit"
            sentence = t[key].format(
                experiment=experiment_title(e),
                best=o["best_epoch"],
                low=o["lowest"],
                last=o["last"],
                rise=o["rise"],
                gap=o["gap"],
                train=o["train_last"],
                epochs=o["epochs"],
            )
            self.add(("p", sentence))

    def explanations(self) -> None:
        """Which explanation methods each experiment's measured maps support: the table of every
        method's faithfulness and sanity, then one sentence per experiment from those numbers."""
        t, measured = self.t, explanation_records(self.experiments)
        if not measured:
            return
        several_seeds = any(len(e.seeds) > 1 for e in self.experiments)
        evaluations = [evaluation for _, evaluation in measured.values()]
        self.add(
            ("h3", t["explain_title"]),
            (
                "p",
                t["explain_intro"].format(
                    images=" / ".join(map(str, sorted({v["images"] for v in evaluations}))),
                    seed=" / ".join(map(str, sorted({v["seed"] for v in evaluations}))),
                ),
            ),
        )
        body = []
        for name, (seed, evaluation) in measured.items():
            title = self.title_of[name] + (t["explain_seed"].format(seed=seed) if several_seeds else "")
            methods = {m["method"]: m for m in evaluation["methods"]}
            body.append(
                [
                    title,
                    t["explain_random"],
                    _estimate(evaluation["random_deletion_area"]),
                    _estimate(evaluation["random_insertion_area"]),
                    "–",
                    "–",
                    "–",
                ]
            )
            for method in evaluation["ranking"]:
                m = methods[method]
                sanity = m["sanity"]
                body.append(
                    [
                        title,
                        method,
                        _estimate(m["deletion_area"]),
                        _estimate(m["insertion_area"]),
                        f"{m['road_combined']:.3f}",
                        f"{sanity['final']['mean']:.2f}{LINE}{t['explain_pass' if sanity['passed'] else 'explain_fail']}",
                        f"{m['seconds_per_image']:.4f}",
                    ]
                )
        self.table(t["explain_caption"], t["explain_header"], body)
        firsts = []
        for name, (_, evaluation) in measured.items():
            verdict = explanation_verdict(evaluation)
            parts = [
                t["explain_deletion"].format(methods=", ".join(verdict.beats_random_deletion))
                if verdict.beats_random_deletion
                else t["explain_no_deletion"],
                t["explain_insertion"].format(methods=", ".join(verdict.beats_random_insertion))
                if verdict.beats_random_insertion
                else t["explain_no_insertion"],
                t["explain_failed" if len(verdict.fails_sanity) == 1 else "explain_failed_many"].format(
                    methods=", ".join(verdict.fails_sanity)
                )
                if verdict.fails_sanity
                else t["explain_all_pass"],
                t["explain_trusted"].format(method=verdict.trusted[0]) if verdict.trusted else t["explain_none"],
            ]
            self.add(
                ("p", t["explain_sentence"].format(experiment=self.title_of[name], parts=t["explain_join"].join(parts)))
            )
            if verdict.trusted:
                firsts.append(verdict.trusted[0])
        if len(measured) > 1 and firsts:
            counts = ", ".join(
                t["explain_count"].format(method=m, k=firsts.count(m), n=len(measured)) for m in dict.fromkeys(firsts)
            )
            self.add(("p", t["explain_summary"].format(counts=counts)))
        unmeasured = [self.title_of[e.name] for e in self.experiments if e.name not in measured]
        if unmeasured:
            self.add(("p", t["explain_unmeasured"].format(names=", ".join(unmeasured))))

    def limitations(self) -> None:
        t, experiments = self.t, self.experiments
        limits = [t["limit_general"]]
        counts = {len(e.seeds) for e in experiments}
        limits.append(
            t["limit_one_seed"] if counts == {1} else t["limit_seeds"].format(n=" / ".join(map(str, sorted(counts))))
        )
        epochs = " / ".join(dict.fromkeys(experiment_settings(e)["epochs"] for e in experiments))
        limits.append(t["limit_epochs"].format(epochs=epochs))
        synthetic = [e.dataset for e in experiments if e.dataset != "folder" and get_dataset_info(e.dataset).synthetic]
        if synthetic:
            limits.append(t["limit_synthetic"].format(datasets=", ".join(map(dataset_title, dict.fromkeys(synthetic)))))
        self.add(("h3", t["limitations"]), *(("p", text) for text in limits))

    def appendix(self) -> None:
        t = self.t
        self.add(("h2", t["appendix"]))
        self.table(
            t["all_settings_caption"],
            t["kv_header"],
            [[self.labels[k], _setting_value(v, t)] for k, v in self.shared.items()],
        )
        self.add(("p", t["cite"].format(citation=software_citation(__version__))))


# The report's sections in order: environment, data, models and settings, results, figures, discussion.
SECTIONS = (
    _Report.title,
    _Report.environment,
    _Report.datasets,
    _Report.models,
    _Report.training,
    _Report.results,
    _Report.calibration,
    _Report.conformal,
    _Report.operating_points,
    _Report.robustness_table,
    _Report.class_aucs,
    _Report.comparison_table,
    _Report.figure_list,
    _Report.discussion,
    _Report.split_shift,
    _Report.overfitting,
    _Report.explanations,
    _Report.limitations,
    _Report.appendix,
)


def build_blocks(
    study: Any,
    experiments: list[Any],
    rows: list[dict],
    figures: dict,
    lang: str,
    n_boot: int,
    ensembles: list[dict] | None = None,
    robustness: list[dict] | None = None,
) -> list[Block]:
    """The report as a list of blocks: ("h1"|"h2"|"h3"|"p", text), ("table", header, rows),
    ("figure", png path, caption). Every statement comes from the runs' own records
    (``robustness``: :func:`..experiments.results.robustness_rows`)."""
    report = _Report(study, experiments, rows, figures, lang, n_boot, ensembles or [], robustness or [])
    for section in SECTIONS:
        section(report)
    return report.blocks


def _md_cell(cell) -> str:
    return "<br>".join(str(cell).replace("|", "\\|").split(LINE))


def _md_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_cell(cell) -> str:
    """A cell as text; an estimate with its interval as two lines, each kept whole (a number, a
    range or a name like paper-cnn is never broken), words wrapping as the column needs."""
    lines = str(cell).split(LINE)
    if len(lines) == 1 and " " in lines[0]:  # break between words, never at a word's hyphen (bn-cnn)
        return " ".join(
            f'<span class="word">{html.escape(word)}</span>' if "-" in word else html.escape(word)
            for word in lines[0].split(" ")
        )
    return "<br>".join(f'<span class="line">{html.escape(line)}</span>' for line in lines)


def render_markdown(blocks, base: Path) -> str:
    """The report blocks as Markdown, figure paths relative to ``base``."""
    parts = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            parts.append("#" * int(kind[1]) + " " + block[1])
        elif kind == "p":
            parts.append(block[1])
        elif kind == "table":
            parts.append(_md_table(block[1], block[2]))
        elif kind == "figure":
            parts.append(f"![{block[2]}]({Path(block[1]).relative_to(base).as_posix()})\n\n*{block[2]}*")
    return "\n\n".join(parts) + "\n"


def render_html(blocks, lang: str) -> str:
    """The report blocks as one self-contained HTML page in language ``lang``."""
    body = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>" for row in block[2])
            body.append(f'<div class="table"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>')
        elif kind == "figure":
            data = base64.b64encode(Path(block[1]).read_bytes()).decode()
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block[2])}">'
                f"<figcaption>{html.escape(block[2])}</figcaption></figure>"
            )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.5;color:#222}"
        ".table{overflow-x:auto;margin:1em 0}table{border-collapse:collapse;font-size:.9em}.line,.word{white-space:nowrap}"
        "th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
        "th{background:#f3f3f3}figure{margin:1.5em 0}img{max-width:100%;height:auto}figcaption{font-style:italic;color:#555}"
    )
    title = html.escape(blocks[0][1])
    return (
        f'<!DOCTYPE html>\n<html lang="{lang}"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(
    study,
    experiments,
    rows,
    figures: dict,
    study_dir: Path,
    lang: str = "en",
    n_boot: int = BOOTSTRAP_RESAMPLES,
    ensembles: list[dict] | None = None,
    robustness: list[dict] | None = None,
) -> tuple[Path, Path]:
    """Write report.md and report.html into ``study_dir`` atomically; returns their paths."""
    blocks = build_blocks(study, experiments, rows, figures, lang, n_boot, ensembles, robustness)
    md_path, html_path = study_dir / "report.md", study_dir / "report.html"
    with atomic_path(md_path) as tmp:
        tmp.write_text(render_markdown(blocks, study_dir), encoding="utf-8")
    with atomic_path(html_path) as tmp:
        tmp.write_text(render_html(blocks, lang), encoding="utf-8")
    return md_path, html_path


def write_study_outputs(study, study_dir: str | Path, n_boot: int = BOOTSTRAP_RESAMPLES, lang: str = "en") -> dict:
    """Everything a finished study reports: results.csv/.md, the figures, report.md/.html."""
    study_dir = Path(study_dir)
    experiments = load_experiments(study, study_dir)
    if not experiments:
        return {}
    rows = results_rows(experiments, n_boot)
    ensembles = ensemble_rows(experiments, rows, n_boot)
    write_results_table(rows + ensembles, study_dir)
    robustness = robustness_rows(experiments, n_boot)
    figures = study_figures(experiments, rows + ensembles, study_dir / "figures", robustness)
    md_path, html_path = write_report(study, experiments, rows, figures, study_dir, lang, n_boot, ensembles, robustness)
    return {"results": study_dir / "results.md", "figures": figures, "report": md_path, "report_html": html_path}
