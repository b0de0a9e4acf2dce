"""The study report: ``report.md`` and a self-contained ``report.html`` (figures embedded), written
from the measured numbers in the paper's order: environment, datasets, models, training settings,
results (Table 2, comparisons, figures) and discussion."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from .. import __version__
from ..data import get_dataset_info
from ..experiments.results import load_experiments, metric_cell, results_rows, write_results_table
from ..io import atomic_path
from ..models import available_models
from .discussion import compare, harder_dataset, overfitting
from .figures import study_figures
from .texts import METRIC_NAMES, TEXTS

LANGUAGES = tuple(TEXTS)


def _ci(d: dict) -> str:
    return f"{d['difference']:+.4f} ({d['ci_low']:+.4f} to {d['ci_high']:+.4f})"


def _level(experiment, factor: str, t: dict) -> str:
    value = getattr(experiment, factor)
    return t["pixels"].format(size=value) if factor == "size" else str(value)


def build_blocks(study, experiments, rows, figures: dict, lang: str, n_boot: int) -> list[tuple]:
    """The report as a list of blocks: ("h1"|"h2"|"h3"|"p", text), ("table", header, rows),
    ("figure", png path, caption)."""
    t, names = TEXTS[lang], METRIC_NAMES[lang]
    first = experiments[0].records[0]
    env = first["environment"]
    packages = env["packages"]
    blocks: list[tuple] = [("h1", t["title"].format(name=study.name)), ("p", t["generated"].format(version=__version__))]

    device = env["device"] + (f" ({env['gpu']})" if env.get("gpu") else "")
    env_values = [device, env["processor"], env["cpu_count"], env["python"], packages["torch"], packages["torchvision"],
                  packages["medmnist"], packages["scikit-learn"]]
    blocks += [("h2", t["environment"]), ("table", t["kv_header"], [[k, str(v)] for k, v in zip(t["env_rows"], env_values)])]

    dataset_rows = []
    for dataset in dict.fromkeys(e.dataset for e in experiments):
        e = next(x for x in experiments if x.dataset == dataset)
        splits = e.records[0]["data"]["source"]["split_sizes"]
        sizes = ", ".join(str(x.size) for x in experiments if x.dataset == dataset and x.model == e.model)
        dataset_rows.append([dataset, e.task, str(e.records[0]["data"]["channels"]), str(len(e.class_names)), sizes,
                             " / ".join(str(splits[s]) for s in ("train", "val", "test"))])
    blocks += [("h2", t["datasets"]), ("table", t["dataset_header"], dataset_rows)]

    registry = available_models()
    model_rows = [[e.model, registry[e.model].description if e.model in registry else "",
                   f"{e.records[0]['model']['in_channels']}×{e.size}×{e.size}", f"{e.records[0]['model']['parameters']:,}"]
                  for e in experiments]
    blocks += [("h2", t["models"]), ("table", t["model_header"], model_rows)]

    config = first["config"]
    loss = "BCEWithLogits" if experiments[0].task == "multi-label, binary-class" else "cross-entropy"
    settings = {"loss": loss, "optimizer": "Adam", "lr": config["lr"], "epochs": config["epochs"], "batch_size": config["batch_size"],
                "normalize": config["normalize"], "select_metric": config["select_metric"],
                "seeds": ", ".join(map(str, study.seeds))}
    blocks += [("h2", t["training"]), ("table", t["kv_header"], [[t["training_rows"][k], str(v)] for k, v in settings.items()])]

    blocks += [("h2", t["results"]), ("p", t["table2"]),
               ("table", t["table2_header"], [[f"{r['dataset']} · {r['model']}", str(r["size"]), metric_cell(r, "auc"),
                                               metric_cell(r, "f1_macro"), metric_cell(r, "acc")] for r in rows])]

    comparisons = compare(experiments, n_boot)
    if comparisons:
        blocks += [("h3", t["comparisons"]), ("p", t["comparison_caption"]),
                   ("table", t["comparison_header"], [[
                       t["factor"][c.factor], ", ".join(f"{k} {v}" for k, v in c.fixed.items()), _level(c.a, c.factor, t), _level(c.b, c.factor, t),
                       _ci(c.difference["acc"]), _ci(c.difference["f1_macro"]), _ci(c.difference["auc"]),
                       f"{c.mcnemar['p_value']:.3g}" if c.mcnemar else "–"] for c in comparisons])]

    blocks.append(("h3", t["figures"]))
    number = 1
    blocks.append(("figure", figures["loss_curves"][0], t["fig_loss"]))
    for dataset in dict.fromkeys(e.dataset for e in experiments):
        number += 1
        blocks.append(("figure", figures[f"{dataset}_comparison"][0], t["fig_dataset"].format(n=number, dataset=dataset)))
    number += 1
    blocks.append(("figure", figures["all_experiments"][0], t["fig_all"].format(n=number)))
    for e in experiments:
        number += 1
        blocks.append(("figure", figures[f"confusion_{e.name}"][0], t["fig_confusion"].format(n=number, experiment=e.name)))

    blocks.append(("h2", t["discussion"]))
    for factor, title in (("dataset", "dataset_title"), ("size", "size_title"), ("model", "model_title")):
        chosen = [c for c in comparisons if c.factor == factor]
        if not chosen:
            continue
        blocks.append(("h3", t[title]))
        for c in chosen:
            if factor == "dataset":
                h = harder_dataset(c)
                details = "; ".join(t["metric_delta"].format(metric=names[m], value_hard=hard, value_easy=easy, delta=hard - easy)
                                    for m, (hard, easy) in h["metrics"].items())
                key = "harder" if h["agree"] else "harder_mixed"
                blocks.append(("p", t[key].format(hard=h["hard"].name, easy=h["easy"].name, details=details)))
                continue
            d = c.difference
            fixed = c.fixed.get("dataset", c.a.dataset)
            context = c.fixed.get("model", c.a.model) if factor == "size" else t["pixels"].format(size=c.fixed.get("size", c.a.size))
            blocks.append(("p", t[f"verdict_{c.verdict}"].format(
                dataset=fixed, model=context, a=_level(c.a, factor, t), b=_level(c.b, factor, t),
                delta_acc=d["acc"]["difference"], low=d["acc"]["ci_low"], high=d["acc"]["ci_high"],
                delta_f1=d["f1_macro"]["difference"], delta_auc=d["auc"]["difference"],
                p=c.mcnemar["p_value"] if c.mcnemar else float("nan"))))
        if factor == "dataset":
            blocks.append(("p", t["unpaired_note"]))

    blocks.append(("h3", t["overfit_title"]))
    for e in experiments:
        o = overfitting(e)
        key = "overfit" if o["overfits"] else "no_overfit"
        blocks.append(("p", t[key].format(experiment=e.name, best=o["best_epoch"], low=o["lowest"], last=o["last"],
                                          rise=o["rise"], gap=o["gap"], train=o["train_last"], epochs=o["epochs"])))

    limits = [t["limit_general"]]
    limits.append(t["limit_seeds"].format(n=len(study.seeds)) if len(study.seeds) > 1 else t["limit_one_seed"])
    limits.append(t["limit_epochs"].format(epochs=config["epochs"]))
    synthetic = [e.dataset for e in experiments if get_dataset_info(e.dataset).synthetic] if experiments[0].dataset != "folder" else []
    if synthetic:
        limits.append(t["limit_synthetic"].format(datasets=", ".join(dict.fromkeys(synthetic))))
    blocks += [("h3", t["limitations"])] + [("p", text) for text in limits]
    return blocks


def _md_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(blocks, base: Path) -> str:
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
    body = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "figure":
            data = base64.b64encode(Path(block[1]).read_bytes()).decode()
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block[2])}">'
                        f"<figcaption>{html.escape(block[2])}</figcaption></figure>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.5;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
             "th{background:#f3f3f3}figure{margin:1.5em 0}img{max-width:100%;height:auto}figcaption{font-style:italic;color:#555}")
    title = html.escape(blocks[0][1])
    return (f'<!DOCTYPE html>\n<html lang="{lang}"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{title}</title><style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(study, experiments, rows, figures: dict, study_dir: Path, lang: str = "en", n_boot: int = 1000) -> tuple[Path, Path]:
    blocks = build_blocks(study, experiments, rows, figures, lang, n_boot)
    md_path, html_path = study_dir / "report.md", study_dir / "report.html"
    with atomic_path(md_path) as tmp:
        tmp.write_text(render_markdown(blocks, study_dir), encoding="utf-8")
    with atomic_path(html_path) as tmp:
        tmp.write_text(render_html(blocks, lang), encoding="utf-8")
    return md_path, html_path


def write_study_outputs(study, study_dir: str | Path, n_boot: int = 1000, lang: str = "en") -> dict:
    """Everything a finished study reports: results.csv/.md, the figures, report.md/.html."""
    study_dir = Path(study_dir)
    experiments = load_experiments(study, study_dir)
    if not experiments:
        return {}
    rows = results_rows(experiments, n_boot)
    write_results_table(rows, study_dir)
    figures = study_figures(experiments, study_dir / "figures")
    md_path, html_path = write_report(study, experiments, rows, figures, study_dir, lang, n_boot)
    return {"results": study_dir / "results.md", "figures": figures, "report": md_path, "report_html": html_path}
