"""sample.py and estimate.py end to end on an annotated corpus as evaluate.py writes it: seeded
draws, top-ups that never redraw a row, estimates with the three intervals, and every refusal in
one line with exit status 2 and nothing written."""
import csv
import json

import numpy as np
import pytest

from conftest import run_script

LABELS = ("offensive", "not offensive")


def write_corpus(path, size=3000, seed=0, probs=True):
    """Rows as evaluate.py --predict_file writes them; returns the hidden gold labels."""
    rng = np.random.default_rng(seed)
    source = rng.choice(["reddit", "twitter", "gab"], size, p=[0.5, 0.35, 0.15])
    gold = (rng.random(size) < np.where(source == "reddit", 0.4, 0.25)).astype(int)  # 1 = offensive
    p = np.clip(0.25 + 0.5 * gold + 0.2 * rng.standard_normal(size), 0.01, 0.99)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "text", "source", "prediction"] + ([f"prob_{x}" for x in LABELS] if probs else [])
                        + ["truncated"])
        for i in range(size):
            writer.writerow([i, f"post {i}", source[i], LABELS[0] if p[i] > 0.5 else LABELS[1]]
                            + ([f"{p[i]:.6f}", f"{1 - p[i]:.6f}"] if probs else []) + [0])
    return gold, source


def fill(sheet, gold, out, blank=0):
    with open(sheet, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for k, r in enumerate(rows):
        r["label"] = "" if k < blank else LABELS[0] if gold[int(r["row"])] else LABELS[1]
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return [int(r["row"]) for r in rows]


def sheet_rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return [int(r["row"]) for r in csv.DictReader(handle)]


def test_a_uniform_draw_is_seeded_and_hides_the_prediction(in_tmp):
    write_corpus(in_tmp / "c.csv")
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        assert run_script("sample", ["--corpus", "c.csv", "--n", 150, "--seed", seed, "--sheet", f"s_{name}.csv",
                                     "--design", f"{name}.json"]) == 0
    assert sheet_rows(in_tmp / "s_a.csv") == sheet_rows(in_tmp / "s_b.csv") != sheet_rows(in_tmp / "s_c.csv")
    with open(in_tmp / "s_a.csv", newline="") as handle:
        first = next(csv.DictReader(handle))
    assert set(first) == {"row", "text", "label"} and first["label"] == ""
    design = json.loads((in_tmp / "a.json").read_text())
    assert design["kind"] == "srs" and len(design["drawn"]) == 150 == len(set(design["drawn"]))
    assert np.isclose(sum(design["pi"]), 150) and len(design["pi"]) == 3000


@pytest.mark.parametrize("strategy", ["uniform", "active"])
def test_top_ups_never_redraw_a_row_and_estimates_use_the_union(in_tmp, strategy):
    gold, _ = write_corpus(in_tmp / "c.csv")
    extra = ["--strategy", "active", "--target", "offensive"] if strategy == "active" else []
    assert run_script("sample", ["--corpus", "c.csv", "--n", 150, *extra]) == 0
    assert run_script("sample", ["--corpus", "c.csv", "--add", 100, "--design", "c.design.json", *extra]) == 0
    first, added = sheet_rows(in_tmp / "c.sheet.csv"), sheet_rows(in_tmp / "c.design.add100.sheet.csv")
    assert not set(first) & set(added)
    union = json.loads((in_tmp / "c.design.add100.json").read_text())
    assert union["drawn"] == first + added if strategy == "uniform" else set(union["drawn"]) == set(first + added)
    old = json.loads((in_tmp / "c.design.json").read_text())
    assert np.all(np.array(union["pi"]) >= np.array(old["pi"]) - 1e-12)
    if strategy == "uniform":
        assert len(added) == 100 and np.allclose(union["pi"], 250 / 3000)
    else:
        assert union["kind"] == "poisson" and np.isclose(sum(union["pi"]), 250, atol=1e-6)
    fill(in_tmp / "c.sheet.csv", gold, in_tmp / "s1.csv")
    fill(in_tmp / "c.design.add100.sheet.csv", gold, in_tmp / "s2.csv")
    assert run_script("estimate", ["--corpus", "c.csv", "--sheet", "s1.csv", "s2.csv", "--design",
                                   "c.design.add100.json", "--output_dir", "est"]) == 0
    result = json.loads((in_tmp / "est" / "estimates.json").read_text())
    assert result["labelled"] == len(first) + len(added)


def test_estimates_by_group_and_regression_with_a_plan(in_tmp, capsys):
    gold, source = write_corpus(in_tmp / "c.csv", size=4000, seed=3)
    assert run_script("sample", ["--corpus", "c.csv", "--n", 400, "--stratify_by", "source", "--seed", 5]) == 0
    fill(in_tmp / "c.sheet.csv", gold, in_tmp / "done.csv", blank=7)
    capsys.readouterr()
    assert run_script("estimate", ["--corpus", "c.csv", "--sheet", "done.csv", "--design", "c.design.json",
                                   "--by", "source", "--regress", "offensive", "--on", "source",
                                   "--plan", 0.02]) == 0
    err = capsys.readouterr().err
    assert "7 drawn rows have no human label" in err and "missing at random" in err
    folder = in_tmp / "c.estimates"
    assert {p.name for p in folder.iterdir()} == {"estimates.json", "estimates.md", "forest.png"}
    result = json.loads((folder / "estimates.json").read_text())
    assert result["labelled"] == 393 and result["unlabelled_dropped"] == 7
    rows = {e["quantity"]["kind"] + ":" + e["quantity"]["label"] + ":" + e["quantity"]["group"] + e["quantity"]["term"]: e
            for e in result["estimates"]}
    overall = rows["share:offensive:"]
    truth = gold.mean()
    assert overall["classical"]["low"] < overall["classical"]["high"]
    assert overall["ppi"]["high"] - overall["ppi"]["low"] < overall["classical"]["high"] - overall["classical"]["low"]
    assert overall["ppi"]["low"] <= truth <= overall["ppi"]["high"]
    assert overall["effective_n"] > 393
    assert overall["plan"]["ppi"] < overall["plan"]["classical"]
    assert "difference:offensive:reddit - twitter" in rows
    assert any(k.startswith("coefficient:offensive:source=twitter") for k in rows)
    for kind in ("share:offensive:reddit", "share:offensive:gab"):
        assert {"naive", "classical", "ppi"} <= set(rows[kind])
    md = (folder / "estimates.md").read_text()
    assert "| share of offensive |" in md and "plan:" in md
    # The same command again: refused, the results left as they were.
    before = (folder / "estimates.json").read_bytes()
    assert run_script("estimate", ["--corpus", "c.csv", "--sheet", "done.csv", "--design", "c.design.json"]) == 2
    assert (folder / "estimates.json").read_bytes() == before


def refused(capsys, script, argv, message, folder):
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    capsys.readouterr()
    assert run_script(script, argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("argv,message", [
    (["--n", 5000], "more rows than the corpus has"),
    (["--n", 100, "--strategy", "active", "--corpus", "plain.csv"], "needs the model's probabilities"),
    (["--n", 6, "--stratify_by", "source"], "stratum 'gab'"),
    (["--n", 10, "--stratify_by", "nowhere"], "no such column"),
    (["--n", 10, "--strategy", "active", "--target", "spam"], "'spam' is not a label"),
    (["--n", 10, "--text_column", "body"], "--text_column body"),
    (["--add", 10, "--design", "c.design.json", "--strategy", "active"], "keeps the design's strategy"),
    (["--n", 10], "already exists"),
    (["--n", 10, "--sheet", "c.csv", "--design", "other.json"], "is the input c.csv"),
])
def test_sample_refusals(in_tmp, capsys, argv, message):
    write_corpus(in_tmp / "c.csv", size=300)
    write_corpus(in_tmp / "plain.csv", size=300, probs=False)
    assert run_script("sample", ["--corpus", "c.csv", "--n", 20]) == 0
    full = (["--corpus", "c.csv"] if "--corpus" not in argv else []) + argv
    if "already exists" not in message and "--add" not in argv and "--sheet" not in argv:
        full += ["--sheet", "new.csv", "--design", "new.json"]
    refused(capsys, "sample", full, message, in_tmp)


@pytest.mark.parametrize("case,message", [
    ("foreign_row", "was not drawn by"),
    ("unknown_label", "'spam' is not a label"),
    ("edited_corpus", "drawn from another corpus file"),
    ("twice", "labelled twice"),
    ("not_a_design", "not a design file"),
])
def test_estimate_refusals(in_tmp, capsys, case, message):
    gold, _ = write_corpus(in_tmp / "c.csv", size=500)
    assert run_script("sample", ["--corpus", "c.csv", "--n", 50]) == 0
    rows = fill(in_tmp / "c.sheet.csv", gold, in_tmp / "done.csv")
    text = (in_tmp / "done.csv").read_text()
    design = "c.design.json"
    if case == "foreign_row":
        other = next(i for i in range(500) if i not in rows)
        text = text.replace(f"\n{rows[0]},", f"\n{other},", 1)
    elif case == "unknown_label":
        text = text.replace(",offensive\n", ",spam\n", 1).replace(",not offensive\n", ",spam\n", 1)
    elif case == "edited_corpus":
        (in_tmp / "c.csv").write_text((in_tmp / "c.csv").read_text().replace("post 3,", "post three,"))
    elif case == "twice":
        text += text.splitlines()[1] + "\n"
    else:
        (in_tmp / "bad.json").write_text("[1, 2]")
        design = "bad.json"
    (in_tmp / "done.csv").write_text(text)
    refused(capsys, "estimate", ["--corpus", "c.csv", "--sheet", "done.csv", "--design", design], message, in_tmp)
    assert not (in_tmp / "c.estimates").exists()


def test_a_stratum_left_without_labels_is_refused(in_tmp, capsys):
    gold, source = write_corpus(in_tmp / "c.csv", size=600)
    assert run_script("sample", ["--corpus", "c.csv", "--n", 60, "--stratify_by", "source"]) == 0
    fill(in_tmp / "c.sheet.csv", gold, in_tmp / "done.csv")
    with open(in_tmp / "done.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for r in rows:
        if source[int(r["row"])] == "gab":
            r["label"] = ""
    with open(in_tmp / "done.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    refused(capsys, "estimate", ["--corpus", "c.csv", "--sheet", "done.csv", "--design", "c.design.json"],
            "stratum 'gab' of source has fewer than 2 labelled rows", in_tmp)
