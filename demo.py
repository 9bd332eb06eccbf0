"""The main job on the embedded default, end to end: can a small fine-tuned LLM annotate the
sentiment of patients' drug reviews (3 imbalanced classes) better than the untuned model?

    python demo.py                       # what `make demo` runs (about 6 minutes on 2 CPU cores)
    python demo.py --train_samples 160 --test_samples 100                 # a 3-minute version

Steps: preprocess.py builds the instruction dataset (chat template, label definitions, seeded
stratified validation split, manifest of ids); train.py fine-tunes SmolLM2-135M-Instruct with LoRA;
evaluate.py scores the untuned base and the tuned adapter on the same held-out test rows (score
mode: every label scored, no invalid outputs) and prints one table with 95% bootstrap CIs. Each run
goes to a new folder runs/demo/<time>/; nothing earlier is touched.
"""
import sys
import time

from annotune.cli import parser, quiet_libraries, run_cli
from annotune.models import DEFAULT_CAUSAL_LM
from annotune.task import DEFAULT_TASK


def parse_args(argv=None):
    p = parser(__doc__)
    p.add_argument("--task", default=DEFAULT_TASK, help=f"task spec (default: {DEFAULT_TASK}, shipped in a wheel)")
    p.add_argument("--model_name", default=DEFAULT_CAUSAL_LM, help=f"base model (default: {DEFAULT_CAUSAL_LM})")
    p.add_argument("--train_samples", type=int, default=0,
                   help="training examples, a seeded sample of the 480 (default: 0 = all)")
    p.add_argument("--epochs", type=int, default=1,
                   help="epochs at most, the best on validation kept (default: 1: the demo in a quarter of an hour "
                        "on 2 cores; 3 take about twice as long, README 'Demo result')")
    p.add_argument("--test_samples", type=int, default=0,
                   help="test rows scored for each model, a seeded sample of the 379 (default: 0 = all)")
    p.add_argument("--max_seq_length", type=int, default=320,
                   help="longest training example in tokens; longer reviews are dropped (default: 320)")
    p.add_argument("--output_dir", help="demo folder (default: runs/demo/<time>)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    quiet_libraries()
    from pathlib import Path

    import evaluate
    import preprocess
    import train
    from annotune.adapters import adapters_in

    start = time.time()
    out = Path(args.output_dir or f"runs/demo/{time.strftime('%Y%m%d-%H%M%S')}")
    print(f"[1/3] preprocess {args.task}")
    code = run_cli(preprocess.main, ["--task", args.task, "--model_name", args.model_name, "--num_preview", "1",
                                     "--output_dir", str(out / "dataset")])
    if code:
        return code
    print(f"\n[2/3] fine-tune {args.model_name} with LoRA, {args.epochs} epoch(s)")
    sample = ["--max_train_samples", str(args.train_samples)] if args.train_samples else []  # 0 = all
    code = run_cli(train.main, ["--dataset_name", str(out / "dataset"), "--model_name", args.model_name,
                                "--epoch", str(args.epochs), *sample,
                                "--max_seq_length", str(args.max_seq_length), "--max_eval_samples", "60",
                                "--output_dir", str(out / "train")])
    if code:
        return code
    adapter = adapters_in(out / "train")[0]  # the best validation epoch, the only one kept
    print("\n[3/3] evaluate the base model and the tuned adapter on the same test rows")
    code = run_cli(evaluate.main, ["--adapters_name", str(adapter), "--base_only", "--split", "test",
                                   "--max_samples", str(args.test_samples), "--output_dir", str(out / "eval")])
    if code:
        return code
    minutes = (time.time() - start) / 60
    sampled = [f"{n} {what}" for n, what in ((args.train_samples, "training examples"), (args.test_samples, "test rows")) if n]
    print(f"demo finished in {minutes:.1f} min (up to {args.epochs} epochs; reviews over {args.max_seq_length} tokens left out "
          f"of training{'; subsampled: ' + ', '.join(sampled) if sampled else ''}); everything is in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
