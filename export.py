"""Export an adapter for any inference engine: the LoRA merged into its base model, written as a plain
transformers model folder with its tokenizer, plus what annotune knows about using it.

    python export.py --adapters_name runs/smollm2-135m-drug_reviews/smollm2-135m-drug_reviews-epoch1 \\
        --output_dir merged/drug_reviews
    python export.py --adapters_name smollm2-135m-drug_reviews-epoch1 --output_dir merged/dr --overwrite
    python export.py --adapters_name runs/minilm-l6-imdb/minilm-l6-imdb-epoch1 --output_dir merged/imdb-head

The merge (peft's merge_and_unload) needs the base in full precision: a base trained in 4-bit is
reloaded unquantized first, and the output says so. The folder loads with
AutoModelForCausalLM / AutoModelForSequenceClassification.from_pretrained, in vLLM or TGI, or in
llama.cpp after its own conversion. Its annotune.json holds the labels, the prompt template, the
token ids of each label's answer and the decision rule; its README.md shows how to label with them.
An engine that decodes greedily ignores the rule: scoring each label's answer and adding the
rule's offsets is what reproduces annotune's labels. An existing --output_dir is never replaced
unless --overwrite is given.
"""
import sys

from annotune.base.cli import parser, quiet_libraries, run_cli


def parse_args(argv=None):
    p = parser(__doc__)
    p.add_argument("--adapters_name", required=True, help="adapter folder, or adapter name under runs/")
    p.add_argument("--output_dir", required=True, help="folder to write the merged model to")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="precision of the written weights (default: float32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output_dir")
    return p.parse_args(argv)


def merged_model(adapter, record, dtype: str):
    """The base loaded unquantized, the adapter attached and merged into it."""
    import torch
    from peft import PeftModel

    from annotune.model.models import load_model

    kind = record.kind
    labels = record.labels if kind == "classifier" else None
    base = load_model(record.base_model, kind, "none", num_labels=len(labels) if labels else None,
                      label_names=labels)
    model = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    return model.to(getattr(torch, dtype)).eval()


def usage_info(adapter, record, tokenizer) -> dict:
    """annotune.json of the export: what a user of the merged model needs to label as annotune does:
    the prompt template, the token ids of each scored answer (EOS included), the merge of the scored
    labels into the labels given (contract.Labelling.usage), the rule."""
    from annotune.labelling.annotator import Annotator
    from annotune.labelling.contract import from_adapter
    from annotune.data.prompts import encode_prompt

    labelling = from_adapter(adapter)
    out = {"exported_from": str(adapter), "kind": record.kind, **labelling.usage(), "base": record.base,
           "decision_rule": record.decision_rule, "validation_metrics": record.validation_metrics}
    if out["kind"] != "classifier":
        spec, prompt, prompter = labelling.scored, labelling.prompt, labelling.prompter(tokenizer)
        sentinel = "\u2063TEXT\u2063"  # invisible separators: no template contains them
        text_prompt = prompter.prompt(sentinel)
        annotator = Annotator(None, tokenizer, spec, prompter, out["kind"], adapter.name)  # tokenisation only
        bos = tokenizer.bos_token
        out.update(prompt=prompt, prompt_template=text_prompt.replace(sentinel, "{text}"),
                   add_special_tokens=not (bos and text_prompt.startswith(bos)),
                   answer_token_ids=dict(zip(record.labels, annotator.label_completions(
                       text_prompt, encode_prompt(tokenizer, text_prompt)))))
    return out


README = """# {name}: a merged annotune annotator

Task `{task}`, labels {labels}. Base model `{base}`; LoRA adapter `{adapter}` merged into it{quant}.

{how}

Decision rule: {rule}
"""

CAUSAL_HOW = """Label a text as annotune does (score every label's answer, merge the scored labels into the
labels given, add the decision rule's offsets where its held-out check passed; {why}):

```python
import json
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

folder = "{folder}"
meta = json.load(open(f"{{folder}}/annotune.json"))
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder).eval()


{rule_code}

rule = meta["decision_rule"]
offsets = rule["offsets"] if rule_applies(rule) else None


@torch.no_grad()
def label(text):
    prompt = meta["prompt_template"].replace("{{text}}", text)
    prompt_ids = tok(prompt, add_special_tokens=meta["add_special_tokens"])["input_ids"]
    scores = []
    for name in meta["scored_labels"]:  # the answers the model learnt
        answer = meta["answer_token_ids"][name]
        logits = model(torch.tensor([prompt_ids + answer])).logits[0].log_softmax(-1)
        scores.append(sum(logits[len(prompt_ids) - 1 + j, t].item() for j, t in enumerate(answer)))
    logp = torch.tensor(scores).log_softmax(0).tolist()
    return given_label(logp, meta["scored_labels"], meta["labels"], meta["label_of_scored"], offsets)
```

An engine that generates (vLLM, TGI, llama.cpp) can send `prompt_template` with the text in place of
`{{text}}` and read the answer greedily: that is argmax without the decision rule, and the answer
may need parsing. With log-probabilities of the answer tokens (vLLM `prompt_logprobs`) it can score
as above."""

HEAD_HOW = """A classification head: `AutoModelForSequenceClassification.from_pretrained("{folder}")`; the label of
a text is `config.id2label[argmax(softmax(logits) then log + offsets)]` (offsets below, in label
order; without them, the plain argmax). Where annotune.json's `label_of_scored` sends several
`scored_labels` (`config.id2label`) to one label given, the softmax is over the scored labels, summed
into the `labels` given before the log and offsets."""


def readme(output_dir, adapter, meta: dict, trained_4bit: bool) -> str:
    """The README of the export; its labelling code is the decision rule's own (decision.py)."""
    from annotune.labelling.decision import plain_python_source, rule_applies

    rule = meta.get("decision_rule") or {}
    applied = rule_applies(meta.get("decision_rule"))
    why = "this model's rule is applied" if applied else "this model has no rule, or its check failed: argmax"
    how = (HEAD_HOW if meta["kind"] == "classifier" else CAUSAL_HOW).format(folder=output_dir, why=why,
                                                                            rule_code=plain_python_source())
    return README.format(
        name=adapter.name, task=meta["task"], labels=", ".join(meta["labels"]),
        base=(meta.get("base") or {}).get("hub_id") or (meta.get("base") or {}).get("name"), adapter=adapter,
        quant=" (trained on a 4-bit base; merged into the unquantized weights)" if trained_4bit else "", how=how,
        rule=f"offsets {rule.get('offsets')} added to the label log-probabilities ({rule.get('note')})" if applied
        else f"argmax ({rule.get('note', 'no rule saved')}).")


def main(argv=None):
    args = parse_args(argv)
    quiet_libraries()
    from pathlib import Path

    from annotune.model.adapters import find_adapter, tokenizer_source
    from annotune.labelling.contract import read_adapter_info
    from annotune.base.files import atomic_write_json, atomic_write_text, ensure_new_path, publish_dir, remove_dir, \
        staging_dir
    from annotune.model.models import load_tokenizer

    adapter = find_adapter(args.adapters_name)
    record = read_adapter_info(adapter)
    out = Path(args.output_dir)
    ensure_new_path(out, args.overwrite, what="export folder", inputs=(adapter, record.base_model), kind="dir")
    tokenizer = load_tokenizer(tokenizer_source(adapter, record.tokenizer_files, record.base_model))
    trained_4bit = record.quantization in ("4bit", "8bit")
    if trained_4bit:
        print(f"the adapter was trained on a {record.quantization} base: merging into the unquantized weights")
    model = merged_model(adapter, record, args.dtype)
    meta = usage_info(adapter, record, tokenizer)
    tmp = staging_dir(out)
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        atomic_write_json(tmp / "annotune.json", meta)
        atomic_write_text(tmp / "README.md", readme(args.output_dir, adapter, meta, trained_4bit))
        if out.exists():
            remove_dir(out)
        publish_dir(tmp, out)
    finally:
        remove_dir(tmp)
    print(f"merged {adapter.name} into its base ({args.dtype}) -> {out}/ (model, tokenizer, annotune.json, README.md)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
