"""Few-shot rows (evaluate.py --few_shot K): examples from the training split only, rendered as
earlier turns where a template has them and inline where it has none, held in the prompts' shared
prefix, and reported beside the zero-shot base."""
import json

import pytest

from conftest import run_script

SHOTS = [{"id": "a", "text": "guns are great", "label": "polarized"},
         {"id": "b", "text": "let us talk calmly", "label": "unpolarized"}]


def prompter(template, tokenizer, shots=SHOTS):
    from annotune.data.prompts import Prompter
    from annotune.data.task import load_task

    return Prompter(load_task("politosphere", "pol_unpol_oth"), template, True, tokenizer, shots=shots)


@pytest.mark.parametrize("template", ["chat", "llama2-chat", "alpaca"])
def test_shots_come_before_the_text_in_every_template_and_share_the_prefix(template, smol_tok):
    from annotune.model.lm import common_prefix_length

    plain, shown = prompter(template, smol_tok, ()), prompter(template, smol_tok)
    text = "an oath to the constitution"
    prompt = shown.prompt(text)
    # Each example's text and answer, in order, before the text; the zero-shot prompt's system part kept.
    at = [prompt.index(shown.user_text(s["text"])) for s in SHOTS] + [prompt.rindex(shown.user_text(text))]
    assert at == sorted(at) and all(prompt.index(s["label"], a) < b for s, a, b in zip(SHOTS, at, at[1:]))
    assert plain.system_text() in prompt and plain.prompt(text) != prompt
    if template == "llama2-chat":  # earlier turns closed by EOS and a new BOS, as Llama-2's chat format has them
        assert prompt.count("[INST]") == 3 and f"{SHOTS[0]['label']} {smol_tok.eos_token}{smol_tok.bos_token}[INST]" in prompt
    if template == "chat":
        assert prompt.count("<|im_start|>assistant") == 3  # two answered turns, then the generation prompt
    # Every prompt holds the examples in the part they share (run once per batch).
    ids = [smol_tok(shown.prompt(t))["input_ids"] for t in ("one text", "another quite different text")]
    last_answer = smol_tok(prompt[: prompt.rindex(shown.user_text(text))])["input_ids"]
    assert common_prefix_length(ids) >= len(last_answer) - 2


def test_a_template_without_turns_or_examples_refuses_shots(smol_tok):
    from annotune.base.cli import UserError

    with pytest.raises(UserError, match="no way to show examples"):
        prompter("seq2seq", smol_tok)


def test_selectors_take_training_rows_seeded_and_stratified_never_an_evaluated_one():
    from annotune.base.cli import UserError
    from annotune.labelling.shots import choose_shots

    rows = [{"id": f"r{i}", "text": f"t{i}", "label": label}
            for i, label in enumerate(["x"] * 30 + ["y"] * 6 + ["z"] * 2)]
    strat = choose_shots(rows, 6, "stratified", ["x", "y", "z"], seed=1)
    assert [s["label"] for s in strat] == ["x", "y", "z", "x", "y", "z"]
    assert choose_shots(rows, 6, "stratified", ["x", "y", "z"], seed=1) == strat
    assert choose_shots(rows, 6, "stratified", ["x", "y", "z"], seed=2) != strat
    seven = choose_shots(rows, 7, "stratified", ["x", "y", "z"], seed=1)  # z has 2 rows: the others fill in
    assert sorted(s["label"] for s in seven).count("z") == 2 and len({s["id"] for s in seven}) == 7
    fixed = choose_shots(rows, 5, "fixed", ["x", "y", "z"], seed=3)
    assert fixed == choose_shots(rows, 5, "fixed", ["x", "y", "z"], seed=3) and len({s["id"] for s in fixed}) == 5
    with pytest.raises(UserError, match="the training split has 38 rows"):
        choose_shots(rows, 39, "fixed", ["x", "y", "z"], seed=0)
    with pytest.raises(UserError, match="both an example and a row evaluated"):
        choose_shots(rows, 38, "fixed", ["x", "y", "z"], seed=0, evaluated_ids=["r5"])


def test_similar_examples_are_each_texts_nearest_training_rows_the_nearest_last():
    import numpy as np

    from annotune.labelling.shots import _similar

    vectors = {"cat": [1, 0, 0], "kitten": [0.9, 0.1, 0], "dog": [0, 1, 0], "puppy": [0.1, 0.9, 0], "car": [0, 0, 1],
               "a small cat": [0.95, 0.05, 0], "a young dog": [0.05, 0.95, 0]}

    def fake_embed(texts):
        v = np.array([vectors[t] for t in texts], dtype=float)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    rows = [{"id": t, "text": t, "label": t} for t in ("cat", "kitten", "dog", "puppy", "car")]
    picked = _similar(rows, 2, [], 0, ["a small cat", "a young dog"], embed_fn=fake_embed)
    assert [[r["id"] for r in shots] for shots in picked] == [["kitten", "cat"], ["puppy", "dog"]]


def test_examples_are_lowered_for_every_row_before_a_text_is_cut():
    from annotune.labelling.shots import shots_that_fit

    def tokens(shots, text):  # 10 tokens an example, a token a character of the text
        return 10 * len(shots) + len(text)

    shots = [{"id": str(i)} for i in range(8)]
    texts = ["x" * 20, "x" * 35, "x" * 500]  # the 500-character text is cut whatever k is: it lowers nothing
    assert [s["id"] for s in shots_that_fit(shots, tokens, texts, limit=100)] == [str(i) for i in range(6)]
    assert len(shots_that_fit(shots, tokens, texts, limit=1000)) == 8
    assert shots_that_fit(shots, tokens, ["x" * 99], limit=100) == []


def test_the_few_shot_base_is_a_row_beside_the_zero_shot_one(in_tmp, pol_run, capsys, monkeypatch):
    from annotune.labelling.annotator import Annotator
    from annotune.labelling.contract import from_adapters

    scored = {}  # every prompt each model scored (a dataset folder's rows bring their own zero-shot prompts)
    fit_prompts = Annotator.fit_prompts

    def recording(self, rows, reserve):
        prompts, cut = fit_prompts(self, rows, reserve)
        scored.setdefault(self.name, []).extend(prompts)
        return prompts, cut

    monkeypatch.setattr(Annotator, "fit_prompts", recording)

    assert run_script("evaluate", ["--adapters_name", pol_run[-1], "--base_only", "--few_shot", 3, "--shot_selector",
                                   "stratified,fixed,similar", "--output_dir", "fs", "--quiet", "--bootstrap", 20,
                                   "--max_samples", 12]) == 0
    folders = sorted(p.name for p in (in_tmp / "fs").iterdir() if p.is_dir())
    shot_folder = next(f for f in folders if "3-shot_stratified" in f)
    metrics = json.loads((in_tmp / "fs" / shot_folder / "validation" / "metrics.json").read_text())
    splits = from_adapters([pol_run[-1]]).splits
    train_ids, validation_ids = {r["id"] for r in splits["train"]}, {r["id"] for r in splits["validation"]}
    shot_ids = {s["id"] for s in metrics["shots"]}
    assert len(shot_ids) == 3 and shot_ids <= train_ids and not shot_ids & validation_ids
    assert len({s["label"] for s in metrics["shots"]}) == 3  # stratified over pol / unpol / oth
    # One row per (k, selector) asked, each paired with the zero-shot base and with the tuned adapter.
    fixed = json.loads((in_tmp / "fs" / next(f for f in folders if "3-shot_fixed" in f) / "validation" /
                        "metrics.json").read_text())
    assert fixed["shots_used"] == 3 and {s["id"] for s in fixed["shots"]} <= train_ids
    for m in (metrics, fixed):
        assert m["vs_base"]["reference"].startswith("base:") and "shot" not in m["vs_base"]["reference"]
        assert m["vs_first_adapter"]["reference"] == pol_run[-1].name and "ci95" in m["vs_first_adapter"]["macro_f1"]
    def probs(folder):
        rows = (in_tmp / "fs" / folder / "validation" / "predictions.jsonl").read_text().splitlines()
        return {json.loads(r)["id"]: json.loads(r)["probs"] for r in rows}

    zero_folder = next(f for f in folders if f.startswith("base_") and "shot" not in f)
    assert probs(shot_folder).keys() == probs(zero_folder).keys()
    shot_name = next(name for name in scored if "3-shot" in name)
    zero_name = next(name for name in scored if name.startswith("base:") and "shot" not in name)
    examples = [s["text"] for s in metrics["shots"]]
    assert all(all(t in p for t in examples) for p in scored[shot_name])  # every prompt scored shows them
    assert not any(any(t in p for t in examples) for p in scored[zero_name])
    comparison = (in_tmp / "fs" / "comparison.md").read_text()
    assert "3-shot stratified" in comparison and "base:" in comparison
    for bad in (["--few_shot", 3], ["--base_only", "--few_shot", -1], ["--base_only", "--few_shot", "2,x"],
                ["--base_only", "--few_shot", 2, "--shot_selector", "fixed,nearest"]):  # the base's; counts; names
        with pytest.raises(SystemExit) as stop:
            run_script("evaluate", ["--adapters_name", pol_run[-1], *bad, "--output_dir", "x"])
        assert stop.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    assert run_script("evaluate", ["--adapters_name", pol_run[-1], "--base_only", "--few_shot", 500,
                                   "--output_dir", "y", "--quiet"]) == 2
    assert "the training split has" in capsys.readouterr().err
    # More examples than fit beside the longest texts (2,048 tokens): fewer for every row, recorded.
    assert run_script("evaluate", ["--adapters_name", pol_run[-1], "--base_only", "--few_shot", 80, "--output_dir",
                                   "many", "--quiet", "--bootstrap", 10, "--max_samples", 6, "--baseline", "none"]) == 0
    many = json.loads(next((in_tmp / "many").glob("*80-shot*/validation/metrics.json")).read_text())
    assert many["shots_asked"] == 80 and 0 < many["shots_used"] < 80 == many["shots_asked"]
    assert not any(p.get("truncated") for p in map(json.loads, next((in_tmp / "many").glob(
        "*80-shot*/validation/predictions.jsonl")).read_text().splitlines()))
    assert f"every row gets {many['shots_used']}" in capsys.readouterr().out
    # Similar examples (the first run's third row): each row its own nearest training rows (MiniLM),
    # none an evaluated row.
    similar = json.loads(next((in_tmp / "fs").glob("*3-shot_similar/validation/metrics.json")).read_text())
    assert similar["shots_used"] == 3 and similar["n"] == 12 and similar["shot_selector"] == "similar"
    assert set(similar["example_ids"]) <= train_ids and not set(similar["example_ids"]) & validation_ids

