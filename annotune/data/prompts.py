"""Prompt rendering and tokenisation, shared by preprocess.py, train.py and evaluate.py so that the
prompt a model is trained on is the prompt it is evaluated with.

Templates (one registry, TEMPLATES: a new one added there is accepted by every script's --template):
- llama2-chat: `<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{input} [/INST] {label} </s>` (the Politosphere
  layout). BOS and EOS are tokens added at tokenisation, never literal text, so there is exactly one
  BOS (the source project had two: a literal "<s>" plus the tokenizer's own).
- alpaca: instruction / input / response (the SBIC project).
- chat: the tokenizer's own chat template (system + user turn, generation prompt); the default
  when the tokenizer has one.
- seq2seq: a plain prefix for encoder-decoder models ("summarize: {input}").

A rendered example is a (prompt, completion) pair; the completion is what carries the loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..base.cli import UserError

ALPACA_HEADER = ("Below is an instruction that describes a task, paired with an input that provides further "
                 "context. Write a response that appropriately completes the request.")


def quoted_list(names) -> str:
    """'a', 'b' or 'c' (the seeds' way of listing the labels in the instruction)."""
    quoted = [f"'{n}'" for n in names]
    if not quoted:
        return ""
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt layout: render(prompter, system, user) -> the prompt text; answer_prefix goes before
    the answer (the completion); needs_chat_template: it renders with the tokenizer's own;
    with_shots(prompter, system, user, shots) -> the prompt with examples before the text (shots:
    (user text, answer) pairs), None where the layout has no way to show them."""
    name: str
    render: Callable
    answer_prefix: str = ""
    needs_chat_template: bool = False
    with_shots: Callable | None = None


def _chat(prompter, system: str, user: str, shots=()) -> str:
    """Shots are earlier turns: the user's text, the assistant's answer."""
    messages = [{"role": "system", "content": system}] if system else []
    for shot_user, answer in shots:
        messages += [{"role": "user", "content": shot_user}, {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": user})
    return prompter.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _llama2(prompter, system: str, user: str, shots=()) -> str:
    """Llama-2's turns: each shot a closed [INST] ... [/INST] answer exchange, EOS and BOS between
    turns written as the tokenizer's own special tokens (the first BOS is added at tokenisation)."""
    eos, bos = (getattr(prompter.tokenizer, "eos_token", None) or "</s>"), (getattr(prompter.tokenizer, "bos_token",
                                                                                     None) or "<s>")
    turns, first = [], f"<<SYS>>\n{system}\n<</SYS>>\n\n"
    for shot_user, answer in shots:
        turns.append(f"[INST] {first}{shot_user} [/INST] {answer} {eos}{bos}")
        first = ""
    return "".join(turns) + f"[INST] {first}{user} [/INST]"


def _alpaca(prompter, system: str, user: str, shots=()) -> str:
    """No turns: shots are earlier Input / Response pairs under the instruction."""
    examples = "".join(f"### Input:\n{shot_user}\n\n### Response:\n{answer}\n\n" for shot_user, answer in shots)
    return f"{ALPACA_HEADER}\n\n### Instruction:\n{system}\n\n{examples}### Input:\n{user}\n\n### Response:\n"


TEMPLATES = (
    PromptTemplate("chat", _chat, needs_chat_template=True, with_shots=_chat),
    # llama2-chat puts one space between [/INST] and the answer; the others start the answer fresh.
    PromptTemplate("llama2-chat", _llama2, answer_prefix=" ", with_shots=_llama2),
    PromptTemplate("alpaca", _alpaca, with_shots=_alpaca),
    PromptTemplate("seq2seq", lambda prompter, system, user: f"{prompter.spec.prompt.get('seq2seq_prefix', '')}{user}"),
)


def template_names() -> list:
    """Every --template value: auto and the registered templates."""
    return ["auto"] + [t.name for t in TEMPLATES]


def prompt_template(name: str) -> PromptTemplate:
    for template in TEMPLATES:
        if template.name == name:
            return template
    raise UserError(f"unknown template {name!r}; choose one of {', '.join(template_names())}")


def resolve_template(template: str, tokenizer=None, is_seq2seq: bool = False) -> str:
    """auto: seq2seq for an encoder-decoder, else the tokenizer's chat template if it has one,
    else llama2-chat."""
    if template != "auto":
        if prompt_template(template).needs_chat_template and not getattr(tokenizer, "chat_template", None):
            raise UserError(f"template {template!r} needs a tokenizer with a chat template; use llama2-chat or alpaca")
        return template
    if is_seq2seq:
        return "seq2seq"
    return "chat" if getattr(tokenizer, "chat_template", None) else "llama2-chat"


class Prompter:
    """Renders prompts and completions for one task spec and one template; shots: examples shown
    before every text ({"id", "text", "label"} rows; few-shot prompting, evaluate.py --few_shot)."""

    def __init__(self, spec, template: str = "auto", with_definitions: bool = True, tokenizer=None,
                 is_seq2seq: bool = False, shots=()):
        self.spec = spec
        self.template = resolve_template(template, tokenizer, is_seq2seq)
        self.with_definitions = with_definitions
        self.tokenizer = tokenizer
        self.shots = list(shots)
        if self.shots and prompt_template(self.template).with_shots is None:
            raise UserError(f"template {self.template!r} has no way to show examples; use chat, llama2-chat or alpaca")

    def describe(self) -> dict:
        out = {"template": self.template, "with_definitions": self.with_definitions}
        if self.shots:
            out["shots"] = [{"id": s["id"], "text": s["text"], "label": s["label"]} for s in self.shots]
        return out

    def system_text(self) -> str:
        prompt, spec = self.spec.prompt, self.spec
        parts = [prompt.get("system", "").strip()]
        if self.with_definitions and spec.type == "classification" and any(l.definition for l in spec.labels):
            lines = [f"- {l.name}: {l.definition}" if l.definition else f"- {l.name}" for l in spec.labels]
            parts.append("Definitions of the labels:\n" + "\n".join(lines))
        instruction = prompt.get("instruction", "")
        if instruction:
            parts.append(instruction.replace("{label_list}", quoted_list(spec.label_names)))
        return "\n".join(p for p in parts if p)

    def user_text(self, text: str) -> str:
        return self.spec.prompt.get("input", "{text}").replace("{text}", text)

    def prompt(self, text: str) -> str:
        layout = prompt_template(self.template)
        if self.shots:
            shots = [(self.user_text(s["text"]), s["label"]) for s in self.shots]
            return layout.with_shots(self, self.system_text(), self.user_text(text), shots)
        return layout.render(self, self.system_text(), self.user_text(text))

    def completion(self, target: str) -> str:
        return prompt_template(self.template).answer_prefix + target

    def render(self, example: dict) -> dict:
        target = example.get("label", example.get("target"))
        return {"prompt": self.prompt(example["text"]), "completion": self.completion(target)}


# -------------------------------------------------------------------- tokenisation
def encode_prompt(tokenizer, prompt: str) -> list:
    """Prompt token ids with exactly one BOS where the model uses one."""
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and prompt.startswith(bos))
    return tokenizer(prompt, add_special_tokens=add_special)["input_ids"]


def encode_completion(tokenizer, prompt: str, completion: str, prompt_ids: list | None = None) -> list:
    """Completion token ids as the model sees them after the prompt.

    Tokenising "prompt + completion" and cutting at the prompt's length gives the tokens of the
    answer in context (this is where the leading-space trap lives: " positive" alone can tokenise
    differently from " positive" after "[/INST]"). When the joint tokenisation does not start with
    the prompt's ids (a merge across the boundary), the completion is tokenised on its own.
    """
    prompt_ids = encode_prompt(tokenizer, prompt) if prompt_ids is None else prompt_ids
    joint = encode_prompt(tokenizer, prompt + completion)
    if joint[: len(prompt_ids)] == prompt_ids and len(joint) > len(prompt_ids):
        return joint[len(prompt_ids):]
    return tokenizer(completion, add_special_tokens=False)["input_ids"]


def encode_label_after(tokenizer, prompt: str, completion: str, prompt_ids: list, tail_chars: int = 64) -> list:
    """encode_completion on the prompt's last `tail_chars` characters: the label's tokens depend on
    the text just before them only. Labelling tokenises every label after every prompt, and doing it
    on whole prompts made score mode tokenizer-bound on a GPU. The tail's last tokens are checked
    against the prompt's; where they differ (a word longer than the tail), the whole prompt is used."""
    if len(prompt) > tail_chars:
        tail = prompt[-tail_chars:]
        tail_ids = encode_prompt(tokenizer, tail)
        k = min(4, len(tail_ids) - 1, len(prompt_ids))
        if k > 0 and tail_ids[-k:] == prompt_ids[-k:]:
            return encode_completion(tokenizer, tail, completion, tail_ids)
    return encode_completion(tokenizer, prompt, completion, prompt_ids)


def encode_example(tokenizer, prompt: str, completion: str, add_eos: bool = True) -> dict:
    """input_ids and labels for causal-LM training: the loss is on the completion (and EOS) only,
    by construction: prompt positions are -100 because they are the prompt, not because a marker
    was found."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    completion_ids = encode_completion(tokenizer, prompt, completion, prompt_ids)
    if add_eos and tokenizer.eos_token_id is not None:
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    return {
        "input_ids": prompt_ids + completion_ids,
        "labels": [-100] * len(prompt_ids) + completion_ids,
        "prompt_length": len(prompt_ids),
    }


def mark_loss_span(tokenizer, encoded: dict) -> str:
    """The example's text with the loss-carrying span between >>> and <<< (logged at start)."""
    n = encoded["prompt_length"]
    ids = encoded["input_ids"]
    return tokenizer.decode(ids[:n]) + ">>>" + tokenizer.decode(ids[n:]) + "<<<"


def cut_text_to_fit(tokenizer, text: str, length, limit: int) -> tuple:
    """(text, cut): `text` cut from its end so that length(text), the tokens of what the text is
    rendered into (a prompt, a training example), is at most `limit`; cut is False where it already
    fits. A long post is kept from its beginning, in training as in labelling. Where even the empty
    text does not fit, the empty text is returned (cut True): the caller checks length again."""
    over = length(text) - limit
    if over <= 0:
        return text, False
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    for margin in (8, 64, len(ids)):  # a re-tokenised cut text can be a few tokens longer
        cut = tokenizer.decode(ids[:max(len(ids) - over - margin, 0)])
        if length(cut) <= limit:
            break
    return cut, True
