"""Evaluation throughput: seed-style generation + string parsing against score mode, same adapter.

    .venv/bin/python bench/eval_speed.py --adapter runs/recipes/politosphere/pol_unpol_oth/<name>-epoch20
    .venv/bin/python bench/eval_speed.py --adapter A --split train --max_samples 90
    .venv/bin/python bench/eval_speed.py --adapter A --split train --max_samples 90 --base

--base runs the untuned base model (adapter disabled) with the adapter's task and prompt: the
zero-shot setting, whose answers are rarely a bare label.

Seed-style = batched greedy generation with max_new_tokens=80 (left padding), then the seeds'
string matching (the answer must equal a label after stripping and lower-casing; anything else is
invalid). It is timed twice: stopping at EOS (what a model trained with an EOS after the answer
does, ours included), and with EOS suppressed for all 80 tokens: the cost of a model that never
learned to stop (e.g. trained with pad = eos masked out of the loss); its run-on answers fail the
exact match, as such answers did. Ours = evaluate.py's score mode (every label scored as a
continuation; shared prefix and per-example prompt caches reused). All run in this process on the
same rows, after one warm-up batch each. Prints a table and writes bench/results/eval_speed.json.
"""
import argparse
import contextlib
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", required=True, help="adapter folder written by train.py")
    p.add_argument("--split", default="validation", help="split of the adapter's dataset (default: validation)")
    p.add_argument("--max_samples", type=int, default=0, help="rows to use (default: all)")
    p.add_argument("--base", action="store_true", help="disable the adapter: time the untuned base model")
    p.add_argument("--batch_size", type=int, default=16, help="batch size of both methods (default: 16)")
    p.add_argument("--out", default="bench/results/eval_speed.json", help="JSON written here")
    return p.parse_args(argv)


def seed_parse(text, labels):
    """The seeds' parsing: exact match after strip and lower-case, else invalid."""
    from annotune.data.labels import INVALID

    answer = text.strip().lower()
    return next((l for l in labels if l.lower() == answer), INVALID)


def result_row(gold, preds, labels, seconds, **extra) -> dict:
    from annotune.labelling.metrics import classification_metrics

    m = classification_metrics(gold, preds, labels)
    return {"seconds": seconds, "invalid": m["invalid"], "macro_f1": m["macro_f1"], "ci": m["ci95"]["macro_f1"],
            **extra}


def main(argv=None):
    args = parse_args(argv)
    from annotune.labelling.annotator import load_annotator
    from annotune.labelling.contract import from_adapter, read_adapter_info
    from annotune.base.cli import quiet_libraries
    from annotune.data.examples import load_dataset_folder, pick_split
    from annotune.base.files import atomic_write_json

    quiet_libraries()
    annotator = load_annotator(from_adapter(args.adapter))
    rows_by_split, _, spec = load_dataset_folder(read_adapter_info(args.adapter).dataset)
    rows = pick_split(rows_by_split, args.split, args.max_samples, 42)
    prompts = [r["prompt"] for r in rows]
    gold = [r["label"] for r in rows]
    labels = spec.label_names

    # --base: same weights and prompts minus the LoRA update.
    with annotator.model.disable_adapter() if args.base else contextlib.nullcontext():
        results = {}
        for name, min_new in (("seed-style generate, stops at EOS", 0), ("seed-style generate, all 80 tokens", 80)):
            annotator.generate(prompts[: args.batch_size], 80, args.batch_size, min_new_tokens=min_new)  # warm-up
            start = time.perf_counter()
            texts = annotator.generate(prompts, 80, args.batch_size, min_new_tokens=min_new)
            seconds = time.perf_counter() - start
            new_tokens = sum(len(annotator.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
            results[name] = result_row(gold, [seed_parse(t, labels) for t in texts], labels, seconds,
                                       max_new_tokens=80, min_new_tokens=min_new,
                                       mean_new_tokens=new_tokens / len(texts))
        annotator.score(prompts[: args.batch_size], args.batch_size)  # warm-up
        start = time.perf_counter()
        probs = annotator.score(prompts, args.batch_size)
        seconds = time.perf_counter() - start
        results["ours: score mode"] = result_row(gold, [labels[int(p.argmax())] for p in probs], labels, seconds)
    model_name = "untuned base" if args.base else f"adapter {Path(args.adapter).name}"
    stops = results["seed-style generate, stops at EOS"]["mean_new_tokens"]
    print(f"{len(rows)} rows of {spec.name} ({args.split}), {model_name}; seed-style answers average "
          f"{stops:.1f} tokens\n")
    print("| method | examples/s | invalid | macro-F1 [95% CI] |")
    print("|---|---|---|---|")
    for name, r in results.items():
        r["examples_per_s"] = len(rows) / r["seconds"]
        print(f"| {name} | {r['examples_per_s']:.2f} | {r['invalid']} | {r['macro_f1']:.3f} "
              f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] |")
    ours = results["ours: score mode"]
    print()
    for name, r in results.items():
        if r is not ours:
            r["speedup_of_score_mode"] = ours["examples_per_s"] / r["examples_per_s"]
            print(f"speed-up of score mode over {name}: {r['speedup_of_score_mode']:.1f}x")
    atomic_write_json(REPO / args.out, {"rows": len(rows), "task": spec.name, "adapter": args.adapter,
                                        "base": args.base, "results": results,
                                        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                                        "command": " ".join(sys.argv)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
