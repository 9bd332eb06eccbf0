"""demo.py end to end on a tiny model: its own defaults must make a valid train.py and evaluate.py
command line (a range check on --max_train_samples once broke `make demo` without any test noticing)."""
import json

from conftest import run_script


def test_the_demo_runs_with_its_defaults_and_writes_the_comparison(in_tmp, tiny_llama_dir):
    assert run_script("demo", ["--model_name", tiny_llama_dir, "--epochs", 1, "--test_samples", 8,
                               "--coverage_draws", 20, "--output_dir", "d"]) == 0
    train = json.loads((in_tmp / "d" / "train" / "manifest.json").read_text())
    assert train["args"]["max_train_samples"] is None  # the default 0 = every training row
    assert train["args"]["balance"] == "oversample"  # train.py's default for classification
    comparison = (in_tmp / "d" / "eval" / "comparison.md").read_text().lower()
    for row in ("baseline: majority", "baseline: tf-idf", "base:", "-epoch1 (argmax)"):
        assert row in comparison
    # Step 4: the test rows as a corpus, labelled, sampled, estimated, beside the truth of those rows.
    from datasets import load_from_disk

    test = load_from_disk(str(in_tmp / "d" / "dataset"))["test"]
    names = getattr(test.features["label"], "names", None)
    corpus_gold = [names[r["label"]] if names else r["label"] for r in test][:8]
    labelled = (in_tmp / "d" / "corpus" / "reviews.labeled.csv").read_text().splitlines()
    assert len(labelled) == 9 and labelled[0].startswith("row,id,text,prediction,prob_")
    estimates = json.loads((in_tmp / "d" / "corpus" / "estimates" / "estimates.json").read_text())
    assert estimates["corpus_rows"] == 8 and estimates["labelled"] == 4 and estimates["alpha"] == 0.05
    table = (in_tmp / "d" / "corpus_estimate.md").read_text().splitlines()
    assert table[2] == ("| label | naive (model's labels as gold) | classical (human sample alone) | prediction-powered "
                        "| true share |")
    shares = {line.split("|")[1].strip(): float(line.split("|")[5]) for line in table[4:7]}
    assert set(shares) == {"negative", "neutral", "positive"}
    for label, share in shares.items():  # from the gold labels of the 8 corpus rows only
        assert share == round(sum(g == label for g in corpus_gold) / 8, 3)
    assert table[8].startswith("Over 20 seeded draws of 4 human labels")
    for line in table[12:15]:  # every label's coverage over the draws, a rate for classical and ppi
        cells = [c.strip() for c in line.split("|")[1:-1]]
        assert cells[1] in ("holds", "misses") and all(0 <= float(c[:-1]) <= 100 for c in cells[2:])


def test_the_demo_table_marks_each_interval_against_the_true_share(tmp_path):
    import demo

    est = {"corpus_rows": 4, "labelled": 2, "estimates": [
        {"quantity": {"kind": "share", "label": "pos", "group": "", "term": ""},
         "naive": {"estimate": 0.9, "low": 0.8, "high": 0.95}, "classical": {"estimate": 0.5, "low": 0.1, "high": 0.9},
         "ppi": {"estimate": 0.7, "low": 0.6, "high": 0.8}},
        {"quantity": {"kind": "share", "label": "pos", "group": "g", "term": ""},
         "naive": {}, "classical": {}, "ppi": {}}]}
    (tmp_path / "e.json").write_text(json.dumps(est))
    table = demo.estimate_table(tmp_path / "e.json", {"a": "pos", "b": "pos", "c": "neg", "d": "pos"})
    row = table.splitlines()[-1]
    assert row == "| pos | 0.900 [0.800, 0.950] misses | 0.500 [0.100, 0.900] holds | 0.700 [0.600, 0.800] holds | 0.750 |"
