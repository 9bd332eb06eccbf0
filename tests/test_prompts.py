"""Prompt rendering and tokenisation shared by training and evaluation."""
import pytest
from transformers import AutoTokenizer

from annotune.model.models import resolve_model_path
from annotune.data.prompts import (Prompter, encode_completion, encode_example, encode_label_after, encode_prompt,
                              quoted_list)
from annotune.data.task import load_task


def test_llama2_chat_layout_matches_the_politosphere_template_without_literal_bos():
    spec = load_task("politosphere", "pol_unpol_oth")
    prompter = Prompter(spec, "llama2-chat", with_definitions=True)
    prompt = prompter.prompt("guns are great")
    assert prompt.startswith("[INST] <<SYS>>\nYou are a sentence sentiment polarity classification assistant")
    assert "\n<</SYS>>\n\nSentence: guns are great\nUser label: [/INST]" in prompt
    assert "- polarized: antagonizing" in prompt  # definitions on
    assert "'polarized', 'unpolarized' or 'other'" in prompt
    assert "<s>" not in prompt  # BOS is a token added once at tokenisation, never text
    assert prompter.completion("polarized") == " polarized"
    bare = Prompter(spec, "llama2-chat", with_definitions=False).prompt("x")
    assert "antagonizing" not in bare and "'polarized', 'unpolarized' or 'other'" in bare


def test_merge_can_override_the_system_prompt():
    spec = load_task("politosphere", "supp_anti_oth")
    assert "political tendency" in Prompter(spec, "llama2-chat").prompt("x")


def test_alpaca_chat_and_seq2seq_templates(smol_tok):
    spec = load_task("sst2")
    alpaca = Prompter(spec, "alpaca").prompt("good film")
    assert "### Instruction:\n" in alpaca and "### Input:\nSentence: good film" in alpaca
    assert alpaca.endswith("### Response:\n")
    chat = Prompter(spec, "auto", tokenizer=smol_tok)
    assert chat.template == "chat"
    rendered = chat.prompt("good film")
    assert rendered.startswith("<|im_start|>system\n") and rendered.endswith("<|im_start|>assistant\n")
    summary = Prompter(load_task("dialogsum"), "auto", is_seq2seq=True)
    assert summary.template == "seq2seq" and summary.prompt("A: hi").startswith("summarize: Dialogue:\nA: hi")


def test_the_shared_prefix_trained_once_is_the_system_prompt_and_stops_before_the_answer(smol_tok):
    from annotune.training.trainer import shared_prefix_ids
    from annotune.training.training_set import build_features

    prompter = Prompter(load_task("politosphere"), "llama2-chat", tokenizer=smol_tok)
    rows = [dict(prompter.render({"text": t, "label": "Neutral"}), id=str(i)) for i, t in enumerate(["xylophone", "a b"])]
    feats, _ = build_features("causal", smol_tok, rows, None, 1024)
    ids = shared_prefix_ids("causal", feats, "auto")
    assert "Definitions of the labels" in smol_tok.decode(ids) and "xylophone" not in smol_tok.decode(ids)
    for f in feats:
        assert f["input_ids"][:len(ids)] == ids and set(f["labels"][:len(ids)]) == {-100}
    assert shared_prefix_ids("causal", feats, "off") == [] and shared_prefix_ids("classifier", feats, "on") == []


def test_a_long_training_example_is_cut_from_the_end_keeping_its_whole_answer(smol_tok):
    from annotune.training.training_set import build_features

    prompter = Prompter(load_task("sst2"), "chat", tokenizer=smol_tok)
    long_text = "the film opens well " + " ".join(f"word{i}" for i in range(300)) + " but the ending is terrible"
    rows = [dict(prompter.render({"text": t, "label": "negative"}), id=str(i), text=t, label="negative")
            for i, t in enumerate(["a dull film", long_text])]
    limit = len(encode_example(smol_tok, rows[0]["prompt"], rows[0]["completion"])["input_ids"]) + 60
    feats, counts = build_features("causal", smol_tok, rows, ["negative", "positive"], limit, prompter=prompter)
    assert counts == {"dropped_too_long": 0, "cut_to_fit": 1, "truncated": 0} and [f["id"] for f in feats] == ["0", "1"]
    short, cut = feats
    assert short["input_ids"] == encode_example(smol_tok, rows[0]["prompt"], rows[0]["completion"])["input_ids"]
    assert limit - 12 <= len(cut["input_ids"]) <= limit  # cut to fit, not far below it
    n = cut["labels"].count(-100)
    assert smol_tok.decode(cut["input_ids"][n:-1]) == "negative" and cut["input_ids"][-1] == smol_tok.eos_token_id
    shown = smol_tok.decode(cut["input_ids"][:n])
    assert "the film opens well word0" in shown and "terrible" not in shown  # the beginning is kept
    assert shown.endswith("<|im_start|>assistant\n")  # the template still closes the turn
    # --long_examples drop, a prompt the prompter does not render, a prompt too long without its text: dropped.
    dropped, counts = build_features("causal", smol_tok, rows, None, limit, prompter=prompter, long_examples="drop")
    assert [f["id"] for f in dropped] == ["0"] and counts["dropped_too_long"] == 1 and counts["cut_to_fit"] == 0
    foreign = [dict(rows[1], prompt=rows[1]["prompt"].replace("Sentence", "Text"))]
    assert build_features("causal", smol_tok, foreign, None, limit, prompter=prompter)[1]["dropped_too_long"] == 1
    assert build_features("causal", smol_tok, rows, None, 20, prompter=prompter)[0] == []
    # seq2seq: the source is cut, a target longer than its limit is dropped.
    summary = Prompter(load_task("dialogsum"), "auto", is_seq2seq=True)
    pairs = [dict(summary.render({"text": long_text, "target": "a film"}), id="s", text=long_text, target="a film")]
    feats, counts = build_features("seq2seq", smol_tok, pairs, None, 64, prompter=summary)
    assert counts["cut_to_fit"] == 1 and len(feats[0]["input_ids"]) <= 64 and "word0" in smol_tok.decode(feats[0]["input_ids"])
    assert build_features("seq2seq", smol_tok, pairs, None, 64, max_target_length=2, prompter=summary)[0] == []


def test_loss_only_on_the_completion_and_eos(smol_tok):
    prompter = Prompter(load_task("sst2"), "chat", tokenizer=smol_tok)
    pair = prompter.render({"text": "a fine film", "label": "positive"})
    enc = encode_example(smol_tok, pair["prompt"], pair["completion"])
    n = enc["prompt_length"]
    assert enc["labels"][:n] == [-100] * n
    assert enc["labels"][n:] == enc["input_ids"][n:]
    assert enc["input_ids"][-1] == smol_tok.eos_token_id
    assert smol_tok.decode(enc["input_ids"][n:-1]) == "positive"


def test_one_bos_and_the_leading_space_trap():
    # A tokenizer that adds BOS itself: a prompt that already starts with the BOS text gets no second one.
    tok = AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m"), add_bos_token=True, bos_token="<|endoftext|>")
    assert encode_prompt(tok, "Hi").count(tok.bos_token_id) == 1
    assert encode_prompt(tok, "<|endoftext|>Hi").count(tok.bos_token_id) == 1
    # " positive" after "[/INST]" is tokenised as in the joint text, not as a fresh string.
    prompt = "[INST] classify [/INST]"
    joint = encode_prompt(tok, prompt + " positive")
    assert encode_completion(tok, prompt, " positive") == joint[len(encode_prompt(tok, prompt)):]


TEXTS = ["guns", "we must ban this horrible weapon of war.", "see https://example.com/a/very/long/path/without/any/"
         "spaces/at/all/in/it/which/goes/on/and/on", "ends with an emoji 🙂", "trailing spaces   ", "ends [/INST]",
         "x" * 150, "line\nbreaks\n\n"]


@pytest.mark.parametrize("template", ["chat", "llama2-chat", "alpaca"])
def test_labels_tokenised_after_the_prompts_tail_equal_the_whole_prompts_tokens(smol_tok, template):
    # Score mode tokenises every label after the prompt's last 64 characters (fast); it must give
    # exactly the tokens that training puts after the whole prompt, for every shipped task.
    for name in ("politosphere", "sbic_offensive", "sbic_biased", "sst2", "imdb", "ag_news", "bbc_news",
                 "drug_reviews"):
        spec = load_task(name)
        prompter = Prompter(spec, template, True, smol_tok)
        for text in TEXTS:
            prompt = prompter.prompt(text)
            ids = encode_prompt(smol_tok, prompt)
            for label in spec.label_names:
                completion = prompter.completion(label)
                assert encode_label_after(smol_tok, prompt, completion, ids) == \
                    encode_completion(smol_tok, prompt, completion, ids), (name, template, text, label)
    # A bare prompt whose last word is longer than the tail: the check falls back to the whole prompt.
    prompt = "a " + "ab" * 60
    ids = encode_prompt(smol_tok, prompt)
    assert encode_label_after(smol_tok, prompt, "cd", ids) == encode_completion(smol_tok, prompt, "cd", ids)


def test_pad_token_differs_from_eos(smol_tok):
    assert smol_tok.pad_token_id is not None and smol_tok.pad_token_id != smol_tok.eos_token_id


@pytest.mark.parametrize("names,expected", [(["a"], "'a'"), (["a", "b"], "'a' or 'b'"), (["a", "b", "c"], "'a', 'b' or 'c'")])
def test_quoted_list(names, expected):
    assert quoted_list(names) == expected
