"""Fine-tune a base model into an annotator with (Q)LoRA.

    python train.py                                           # tiny run: drug_reviews, smollm2-135m
    python train.py --task politosphere --merge pol_unpol_oth --epoch 3 --save_epochs 1,2,3
    python train.py --task politosphere --stop_condition steps --steps 3
    python train.py --dataset_name data/sbic_offensive-chat --epoch 2     # a folder from preprocess.py
    python train.py --task imdb --model_name minilm-l6 --mode classifier --class_weights auto
    python train.py --task dialogsum --model_name google/flan-t5-base    # seq2seq (hub)
    python train.py --epoch 50 --max_seq_length 512 --base_model_name meta-llama/Llama-2-13b-chat-hf
    accelerate launch --config_file configs/accelerate_ddp.yaml train.py --task sst2

Modes (picked from the task and the model, --mode overrides): causal = instruction SFT with the loss
on the answer tokens (and EOS) only; classifier = a sequence-classification head (class-weighted
cross-entropy); seq2seq = an encoder-decoder LM. Quantization `auto` is 4-bit NF4 on CUDA, none on CPU.

Writes to --output_dir (default runs/<model>-<task>): one adapter per --save_epochs entry,
<model>-<task>-epochN/ (adapter, tokenizer, annotune.json with task spec, labels, prompt and its
validation metrics), manifest.json (arguments, versions, git commit, split ids), log.jsonl (loss,
tokens/s per step; eval per epoch), learning_curve.png, dataset/ (the exact rows trained on) and
checkpoints/ (for --resume_from_checkpoint).
"""
import argparse
import sys

from annotune.io import UserError, quiet_libraries, run_cli

DEFAULT_TASK = "drug_reviews"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--task", help=f"task spec name or YAML path (default: {DEFAULT_TASK} unless --dataset_name)")
    g.add_argument("--merge", help="a named label merge of the task (e.g. pol_unpol_oth)")
    g.add_argument("--dataset_name", help="a dataset folder from preprocess.py, or a task name")
    g.add_argument("--template", default="auto", help="prompt template when building from a task (default: auto)")
    g.add_argument("--without_definitions", action="store_true", help="leave label definitions out of the prompt")
    g.add_argument("--max_train_samples", type=int, help="use at most this many training examples (default: all)")
    g.add_argument("--max_eval_samples", type=int, default=200,
                   help="validation examples evaluated per epoch (default: 200; 0 = all)")
    g = p.add_argument_group("model")
    g.add_argument("--model_name", "--base_model_name", dest="model_name", default="smollm2-135m",
                   help="hub id, local folder or alias: smollm2-135m (default), minilm-l6")
    g.add_argument("--mode", choices=["auto", "causal", "classifier", "seq2seq"], default="auto",
                   help="what to train (default: auto, from the task and the model)")
    g.add_argument("--quantization", choices=["auto", "4bit", "8bit", "none"], default="auto",
                   help="auto = 4-bit NF4 on CUDA, none on CPU (default: auto)")
    g.add_argument("--lora_r", type=int, default=16, help="LoRA rank (default: 16)")
    g.add_argument("--lora_alpha", type=int, default=32, help="LoRA alpha (default: 32)")
    g.add_argument("--lora_dropout", type=float, default=0.05, help="LoRA dropout (default: 0.05)")
    g.add_argument("--target_modules", default="all-linear",
                   help="comma-separated module names, or all-linear (default: all-linear)")
    g = p.add_argument_group("training")
    g.add_argument("--epoch", "--epochs", dest="epochs", type=int, default=1, help="epochs (default: 1)")
    g.add_argument("--stop_condition", choices=["epochs", "steps"], default="epochs",
                   help="stop after --epoch epochs or --steps optimizer steps (default: epochs)")
    g.add_argument("--steps", type=int, default=0, help="optimizer steps with --stop_condition steps")
    g.add_argument("--train_batch_size", type=int, default=8, help="examples per micro-batch per process (default: 8)")
    g.add_argument("--eval_batch_size", type=int, default=16, help="examples per evaluation batch (default: 16)")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1, help="micro-batches per step (default: 1)")
    g.add_argument("--learning_rate", type=float, default=2e-4, help="peak learning rate (default: 2e-4)")
    g.add_argument("--weight_decay", type=float, default=0.0, help="AdamW weight decay (default: 0)")
    g.add_argument("--lr_scheduler", choices=["linear", "cosine", "constant"], default="linear",
                   help="decay after warmup (default: linear)")
    g.add_argument("--warmup_ratio", type=float, default=0.03, help="fraction of steps warming up (default: 0.03)")
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping, 0 = off (default: 1.0)")
    g.add_argument("--max_seq_length", type=int, default=1024,
                   help="longest example in tokens; longer ones are dropped and counted (default: 1024)")
    g.add_argument("--class_weights", default="none",
                   help="classifier mode: auto (inverse frequency), none, or w1,w2,... (default: none)")
    g.add_argument("--shared_prefix", choices=["auto", "on", "off"], default="auto",
                   help="run the prompts' common prefix once per batch (default: auto, when >= 16 tokens)")
    g.add_argument("--seed", type=int, default=42, help="seed of model init, data order and splits (default: 42)")
    g = p.add_argument_group("evaluation and saving")
    g.add_argument("--eval_strategy", choices=["epoch", "steps", "no"], default="epoch",
                   help="evaluate on the validation split after each epoch, or every --eval_steps (default: epoch)")
    g.add_argument("--eval_steps", type=int, default=0, help="with --eval_strategy steps: every N steps")
    g.add_argument("--early_stopping_patience", type=int, default=0,
                   help="stop after this many epochs without a better validation metric (default: 0 = off)")
    g.add_argument("--keep_best", action="store_true", help="also save the best epoch as <run>-best")
    g.add_argument("--save_epochs", help="comma-separated epochs to save an adapter at (default: the last)")
    g.add_argument("--save_every_steps", type=int, default=0, help="also checkpoint every N steps (default: 0)")
    g.add_argument("--output_dir", help="run folder (default: runs/<model>-<task>)")
    g.add_argument("--overwrite_output_dir", action="store_true", help="replace a run folder that holds results")
    g.add_argument("--resume_from_checkpoint", nargs="?", const="latest",
                   help="continue the run in --output_dir from its latest (or the given) checkpoint")
    g.add_argument("--report_to", default="none", help="experiment tracker for accelerate (default: none)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--stop_after_steps", type=int, default=0, help=argparse.SUPPRESS)  # tests: simulate a crash
    g.add_argument("--record_examples", action="store_true", help=argparse.SUPPRESS)  # tests: ids seen per process
    args = p.parse_args(argv)
    if args.stop_condition == "steps" and args.steps <= 0:
        p.error("--stop_condition steps needs --steps N > 0")
    if args.eval_strategy == "steps" and args.eval_steps <= 0:
        p.error("--eval_strategy steps needs --eval_steps N > 0")
    if args.task and args.dataset_name:
        p.error("give --task or --dataset_name, not both")
    return args


def main(argv=None):
    args = parse_args(argv)
    quiet_libraries()
    from annotune import training as T

    T.set_seed(args.seed)
    run = T.prepare_run(args)  # data, model, output folder, manifest; raises UserError on bad input
    T.log_start(run)
    result = T.fit(run)
    if result.get("interrupted"):
        print(f"stopped at step {result['step']}; resume with --resume_from_checkpoint")
        return 0
    T.finish(run, result)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
