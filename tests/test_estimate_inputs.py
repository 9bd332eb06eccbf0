"""estimate.py and sample.py against careless and hostile input (blank group cells, groups without
human labels, free-text covariates, edited design files, odd row ids, clashing outputs), and the
properties every estimate must keep: permutation invariance, a group's estimate equal to the
filtered corpus's, and no interval of zero width where the labels differ."""
import csv
import json

import numpy as np
import pytest

from conftest import run_script
from test_estimates import LABELS, fill, refused, write_corpus


def corpus_with_columns(path, size=600, seed=0, blank_source=0, blank_score=0):
    """An annotated corpus with a group column (some cells blank), a free-text column, a numeric
    column (some cells blank) and a constant one; returns (gold, source as written)."""
    rng = np.random.default_rng(seed)
    source = rng.choice(["reddit", "twitter", "gab"], size, p=[0.5, 0.35, 0.15]).astype(object)
    source[rng.choice(size, blank_source, replace=False)] = ""
    score = np.round(rng.standard_normal(size), 4).astype(object)
    score[rng.choice(size, blank_score, replace=False)] = ""
    gold = (rng.random(size) < np.where(source == "reddit", 0.45, 0.25)).astype(int)
    p = np.clip(0.25 + 0.5 * gold + 0.2 * rng.standard_normal(size), 0.01, 0.99)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "text", "source", "score", "const", "prediction", "prob_offensive",
                         "prob_not offensive", "truncated"])
        for i in range(size):
            writer.writerow([i, f"post {i} {rng.integers(1e9)}", source[i], score[i], 1,
                             LABELS[0] if p[i] > 0.5 else LABELS[1], f"{p[i]:.6f}", f"{1 - p[i]:.6f}", 0])
    return gold, source


def estimates(folder) -> dict:
    result = json.loads((folder / "estimates.json").read_text())
    return {(e["quantity"]["kind"], e["quantity"]["label"], e["quantity"]["group"], e["quantity"]["term"]): e
            for e in result["estimates"]}


# ---------------------------------------------------------------- groups
def test_blank_group_cells_are_a_group_of_their_own_and_never_the_whole_corpus(in_tmp, capsys):
    gold, source = corpus_with_columns(in_tmp / "c.csv", blank_source=80)
    assert run_script("sample", ["--corpus", "c.csv", "--n", 200, "--seed", 4]) == 0
    rows = fill(in_tmp / "c.sheet.csv", gold, in_tmp / "s.csv")
    for out, extra in (("plain", []), ("by", ["--by", "source"])):
        assert run_script("estimate", ["--corpus", "c.csv", "--sheet", "s.csv", "--design", "c.design.json",
                                       "--output_dir", out, *extra]) == 0
    plain, by = estimates(in_tmp / "plain"), estimates(in_tmp / "by")
    whole = ("share", "offensive", "", "")
    for method in ("naive", "classical", "ppi"):
        assert by[whole][method]["estimate"] == pytest.approx(plain[whole][method]["estimate"], abs=1e-12)
    blank = by[("share", "offensive", "(blank)", "")]
    in_blank = [r for r in rows if source[r] == ""]
    assert blank["classical"]["labelled"] == len(in_blank) >= 2
    assert blank["classical"]["estimate"] == pytest.approx(np.mean([gold[r] for r in in_blank]), abs=1e-12)
    with open(in_tmp / "c.csv", newline="") as handle:
        predicted = [r["prediction"] == "offensive" for r in csv.DictReader(handle) if r["source"] == ""]
    assert blank["naive"]["estimate"] == pytest.approx(np.mean(predicted), abs=1e-12)


def api_corpus(size=400, seed=0):
    """A Corpus object built in memory, its hidden gold labels and the model's probabilities."""
    import pandas as pd

    from annotune.estimation.annotated import Corpus

    rng = np.random.default_rng(seed)
    gold = (rng.random(size) < 0.3).astype(int)
    p = np.clip(0.2 + 0.6 * (gold == 0) + 0.15 * rng.standard_normal(size), 0.01, 0.99)  # label 0: not offensive
    probs = np.column_stack([p, 1 - p])
    table = pd.DataFrame({"text": [f"t{i}" for i in range(size)]})
    corpus = Corpus("mem.csv", "0" * 64, table, np.arange(size) * 3 + 11, ["not offensive", "offensive"],
                    (p < 0.5).astype(int), probs)
    return corpus, 1 - gold  # gold label index: 0 not offensive, 1 offensive


def srs(rows, size):
    from annotune.estimation.inference import Sample

    rows = np.array(sorted(rows), dtype=int)
    return Sample(rows, np.full(len(rows), len(rows) / size), "srs", size)


def test_a_group_with_fewer_than_two_labelled_rows_is_not_estimable(tmp_path):
    from annotune.estimation.findings import Findings, effective_sizes, write_estimates

    corpus, gold = api_corpus()
    rng = np.random.default_rng(1)
    rows = rng.choice(corpus.size, 60, replace=False)
    group = rng.choice(["a", "b"], corpus.size).astype("<U8")
    unlabelled = np.setdiff1d(np.arange(corpus.size), rows)
    group[unlabelled[:5]] = "none"   # no labelled row
    group[unlabelled[5:9]] = "one"
    group[rows[0]] = "one"           # one labelled row
    sample = srs(rows, corpus.size)
    findings = Findings(corpus, "probs", group)
    results = findings.run(sample, gold[sample.rows])
    for r in results:
        q = r["quantity"]
        thin = ("none" in q.group or "one" in q.group) and r["method"] != "naive"
        if thin:
            assert r["estimate"] is None and r["low"] is None and "not estimable" in r["note"], r
            assert r["labelled"] == (0 if "none" in q.group else 1)
        else:
            assert r["estimate"] is not None and (r["low"] < r["high"] or r["method"] == "naive"), r
    summary = {"corpus": "mem.csv", "labelled": 60, "strategy": "uniform", "unlabelled_dropped": 0,
               "model_output": "probs", "corpus_rows": corpus.size, "alpha": 0.1, "plan_half_width": None}
    write_estimates(tmp_path / "out", summary, results, effective_sizes(results, 60, corpus.size), None)
    md = (tmp_path / "out" / "estimates.md").read_text()
    assert "not estimable (0 labelled)" in md and "not estimable (1 labelled)" in md
    saved = json.loads((tmp_path / "out" / "estimates.json").read_text())
    none = next(e for e in saved["estimates"] if e["quantity"]["group"] == "none")
    assert none["ppi"]["estimate"] is None and none["naive"]["estimate"] is not None
    assert (tmp_path / "out" / "forest.png").stat().st_size > 0


def test_a_group_estimate_is_the_filtered_corpus_estimate_with_the_domain_interval():
    from annotune.estimation.annotated import Corpus
    from annotune.estimation.findings import Findings

    corpus, gold = api_corpus(size=500, seed=2)
    rng = np.random.default_rng(3)
    rows = np.sort(rng.choice(corpus.size, 120, replace=False))
    group = np.where(rng.random(corpus.size) < 0.4, "g", "h")
    sample = srs(rows, corpus.size)
    full = {(r["quantity"].name, r["method"]): r for r in Findings(corpus, "probs", group).run(sample, gold[rows])}
    keep = np.flatnonzero(group == "g")
    sub = Corpus("sub.csv", "0" * 64, corpus.table.iloc[keep], corpus.ids[keep], corpus.labels,
                 corpus.prediction[keep], corpus.probs[keep])
    sub_rows = np.searchsorted(keep, rows[group[rows] == "g"])
    from annotune.estimation.inference import Sample, estimate

    sub_sample = Sample(sub_rows, np.full(len(sub_rows), 120 / corpus.size), "srs", len(keep))
    sub_results = {(r["quantity"].name, r["method"]): r
                   for r in Findings(sub, "probs").run(sub_sample, gold[keep][sub_rows])}
    for label in corpus.labels:
        domain, whole = f"share of {label} in g", f"share of {label}"
        for method in ("naive", "classical"):
            assert full[domain, method]["estimate"] == pytest.approx(sub_results[whole, method]["estimate"], abs=1e-9)
        lam = full[domain, "ppi"]["lam"]  # ppi at the same lam: the same point estimate
        j = corpus.labels.index(label)
        at_lam = estimate(np.ones((len(keep), 1)), sub.probs[:, j], sub_sample, (gold[keep][sub_rows] == j) * 1.0,
                          lam=lam)
        assert full[domain, "ppi"]["estimate"] == pytest.approx(float(at_lam.value[0]), abs=1e-9)
        # classical: the domain-estimation variance, (1 - n/N) s^2 / n of u_i = 1[i in g] (y_i - p_g) N / N_g
        y = (gold[rows] == j).astype(float)
        in_g = group[rows] == "g"
        p_g = y[in_g].mean()
        u = in_g * (y - p_g) * corpus.size / len(keep)
        hand = (1 - 120 / corpus.size) * np.var(u, ddof=1) / 120
        assert full[domain, "classical"]["se"] ** 2 == pytest.approx(hand, rel=1e-9)


def test_estimates_do_not_depend_on_the_order_of_the_corpus_rows():
    from annotune.estimation.annotated import Corpus
    from annotune.estimation.findings import Findings

    corpus, gold = api_corpus(size=300, seed=5)
    rng = np.random.default_rng(6)
    rows = rng.choice(corpus.size, 80, replace=False)
    group = rng.choice(["x", "y", "z"], corpus.size)
    order = rng.permutation(corpus.size)
    moved = Corpus("p.csv", "0" * 64, corpus.table.iloc[order], corpus.ids[order], corpus.labels,
                   corpus.prediction[order], corpus.probs[order])
    where = np.argsort(order)  # corpus position -> its position after the permutation
    regress = ("offensive", {"g": group})
    a = Findings(corpus, "probs", group, regress).run(srs(rows, corpus.size), gold[np.sort(rows)])
    b = Findings(moved, "probs", group[order], ("offensive", {"g": group[order]})).run(
        srs(where[rows], corpus.size), gold[order][np.sort(where[rows])])
    assert [r["quantity"].name for r in a] == [r["quantity"].name for r in b]
    for x, y in zip(a, b):
        for key in ("estimate", "low", "high", "se"):
            assert x[key] == pytest.approx(y[key], abs=1e-9), (x["quantity"].name, x["method"], key)


def test_every_interval_over_labels_that_differ_has_positive_width():
    from annotune.estimation.findings import Findings

    corpus, gold = api_corpus(size=200, seed=8)
    rng = np.random.default_rng(9)
    for trial in range(30):
        n = int(rng.integers(2, 12))
        rows = np.sort(rng.choice(corpus.size, n, replace=False))
        group = rng.choice(["a", "b"], corpus.size)
        for r in Findings(corpus, "probs", group).run(srs(rows, corpus.size), gold[rows]):
            if r["method"] == "naive" or r["estimate"] is None:
                continue
            q = r["quantity"]
            if q.kind == "share":
                inside = rows if not q.group else rows[group[rows] == q.group]
            else:
                inside = rows
            if len(inside) >= 2 and len(set(gold[inside])) > 1:
                assert r["high"] - r["low"] > 0, (trial, q.name, r["method"], r)


# ---------------------------------------------------------------- row ids on a sheet
def test_a_row_id_written_as_text_or_float_is_the_same_row(in_tmp, capsys):
    gold, _ = write_corpus(in_tmp / "c.csv", size=400)
    assert run_script("sample", ["--corpus", "c.csv", "--n", 60]) == 0
    fill(in_tmp / "c.sheet.csv", gold, in_tmp / "s.csv")
    lines = (in_tmp / "s.csv").read_text().splitlines()
    outputs = []
    for k, style in enumerate((str, lambda r: f'"{r}"', lambda r: f'" {r}"', lambda r: f"{r}.0")):
        body = [lines[0]] + [style(line.split(",", 1)[0]) + "," + line.split(",", 1)[1] for line in lines[1:]]
        (in_tmp / f"s{k}.csv").write_text("\n".join(body) + "\n")
        assert run_script("estimate", ["--corpus", "c.csv", "--sheet", f"s{k}.csv", "--design", "c.design.json",
                                       "--output_dir", f"e{k}"]) == 0
        outputs.append(json.loads((in_tmp / f"e{k}" / "estimates.json").read_text())["estimates"])
    assert all(o == outputs[0] for o in outputs)
    first = lines[1].split(",", 1)
    (in_tmp / "bad.csv").write_text("\n".join([lines[0], f"{first[0]}.5,{first[1]}"] + lines[2:]) + "\n")
    refused(capsys, "estimate", ["--corpus", "c.csv", "--sheet", "bad.csv", "--design", "c.design.json"],
            f"row '{first[0]}.5' is not a row number", in_tmp)


# ---------------------------------------------------------------- regression covariates
@pytest.mark.parametrize("on,extra,message", [
    (["text"], [], "a category needs 2 labelled rows per level"),
    (["score"], [], "30 of 600 rows are blank"),
    (["const"], [], "rank 1 below its 2 columns"),
    (["source", "score"], ["--drop_blank", "--by", "source"], None),
])
def test_regression_covariates(in_tmp, capsys, on, extra, message):
    gold, _ = corpus_with_columns(in_tmp / "c.csv", blank_score=30)
    assert run_script("sample", ["--corpus", "c.csv", "--n", 150]) == 0
    fill(in_tmp / "c.sheet.csv", gold, in_tmp / "s.csv")
    argv = ["--corpus", "c.csv", "--sheet", "s.csv", "--design", "c.design.json", "--regress", "offensive",
            "--on", *on, *extra]
    if message:
        refused(capsys, "estimate", argv, message, in_tmp)
        return
    assert run_script("estimate", argv) == 0
    result = json.loads((in_tmp / "c.estimates" / "estimates.json").read_text())
    assert result["regression_rows"] == 570
    terms = [e["quantity"]["term"] for e in result["estimates"] if e["quantity"]["kind"] == "coefficient"]
    assert "score" in terms and any(t.startswith("source=") for t in terms)  # a number column, a category column
    for e in result["estimates"]:
        if e["quantity"]["kind"] == "coefficient":
            assert e["ppi"]["high"] - e["ppi"]["low"] > 0 and abs(e["ppi"]["estimate"]) < 20


# ---------------------------------------------------------------- the design file
def make_design(tmp, strategy):
    gold, _ = write_corpus(tmp / "c.csv", size=400)
    extra = ["--strategy", "active", "--target", "offensive"] if strategy == "active" else []
    assert run_script("sample", ["--corpus", "c.csv", "--n", 80, *extra]) == 0
    fill(tmp / "c.sheet.csv", gold, tmp / "s.csv")
    return json.loads((tmp / "c.design.json").read_text())


def unsealed(design):
    out = {k: v for k, v in design.items() if k != "sha256"}
    out["format"] = "annotune-sample-design/1"
    return out


def halve_pi(d):
    d["pi"] = [p / 2 for p in d["pi"]]
    d["expected_n"] = sum(d["pi"])


def add_undrawn(d):
    d["drawn"].append(next(i for i in range(400) if i not in d["drawn"]))
    d["drawn_n"] += 1


EDITS = {
    "active pi halved": ("active", halve_pi, "its active design gives"),
    "pi 0": ("uniform", lambda d: d["pi"].__setitem__(0, 0), "not in (0, 1]"),
    "pi above 1": ("uniform", lambda d: d["pi"].__setitem__(0, 1.5), "not in (0, 1]"),
    "pi null": ("uniform", lambda d: d["pi"].__setitem__(0, None), "is null, not a number"),
    "pi text": ("uniform", lambda d: d["pi"].__setitem__(0, "0.2"), "not a number"),
    "pi beyond a float": ("uniform", lambda d: d["pi"].__setitem__(0, 10 ** 400), "not a number"),
    "expected_n beyond a float": ("uniform", lambda d: d.__setitem__("expected_n", 10 ** 400), "not a number"),
    "drawn null": ("uniform", lambda d: d.__setitem__("drawn", None), "'drawn' is null, not a list"),
    "unknown id": ("uniform", lambda d: (d["drawn"].append(10 ** 6), d.__setitem__("drawn_n", d["drawn_n"] + 1)),
                   "row 1000000 is not a row of"),
    "undrawn row added": ("uniform", add_undrawn, "its phases drew 80 rows, drawn lists 81"),
    "kind missing": ("uniform", lambda d: d.pop("kind"), "kind None does not match"),
    "kind switched": ("uniform", lambda d: d.__setitem__("kind", "poisson"), "does not match strategy 'uniform'"),
    "stratify_by changed": ("uniform", lambda d: d.__setitem__("stratify_by", "source"), "strata do not match"),
    "drawn_n 0": ("uniform", lambda d: d.__setitem__("drawn_n", 0), "drawn_n is 0"),
    "strategy switched": ("uniform", lambda d: d.update(strategy="active", kind="poisson"),
                          "'uniform_share' is null, not a number"),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_an_unsealed_design_is_checked_in_full(in_tmp, capsys, case):
    strategy, edit, message = EDITS[case]
    design = unsealed(make_design(in_tmp, strategy))
    edit(design)
    (in_tmp / "old.json").write_text(json.dumps(design))
    refused(capsys, "estimate", ["--corpus", "c.csv", "--sheet", "s.csv", "--design", "old.json"], message, in_tmp)
    extra = ["--strategy", "active", "--target", "offensive"] if strategy == "active" else []
    refused(capsys, "sample", ["--corpus", "c.csv", "--add", 10, "--design", "old.json", *extra], message, in_tmp)


@pytest.mark.parametrize("strategy", ["uniform", "active"])
def test_a_sealed_design_edited_after_writing_is_refused_and_an_unsealed_one_accepted_with_a_note(
        in_tmp, capsys, strategy):
    design = make_design(in_tmp, strategy)
    assert len(design["sha256"]) == 64
    edited = dict(design, pi=[design["pi"][0] * 0.999] + design["pi"][1:])
    (in_tmp / "edited.json").write_text(json.dumps(edited, indent=1))
    refused(capsys, "estimate", ["--corpus", "c.csv", "--sheet", "s.csv", "--design", "edited.json"],
            "was changed after sample.py wrote it", in_tmp)
    (in_tmp / "old.json").write_text(json.dumps(unsealed(design)))
    capsys.readouterr()
    assert run_script("estimate", ["--corpus", "c.csv", "--sheet", "s.csv", "--design", "old.json"]) == 0
    assert "unsealed format annotune-sample-design/1: checked in full" in capsys.readouterr().err
    assert run_script("sample", ["--corpus", "c.csv", "--add", 10, "--design", "old.json"]
                      + (["--strategy", "active", "--target", "offensive"] if strategy == "active" else [])) == 0
    assert json.loads((in_tmp / "old.add10.json").read_text())["format"] == "annotune-sample-design/2"


# ---------------------------------------------------------------- outputs
def test_outputs_that_clash_or_sit_under_a_file_are_refused(in_tmp, capsys):
    gold, _ = write_corpus(in_tmp / "c.csv", size=300)
    refused(capsys, "sample", ["--corpus", "c.csv", "--n", 20, "--sheet", "x.csv", "--design", "x.csv"],
            "sheet x.csv is also the design", in_tmp)
    (in_tmp / "file.txt").write_text("mine")
    refused(capsys, "sample", ["--corpus", "c.csv", "--n", 20, "--sheet", "file.txt/s.csv"],
            "file.txt is a file, not a folder", in_tmp)
    (in_tmp / "folder").mkdir()
    refused(capsys, "sample", ["--corpus", "c.csv", "--n", 20, "--sheet", "folder"], "is a folder", in_tmp)
    assert run_script("sample", ["--corpus", "c.csv", "--n", 20]) == 0
    refused(capsys, "sample", ["--corpus", "c.csv", "--add", 5, "--design", "c.design.json", "--sheet", "n.json",
                               "--new_design", "n.json"], "is also the", in_tmp)
    fill(in_tmp / "c.sheet.csv", gold, in_tmp / "s.csv")
    refused(capsys, "estimate", ["--corpus", "c.csv", "--sheet", "s.csv", "--design", "c.design.json",
                                 "--output_dir", "file.txt/out"], "file.txt is a file, not a folder", in_tmp)
    refused(capsys, "estimate", ["--corpus", "c.csv", "--sheet", "s.csv", "--design", "c.design.json",
                                 "--output_dir", "file.txt"], "is a file", in_tmp)
