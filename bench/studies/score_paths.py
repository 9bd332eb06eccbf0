"""Score mode before and after the packed forward (issue 15): labelling examples/s on this machine.

    .venv/bin/python bench/studies/score_paths.py                 # SmolLM2-135M, 64 Politosphere prompts, batch 16

before: every label tokenised after the whole prompt, one forward per label (the code up to
2026-11-28); after: `Annotator.score` (labels tokenised after the prompt's tail, one packed forward
per batch). Both are timed twice, alternating, cold label cache; the largest probability difference
between them is printed (they must agree).
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name", default="smollm2-135m", help="causal LM (default: %(default)s)")
    p.add_argument("--examples", type=int, default=64, help="prompts labelled per timing (default: 64)")
    p.add_argument("--batch_size", type=int, default=16, help="prompts per batch (default: 16)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import torch

    from annotune.model import lm
    from annotune.labelling.annotator import Annotator
    from annotune.base.cli import quiet_libraries
    from annotune.data.examples import prepare_splits
    from annotune.model.models import load_model, load_tokenizer
    from annotune.data.prompts import Prompter, encode_completion, encode_prompt
    from annotune.data.task import load_task

    quiet_libraries()
    tok = load_tokenizer(args.model_name, for_generation=False)
    spec = load_task("politosphere", "pol_unpol_oth")
    prompter = Prompter(spec, "llama2-chat", True, tok)
    splits, _ = prepare_splits(spec, prompter, val_ratio=0.0)
    prompts = [prompter.prompt(r["text"]) for r in splits["train"][:args.examples]]
    model = load_model(args.model_name, "causal", "auto").eval()
    annotator = Annotator(model, tok, spec, prompter, "causal", args.model_name)
    eos = [tok.eos_token_id]

    def before():
        ids = [encode_prompt(tok, p) for p in prompts]
        comps = [[encode_completion(tok, p, prompter.completion(label), i) + eos for label in spec.label_names]
                 for p, i in zip(prompts, ids)]
        return torch.softmax(lm.score_completions(model, ids, comps, args.batch_size, packed=False), -1)

    def after():
        annotator._completion_cache.clear()
        return annotator.score(prompts, args.batch_size)

    before(), after()  # warm-up
    for name, run in (("before", before), ("after", after), ("before", before), ("after", after)):
        start = time.perf_counter()
        run()
        print(f"{name}: {len(prompts) / (time.perf_counter() - start):.2f} examples/s")
    print(f"largest probability difference: {(before() - after()).abs().max().item():.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
