"""Result files people and programs read: per-model metrics.json, predictions.jsonl, confusion
matrix (CSV and PNG), reliability plot, boxplots, the learning curve, markdown tables, and
evaluate.py's comparison.md with its manifest."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from ..base.files import atomic_path, atomic_write_json, atomic_write_jsonl, atomic_write_text, publish_dir, run_manifest
from ..data.labels import INVALID


def _fmt(value, digits=3):
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def _with_ci(metrics, key):
    ci = (metrics.get("ci95") or {}).get(key)
    value = metrics.get(key)
    if ci and ci[0] == ci[0]:
        return f"{_fmt(value)} [{_fmt(ci[0])}, {_fmt(ci[1])}]"
    return _fmt(value)


def _savefig(fig, path: Path):
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_model_results(folder: Path, metrics: dict, records: list, title: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "metrics.json", metrics)
    atomic_write_jsonl(folder / "predictions.jsonl", records)
    if "confusion_matrix" in metrics:
        labels = metrics["labels"] + [INVALID]
        matrix = metrics["confusion_matrix"]
        keep = [i for i, label in enumerate(labels) if label != INVALID or any(row[i] for row in matrix)]
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["gold \\ predicted"] + [labels[i] for i in keep])
        for i, label in enumerate(metrics["labels"]):
            writer.writerow([label] + [matrix[i][j] for j in keep])
        atomic_write_text(folder / "confusion_matrix.csv", buf.getvalue())
        plot_confusion(folder / "confusion_matrix.png", [labels[i] for i in keep],
                       [[matrix[i][j] for j in keep] for i in range(len(metrics["labels"]))], title)
    if metrics.get("calibration"):
        plot_reliability(folder / "reliability.png", metrics["calibration"], title)


def plot_confusion(path: Path, columns, matrix, title):
    plt = _plt()
    rows = columns[: len(matrix)]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(columns), 1.0 + 0.8 * len(rows)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(columns)), columns, rotation=40, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title, fontsize=9)
    _savefig(fig, path)


def plot_reliability(path: Path, calibration: dict, title):
    plt = _plt()
    bins = calibration["bins"]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="gray", lw=1)
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-")
    ax.set_xlabel("confidence (top label probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE {calibration['ece']:.3f}", fontsize=9)
    _savefig(fig, path)


def plot_boxplots(path: Path, per_model: dict, keys):
    """Per-example score distributions of each model, one panel per metric (the FLAN-T5 write-up's plot)."""
    plt = _plt()
    keys = [k for k in keys if all(k in rows[0] for rows in per_model.values() if rows)]
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        ax.boxplot([[r[key] for r in rows] for rows in per_model.values()], showmeans=True)
        ax.set_xticks(range(1, len(per_model) + 1), [n[:18] for n in per_model], rotation=20, ha="right")
        ax.set_title(key)
    _savefig(fig, path)


def comparison_table(results: list, task_type: str) -> str:
    """A markdown table, one row per evaluated model and split; a model evaluated with a fitted
    decision rule gets its argmax row first, then the rule's row."""
    if task_type == "classification":
        from .metrics import LABEL_METRICS

        head = "| model | split | n | " + " | ".join(m.title for m in LABEL_METRICS) + " | invalid | ECE |"
        lines = [head, "|" + "---|" * (head.count("|") - 1)]
        for r in results:
            rows = [(r["name"], r["metrics"])]
            if "argmax" in r["metrics"]:
                rows = [(f"{r['name']} (argmax)", r["metrics"]["argmax"]), (f"{r['name']} (fitted rule)", r["metrics"])]
            for name, m in rows:
                cells = " | ".join(_with_ci(m, metric.key) for metric in LABEL_METRICS)
                lines.append(f"| {name} | {r['split']} | {m['n']} | {cells} | {m['invalid']} | {_fmt(m.get('ece'))} |")
        return "\n".join(lines) + "\n"
    keys = ["rouge1", "rouge2", "rougeL", "rougeLsum", "bertscore_f1", "exact_match"]
    present = [k for k in keys if any(k in r["metrics"] for r in results)]
    lines = ["| model | split | n | " + " | ".join(present) + " |", "|---|---|---|" + "---|" * len(present)]
    for r in results:
        m = r["metrics"]
        lines.append(f"| {r['name']} | {r['split']} | {m['n']} | " + " | ".join(_with_ci(m, k) for k in present) + " |")
    return "\n".join(lines) + "\n"


def add_baseline_differences(results: list, labels, n_boot: int, seed: int) -> None:
    """Each model's paired metrics (metrics.LABEL_METRICS) minus TF-IDF's (vs_tfidf), for an adapter or a
    few-shot row minus the zero-shot base's (vs_base), and for every adapter after the first and every
    few-shot row minus the first adapter's (vs_first_adapter: two trainings, or prompting against
    tuning, compared), on the same rows, with paired bootstrap 95% CIs, into
    its metrics. Not on the train split: TF-IDF was fit there, the adapter trained there."""
    from .baseline import TFIDF_NAME
    from .metrics import LABEL_METRICS, paired_difference

    def differences(r, ref):
        gold = [x["gold"] for x in r["records"]]
        given, theirs = [x["prediction"] for x in r["records"]], [x["prediction"] for x in ref["records"]]
        return {m.key: paired_difference(gold, given, theirs, lambda g, p, fn=m.fn: fn(g, p, labels), n_boot, seed)
                for m in LABEL_METRICS if m.paired}

    def few_shot(x):
        return "shots_used" in x["metrics"]

    for r in results:
        if r.get("row_label") or r["split"] == "train":
            continue
        compared = r["adapter"] or few_shot(r)  # a tuned or few-shot row: against zero-shot and the tuned
        for key, is_ref in (("vs_tfidf", lambda x: x["name"] == TFIDF_NAME),
                            ("vs_base", lambda x: compared and x["name"].startswith("base:") and not few_shot(x)),
                            ("vs_first_adapter", lambda x: compared and x["adapter"])):
            ref = next((x for x in results if x["split"] == r["split"] and is_ref(x)), None)
            if ref is not None and ref is not r and [x["id"] for x in r["records"]] == [x["id"] for x in ref["records"]]:
                r["metrics"][key] = dict(differences(r, ref), reference=ref["name"])


def difference_word(ci95) -> str:
    """A paired difference's reading: better or worse only where its interval leaves out 0."""
    lo, hi = ci95
    return "better" if lo > 0 else ("worse" if hi < 0 else "no difference shown")


def baseline_difference_table(results: list) -> str:
    """The vs_tfidf, vs_base and vs_first_adapter differences as markdown; better or worse only where
    the CI leaves out 0."""
    rows = [r for r in results if any(r["metrics"].get(k) for k in ("vs_tfidf", "vs_base", "vs_first_adapter"))]
    if not rows:
        return ""

    from .metrics import LABEL_METRICS

    paired = [m for m in LABEL_METRICS if m.paired]

    def cell(m, key, metric):
        if not m.get(key) or metric not in m[key]:
            return "-"
        d = m[key][metric]
        lo, hi = d["ci95"]
        if lo != lo:  # NaN: no bootstrap draws (evaluate.py --bootstrap 0), so no reading either
            return f"{d['diff']:+.3f} (no CI: --bootstrap 0)"
        return f"{d['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}] ({difference_word(d['ci95'])})"

    order = sorted(paired, key=lambda m: m.key != "macro_f1")  # macro-F1 first, as the seeds report it
    titles = [f"{m.title} - {ref}" for ref in ("TF-IDF", "base") for m in order]
    lines = ["Against TF-IDF and the untuned base on the same rows (difference, paired bootstrap 95% CI):", "",
             "| model | split | " + " | ".join(titles) + " |", "|---|---|" + "---|" * len(titles)]
    lines += [f"| {r['name']} | {r['split']} | " + " | ".join(cell(r["metrics"], key, m.key) for key in
              ("vs_tfidf", "vs_base") for m in order) + " |" for r in rows]
    later = [r for r in results if r["metrics"].get("vs_first_adapter")]
    if later:
        lines += ["", f"Against the first adapter, {later[0]['metrics']['vs_first_adapter']['reference']}, "
                  "on the same rows (difference, paired bootstrap 95% CI):", "",
                  "| model | split | " + " | ".join(f"{m.title} - first" for m in order) + " |",
                  "|---|---|" + "---|" * len(order)]
        lines += [f"| {r['name']} | {r['split']} | " + " | ".join(cell(r["metrics"], "vs_first_adapter", m.key)
                  for m in order) + " |" for r in later]
    return "\n".join(lines) + "\n"


def epoch_table(rows: list) -> str:
    """The Politosphere write-up's per-epoch table (its columns: the per-epoch metrics of
    metrics.LABEL_METRICS, accuracy and macro-F1 as "F1-score", on train, then on validation)."""
    from .metrics import LABEL_METRICS

    shown = [m for m in LABEL_METRICS if m.per_epoch]
    name = {"accuracy": "Accuracy", "macro_f1": "F1-score"}
    titles = [f"{name.get(m.key, m.title)} on {split}" for split in ("Train.", "Val.") for m in shown]
    lines = ["| # Epoch | " + " | ".join(titles) + " |", "| ------- | " + " | ".join("-" * len(t) for t in titles) + " |"]
    # Baselines first, then the untuned base model as epoch 0, so the table reads as a learning curve.
    for r in sorted(rows, key=lambda r: -2 if r.get("row_label") else (-1 if r["epoch"] is None else r["epoch"])):
        epoch = r.get("row_label") or ("0 (base)" if r["epoch"] is None else r["epoch"])
        lines.append(f"| {epoch} | " + " | ".join(_fmt(r[split].get(m.key), 2) for split in ("train", "val")
                                                  for m in shown) + " |")
    return "\n".join(lines) + "\n"


def paired_win_rate(base_rows, tuned_rows, key) -> float:
    """Share of examples where the tuned model scores higher than the base on `key`."""
    pairs = list(zip(base_rows, tuned_rows))
    return sum(t["scores"][key] > b["scores"][key] for b, t in pairs) / len(pairs) if pairs else float("nan")


def plot_learning_curve(rows, path: Path, metric: str) -> None:
    """Training loss per step and the validation metric per evaluation, from log.jsonl rows."""
    plt = _plt()
    steps = [r for r in rows if r["type"] == "step"]
    evals = [r for r in rows if r["type"] == "eval" and metric in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], color="tab:blue", lw=1, label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss", color="tab:blue")
    if evals:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in evals], [r[metric] for r in evals], "o-", color="tab:red",
                 label=f"validation {metric}")
        ax2.set_ylabel(f"validation {metric}", color="tab:red")
        ax2.set_ylim(0, 1)
    ax.set_title("learning curve")
    fig.tight_layout()
    _savefig(fig, path)


def safe_name(name: str) -> str:
    """A model's name as a folder name ("base:smollm2-135m" -> "base_smollm2-135m")."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def write_comparison(arguments: dict, spec, results, staging: Path, out_dir: Path, info: dict,
                     epoch_table_too: bool = False) -> str:
    """comparison.md (one row per model and split; the per-epoch table with epoch_table_too, evaluate.py's
    --table; kappa with humans; generation boxplots and win rates) and manifest.json (arguments:
    evaluate.py's, {flag: value}) into the staging folder, then publish it as out_dir."""
    from .agreement import agreement_markdown

    differences = baseline_difference_table(results)
    parts = [f"# {spec.name}: {', '.join(sorted({r['split'] for r in results}))} split\n",
             comparison_table(results, spec.type)] + (["\n" + differences] if differences else [])
    if epoch_table_too:
        by_model = {}
        for r in results:
            by_model.setdefault(r["name"], {"epoch": r["epoch"], "row_label": r.get("row_label"), "train": {}, "val": {}})
            by_model[r["name"]]["train" if r["split"] == "train" else "val"] = r["metrics"]
        parts.append("\n" + epoch_table(list(by_model.values())))
    for r in results:
        if r.get("agreement"):
            parts.append(f"\n{r['name']}: " + agreement_markdown(r["agreement"]))
            atomic_write_json(staging / safe_name(r["name"]) / "agreement.json", r["agreement"])
    if spec.type == "generation":
        parts += generation_comparison(results, staging)
    text = "\n".join(parts) + "\n"
    atomic_write_text(staging / "comparison.md", text)
    manifest = run_manifest(arguments, task=spec.name, data=info,
                            models=[{"name": r["name"], "split": r["split"], "adapter": r["adapter"],
                                     "ids": [rec["id"] for rec in r["records"]]} for r in results])
    atomic_write_json(staging / "manifest.json", manifest)
    publish_dir(staging, out_dir)
    return text


def generation_comparison(results, staging: Path) -> list:
    """Boxplots of per-example scores and, against the base, the share of examples each model wins."""
    per_model = {r["name"]: [rec["scores"] for rec in r["records"]] for r in results}
    plot_boxplots(staging / "scores_boxplot.png", per_model, ["rouge1", "rouge2", "rougeL", "bertscore_f1"])
    base = next((r for r in results if r["name"].startswith("base:")), None)
    lines = []
    for r in results:
        if base and r is not base and len(r["records"]) == len(base["records"]):
            for key in ("rougeL", "bertscore_f1"):
                if key in r["records"][0]["scores"]:
                    share = paired_win_rate(base["records"], r["records"], key)
                    lines.append(f"\n{r['name']} beats the base on {key} for {100 * share:.1f}% of examples.")
    return lines
