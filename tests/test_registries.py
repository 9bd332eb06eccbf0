"""Each registry is the one place its kind is added: an estimator registered in
estimators.ESTIMATORS alone, a sampling design in designs.DESIGNS alone, a table format in
tables.TABLE_FORMATS alone and a prompt template in prompts.py alone reach every script and output
that uses their kind, with no other file touched (the tests patch the registry and nothing else)."""
import json

import numpy as np
import pytest

from conftest import run_script
from test_estimates import LABELS, fill, write_corpus

TOY_COLOUR = "#00c000"  # no registered estimator draws in it


def test_an_estimator_registered_alone_reaches_estimates_json_md_and_the_forest_plot(in_tmp, monkeypatch):
    """The toy estimator is PPI with the model's outputs on the labelled rows replaced by others
    (as cross-fitting's out-of-fold predictions are): the registry entry alone must carry that."""
    import matplotlib.image

    from annotune.estimation import estimators, inference
    from annotune.base.cli import Parameter

    def fit(inputs):
        f = inputs.outputs.values("probs")[:, inputs.label]
        shift = inputs.options["toy_shift"]
        return inference.estimate(inputs.x, f, inputs.sample, inputs.y, inputs.link, "ppi",
                                  census=inputs.census("probs", f), f_sample=np.clip(f[inputs.sample.rows] + shift, 0, 1))

    toy = estimators.Estimator("outoffold", "ppi with other predictions on the labelled rows", TOY_COLOUR, True, fit,
                               (Parameter("toy_shift", 0.0, "added to the labelled rows' outputs", type=float),))
    monkeypatch.setattr(estimators, "ESTIMATORS", estimators.ESTIMATORS + (toy,))
    gold, _ = write_corpus(in_tmp / "c.csv", size=1500)
    assert run_script("sample", ["--corpus", "c.csv", "--n", 120]) == 0
    rows = fill(in_tmp / "c.sheet.csv", gold, in_tmp / "done.csv")
    assert run_script("estimate", ["--corpus", "c.csv", "--sheet", "done.csv", "--design", "c.design.json",
                                   "--by", "source", "--toy_shift", 0.2]) == 0
    out = json.loads((in_tmp / "c.estimates" / "estimates.json").read_text())
    assert out["options"]["toy_shift"] == 0.2
    share = next(e for e in out["estimates"] if e["quantity"]["kind"] == "share" and not e["quantity"]["group"]
                 and e["quantity"]["label"] == LABELS[0])
    toy_entry, ppi_entry = share["outoffold"], share["ppi"]
    assert toy_entry["low"] < toy_entry["estimate"] < toy_entry["high"] and toy_entry["labelled"] == len(rows)
    # By hand: the same estimator on the same rows, and not ppi's (the labelled rows' outputs differ).
    from annotune.estimation.annotated import read_corpus

    corpus = read_corpus(str(in_tmp / "c.csv"))
    positions = np.sort(corpus.positions(rows, "sheet"))
    sample = inference.Sample(positions, np.full(len(positions), len(positions) / corpus.size), "srs", corpus.size)
    f = corpus.probs[:, 0]
    y = np.array([1.0 if gold[corpus.ids[i]] else 0.0 for i in positions])
    by_hand = inference.estimate(np.ones((corpus.size, 1)), f, sample, y, f_sample=np.clip(f[positions] + 0.2, 0, 1))
    assert toy_entry["estimate"] == pytest.approx(float(by_hand.value[0]), abs=1e-9)
    assert abs(toy_entry["estimate"] - ppi_entry["estimate"]) > 1e-4
    difference = next(e for e in out["estimates"] if e["quantity"]["kind"] == "difference")
    assert difference["outoffold"]["estimate"] is not None
    table = (in_tmp / "c.estimates" / "estimates.md").read_text()
    assert "| quantity | naive | classical | ppi | outoffold |" in table and "outoffold: ppi with other" in table
    image = matplotlib.image.imread(str(in_tmp / "c.estimates" / "forest.png"))[..., :3]
    toy_pixels = np.all(np.abs(image - np.array([0, 0xc0, 0]) / 255) < 0.02, axis=-1).sum()
    assert toy_pixels > 50  # its points, bars and legend entry


def test_a_design_registered_alone_is_drawn_by_sample_and_estimated_with_its_variance(in_tmp, monkeypatch):
    """A Bernoulli design (every row with the same pi = n/N, drawn independently) with its own
    variance function and parameter: sample.py draws it, the design file is checked against it,
    estimate.py's intervals use its variance."""
    from annotune.estimation import designs, inference
    from annotune.base.cli import Parameter

    calls = []

    def variance(sample, d):
        calls.append(len(d))
        return inference.poisson_cov(sample, d)

    def inclusion(corpus, n, strata, settings):
        return np.full(corpus.size, n * settings["toy_scale"] / corpus.size), np.array([n])

    def replay(corpus, design, strata, drawn, where):
        return np.full(corpus.size, design["phases"][0]["requested"] * design["toy_scale"] / corpus.size)

    toy = designs.SamplingDesign(
        "bernoulli", "bernoulli", "every row with the same probability", inclusion,
        lambda pi, strata, per, already, old, rng: np.flatnonzero((rng.random(len(pi)) < pi) & ~already),
        lambda pi, strata, drawn: pi, replay,
        lambda rows, design, corpus, strata: inference.Sample(rows, np.array(design["pi"])[rows], "poisson",
                                                              corpus.size),
        variance, inference.plan_n, (Parameter("toy_scale", 1.0, "pi times this", type=float, low=0.1, high=1.0),))
    monkeypatch.setattr(designs, "DESIGNS", designs.DESIGNS + (toy,))
    gold, _ = write_corpus(in_tmp / "c.csv", size=1500)
    assert run_script("sample", ["--corpus", "c.csv", "--n", 150, "--strategy", "bernoulli", "--toy_scale", 0.8]) == 0
    design = json.loads((in_tmp / "c.design.json").read_text())
    assert design["strategy"] == "bernoulli" and design["kind"] == "bernoulli" and design["toy_scale"] == 0.8
    assert np.allclose(design["pi"], 150 * 0.8 / 1500) and 80 < design["drawn_n"] < 160
    fill(in_tmp / "c.sheet.csv", gold, in_tmp / "done.csv")
    assert run_script("estimate", ["--corpus", "c.csv", "--sheet", "done.csv", "--design", "c.design.json"]) == 0
    assert calls  # the intervals came from its variance
    out = json.loads((in_tmp / "c.estimates" / "estimates.json").read_text())
    assert out["strategy"] == "bernoulli" and out["labelled"] == design["drawn_n"]
    # Its parameter's declared range is checked by sample.py.
    with pytest.raises(SystemExit) as stop:
        run_script("sample", ["--corpus", "c.csv", "--n", 150, "--strategy", "bernoulli", "--toy_scale", 5,
                              "--design", "x.json", "--sheet", "x.csv"])
    assert stop.value.code == 2 and not (in_tmp / "x.json").exists()


def test_a_table_format_registered_alone_is_read_as_a_corpus_and_a_sheet_and_written_as_a_sheet(in_tmp, monkeypatch):
    """A pipe-separated format: the corpus in it is sampled, the sheet is written in it, and the
    filled sheet in it is read by estimate.py."""
    from annotune.base import tables

    pipe = tables.TableFormat("psv", (".psv",), lambda handle, path, columns: tables._csv_rows(handle, path, "|", columns),
                              tables._delimited_text("|"))
    monkeypatch.setattr(tables, "TABLE_FORMATS", tables.TABLE_FORMATS + (pipe,))
    gold, _ = write_corpus(in_tmp / "c.csv", size=600)
    (in_tmp / "c.psv").write_text((in_tmp / "c.csv").read_text().replace(",", "|"))
    assert run_script("sample", ["--corpus", "c.psv", "--n", 80, "--sheet", "s.psv", "--design", "d.json"]) == 0
    sheet = (in_tmp / "s.psv").read_text().splitlines()
    assert sheet[0] == "row|text|label" and len(sheet) == 81
    filled = [sheet[0]] + [f"{line}{LABELS[0] if gold[int(line.split('|')[0])] else LABELS[1]}" for line in sheet[1:]]
    (in_tmp / "done.psv").write_text("\n".join(filled) + "\n")
    assert run_script("estimate", ["--corpus", "c.psv", "--sheet", "done.psv", "--design", "d.json"]) == 0
    out = json.loads((in_tmp / "c.estimates" / "estimates.json").read_text())
    assert out["labelled"] == 80 and out["corpus_rows"] == 600


def test_a_prompt_template_registered_alone_is_accepted_by_preprocess_and_train(in_tmp, monkeypatch, tiny_llama_dir):
    from annotune.data import prompts

    plain = prompts.PromptTemplate("plain", lambda prompter, system, user: f"{system}\n\nText: {user}\nAnswer:",
                                   answer_prefix=" ")
    monkeypatch.setattr(prompts, "TEMPLATES", prompts.TEMPLATES + (plain,))
    assert run_script("preprocess", ["--task", "politosphere", "--template", "plain", "--output_dir", "ds"]) == 0
    from annotune.data.examples import load_dataset_folder

    rows, _, _ = load_dataset_folder(str(in_tmp / "ds"))
    first = rows["train"][0]
    assert "\n\nText: " in first["prompt"] and first["prompt"].endswith("\nAnswer:") and first["text"] in first["prompt"]
    assert first["completion"] == f" {first['label']}"
    assert run_script("train", ["--task", "politosphere", "--template", "plain", "--model_name", tiny_llama_dir,
                                "--max_train_samples", 16, "--max_eval_samples", 8, "--epoch", 1, "--quiet",
                                "--output_dir", "run"]) == 0
    record = json.loads(next((in_tmp / "run").glob("*/annotune.json")).read_text())
    assert record["prompt"]["template"] == "plain"


def test_a_corpus_labelled_into_jsonl_is_sampled_into_a_tsv_sheet_and_estimated(in_tmp, pol_run):
    """The registered formats end to end: evaluate.py writes the labelled corpus as JSON Lines (in
    parts, resumably), sample.py reads it and writes a TSV sheet, estimate.py reads both; a JSON
    list (not written in parts) is refused as a labelled output in one line."""
    posts = in_tmp / "posts.csv"
    posts.write_text("text\n" + "".join(f"post number {i} about guns\n" for i in range(40)))
    label = ["--adapters_name", pol_run[-1], "--predict_file", posts, "--quiet"]
    assert run_script("evaluate", label + ["--output", "bad.json"]) == 2
    assert run_script("evaluate", label + ["--output", "out.jsonl", "--chunk_rows", 16]) == 0
    rows = [json.loads(line) for line in (in_tmp / "out.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rows] == list(range(40)) and all("prediction" in r for r in rows)
    assert run_script("sample", ["--corpus", "out.jsonl", "--n", 20, "--sheet", "s.tsv"]) == 0
    lines = (in_tmp / "s.tsv").read_text().splitlines()
    assert lines[0] == "row\ttext\tlabel" and len(lines) == 21
    labels = sorted({r["prediction"] for r in rows})
    (in_tmp / "done.tsv").write_text("\n".join([lines[0]] + [f"{line}{labels[k % len(labels)]}"
                                                             for k, line in enumerate(lines[1:])]) + "\n")
    assert run_script("estimate", ["--corpus", "out.jsonl", "--sheet", "done.tsv", "--design", "out.design.json"]) == 0
    assert json.loads((in_tmp / "out.estimates" / "estimates.json").read_text())["labelled"] == 20


def test_a_gzipped_corpus_is_read_and_a_table_is_never_written_compressed(in_tmp):
    import gzip

    gold, _ = write_corpus(in_tmp / "c.csv", size=300)
    with open(in_tmp / "c.csv", "rb") as plain, gzip.open(in_tmp / "c.csv.gz", "wb") as packed:
        packed.write(plain.read())
    assert run_script("sample", ["--corpus", "c.csv.gz", "--n", 30, "--sheet", "s.csv", "--design", "d.json"]) == 0
    assert len((in_tmp / "s.csv").read_text().splitlines()) == 31
    assert run_script("sample", ["--corpus", "c.csv.gz", "--n", 30, "--sheet", "s2.csv.gz", "--design", "d2.json"]) == 2
    assert not (in_tmp / "s2.csv.gz").exists() and not (in_tmp / "d2.json").exists()
