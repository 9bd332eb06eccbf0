"""Politosphere's two annotators and a model on all 150 sentences: pairwise Cohen's kappas, with the
37 sentences the annotators disagree on predicted by fold models that never saw them.

    .venv/bin/python bench/politosphere_kappa.py                       # MiniLM head, 5 folds (~3 min)
    .venv/bin/python bench/politosphere_kappa.py --model_name smollm2-135m \\
        --extra "--template llama2-chat --epoch 8 --train_batch_size 16 --learning_rate 2e-4"
    .venv/bin/python bench/politosphere_kappa.py --report

The commands (RUN = runs/politosphere_kappa/<model>):
    python train.py --task politosphere --model_name minilm-l6 --folds 5 --class_weights auto \\
        --epoch 10 --output_dir RUN/kfold --quiet             # the 113 agreed sentences, 5 folds
    python evaluate.py --ensemble RUN/kfold --predict_file RUN/disagreed.csv --output RUN/disagreed_labelled.csv
The model's label of an agreed sentence is its out-of-fold prediction (argmax, oof.csv); of a
disagreed sentence the 5 fold models' ensemble's (none trained on it: they are not in the task).
Kappas on the 7 labels and on the two 3-label merges (every label mapped through the task's merge),
each with a bootstrap 95% CI over sentences (1,000 resamples). With two annotators no latent-class
model (Dawid-Skene, MACE) is identifiable, so nobody is ranked: the table is agreement only.
Writes bench/results/politosphere_kappa.json.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from crossfit_e2e import run  # noqa: E402

OUT = REPO / "bench" / "results" / "politosphere_kappa.json"


def humans():
    """({annotator: {id: label}}, {id: text}) of both annotators' 150 sentences."""
    from annotune.data.examples import task_votes
    from annotune.data.task import load_task

    votes, texts = task_votes(load_task("politosphere_votes"))
    out = {}
    for item, annotator, label in votes:
        out.setdefault(annotator, {})[item] = label
    return out, texts


def kappa_ci(a: list, b: list, labels: list, n_boot: int = 1000) -> dict:
    from annotune.labelling.metrics import cohen_kappa

    rng = np.random.default_rng(0)
    a, b = np.array(a), np.array(b)
    boots = [cohen_kappa(list(a[i]), list(b[i]), labels) for i in (rng.integers(0, len(a), len(a)) for _ in range(n_boot))]
    return {"kappa": float(cohen_kappa(list(a), list(b), labels)), "agreement": float(np.mean(a == b)),
            "ci": [float(np.nanquantile(boots, 0.025)), float(np.nanquantile(boots, 0.975))], "n": len(a)}


def table(people: dict, ids: list, spec) -> dict:
    """Pairwise kappas on `ids`, for the 7 labels and each merge."""
    out = {}
    for merge in [None, "pol_unpol_oth", "supp_anti_oth"]:
        merged = spec.merged(merge)
        mapping = merged.merge_map or {l: l for l in spec.label_names}
        names = list(people)
        rows = {}
        for i, x in enumerate(names):
            for y in names[i + 1:]:
                rows[f"{x} vs {y}"] = kappa_ci([mapping[people[x][k]] for k in ids], [mapping[people[y][k]] for k in ids],
                                               merged.label_names)
        out[merge or "7 labels"] = rows
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name", default="minilm-l6")
    p.add_argument("--extra", default="--class_weights auto --epoch 10")
    p.add_argument("--runs", default="runs/politosphere_kappa")
    p.add_argument("--report", action="store_true")
    args = p.parse_args(argv)
    saved = json.loads(OUT.read_text()) if OUT.exists() else {}
    if args.report:
        print(report(saved))
        return
    import pandas as pd

    from annotune.data.task import load_task

    spec = load_task("politosphere")
    people, texts = humans()
    folder = REPO / args.runs / Path(args.model_name).name
    folder.mkdir(parents=True, exist_ok=True)
    seconds = {}
    if not (folder / "kfold" / "oof.csv").exists():
        seconds["kfold_training"] = run(["train.py", "--task", "politosphere", "--model_name", args.model_name,
                                         "--folds", 5, *args.extra.split(), "--output_dir", folder / "kfold", "--quiet"])
    oof = pd.read_csv(folder / "kfold" / "oof.csv", dtype={"id": str})
    agreed = set(oof["id"])
    disagreed = sorted(i for i in texts if i not in agreed)
    pd.DataFrame({"id": disagreed, "text": [texts[i] for i in disagreed]}).to_csv(folder / "disagreed.csv", index=False)
    labelled = folder / "disagreed_labelled.csv"
    if not labelled.exists():
        seconds["ensemble_labelling"] = run(["evaluate.py", "--ensemble", folder / "kfold", "--predict_file",
                                             folder / "disagreed.csv", "--output", labelled, "--quiet"])
    model = dict(zip(oof["id"], oof["prediction"]))
    ensemble = pd.read_csv(labelled, dtype={"id": str})
    model.update(dict(zip(ensemble["id"], ensemble["prediction"])))
    people = {"Leo": people["leo"], "Yifei": people["yifei"], "model": model}
    ids = sorted(texts)
    saved[Path(args.model_name).name] = {
        "all_150": table(people, ids, spec), "disagreed_37": table(people, disagreed, spec),
        "agreed_113": table(people, sorted(agreed), spec), "seconds": seconds or saved.get(
            Path(args.model_name).name, {}).get("seconds"),
        "oof_metrics": json.loads((folder / "kfold" / "oof_metrics.json").read_text())}
    OUT.write_text(json.dumps(saved, indent=1) + "\n")
    print(report(saved))


def report(saved: dict) -> str:
    lines = ["| model | rows | labels | Leo vs Yifei | model vs Leo | model vs Yifei |", "|---|---|---|---|---|---|"]
    cell = lambda r: f"{r['kappa']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] ({r['agreement']:.1%})"  # noqa: E731
    for model, result in saved.items():
        for rows in ("all_150", "disagreed_37"):
            for labels, t in result[rows].items():
                lines.append(f"| {model} | {rows.replace('_', ' ')} | {labels} | {cell(t['Leo vs Yifei'])} | "
                             f"{cell(t['Leo vs model'])} | {cell(t['Yifei vs model'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
