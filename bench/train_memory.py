"""Training memory per decoder layer of a Llama-2-7B-shaped model, on this CPU: train.py's path with
activation checkpointing off and on, against the seed-style TRL SFTTrainer with its checkpointing on.

    .venv/bin/python bench/train_memory.py               # 2 tasks x batch 8, 16 x 3 arms x 2, 4 layers (about an hour on 2 cores)
    .venv/bin/python bench/train_memory.py --tasks politosphere --batches 8 --arms ours,ours+ckpt
    .venv/bin/python bench/train_memory.py --report      # the tables of bench/results/train_memory.json
    .venv/bin/python bench/train_memory.py --tasks drug_reviews --batches 8 --arms ours+ckpt --profile
                                                         # where one step's time goes (2 layers; nothing saved)

Model: Llama-2-7B's layer shape (hidden 4,096, MLP 11,008, 32 heads; SmolLM2's 49,152-token
vocabulary), random weights in fp32, 2 and 4 layers: a layer's cost is the slope between the two,
so the embeddings, the head and everything else that does not grow with depth cancel. Both arms
run fp32 (train.py --cpu_bf16 off, TRL bf16=False): under autocast the bf16 copies of the weights
would count as activations. Ours takes the cache path (the prefix's keys and values through a
cache, as on CUDA; the CPU's split path keeps less).

Examples: the `--batches` longest training examples of each task (a card must fit its largest
batch), cut at 512 tokens: Politosphere with label definitions (llama2-chat, a shared prefix of 317
tokens) and drug_reviews (own tokens up to 320). Arms: `ours` (AnnotuneTrainer, LoRA r16 on all
linear layers, the shared prefix once per batch), `ours+ckpt` (the same, --gradient_checkpointing on),
`trl+ckpt` (TRL SFTTrainer as the seeds ran it: LoRA r64 on q_proj and v_proj, completion-only loss,
its default activation checkpointing). Each (task, batch, arm, layers) runs one optimizer step in a
fresh process:
- peak tensor memory of the step: the running sum of every allocation and free the PyTorch
  profiler records (profile_memory) from the start of the step (forward, backward, optimizer) to its
  end, the peak of that sum; weights, loaded before, are not in it;
- bytes saved for the backward (saved_tensors_hooks, unique storages, the weights left out): what the forward keeps
  outside checkpointed regions (a non-reentrant checkpoint keeps its layers' inputs where the hooks
  cannot see them, so this undercounts the checkpointed arms: the peak above is the measure);
- step seconds (the profiled step: its overhead is small next to 7B-shaped matmuls);
- peak RSS of the process, a cross-check (glibc told to return large blocks: MALLOC_MMAP_THRESHOLD_).
Per layer = (4-layer figure - 2-layer figure) / 2.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ARMS = ("ours", "ours+ckpt", "trl+ckpt")
SHOW_OPERATORS = False  # --profile: the worker prints the step's operator table to stderr
TEMPLATES = {"politosphere": "llama2-chat", "drug_reviews": "auto"}
SHAPE = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="politosphere,drug_reviews", help="comma-separated (default: %(default)s)")
    p.add_argument("--batches", default="8,16", help="batch sizes, comma-separated (default: %(default)s)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)} (default: all)")
    p.add_argument("--layers", default="2,4", help="two depths; per layer = the slope (default: %(default)s)")
    p.add_argument("--tiny", action="store_true", help="hidden 64, MLP 128 (a smoke test: seconds)")
    p.add_argument("--out", default="bench/results/train_memory.json", help="results (default: %(default)s)")
    p.add_argument("--report", action="store_true", help="print the tables of --out")
    p.add_argument("--profile", action="store_true",
                   help="print the profiler's operator table of each cell's step at the lower depth instead (no results saved)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------- one arm in its own process
def chosen_examples(task: str, batch: int, tokenizer):
    """(spec, rows, feats): the task's `batch` longest training examples, as train.py renders them."""
    from annotune.data.examples import prepare_splits
    from annotune.data.prompts import Prompter
    from annotune.data.task import load_task
    from annotune.training.training_set import build_features

    spec = load_task(task)
    splits, _ = prepare_splits(spec, Prompter(spec, TEMPLATES[task], True, tokenizer), val_ratio=0.0)
    feats, _ = build_features("causal", tokenizer, splits["train"], spec.label_names, 512)
    feats = sorted(feats, key=lambda f: -len(f["input_ids"]))[:batch]
    ids = {f["id"] for f in feats}
    return spec, [r for r in splits["train"] if r["id"] in ids], feats


def random_model(layers: int, tokenizer, tiny: bool):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4) if tiny else SHAPE
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=4096, num_hidden_layers=layers,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).float()


class Measured:
    """A TrainerCallback that profiles the one step (on_step_begin to on_step_end) and counts the
    bytes saved for the backward."""

    def __init__(self):
        from transformers import TrainerCallback

        measured = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, model=None, **kwargs):
                measured.weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
                measured.begin()

            def on_step_end(self, args, state, control, **kwargs):
                measured.end()

        self.callback, self.result = Callback(), {}

    def begin(self):
        import torch
        from torch.profiler import ProfilerActivity, profile

        self.saved = {}

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in self.weights:  # a matmul keeps its weight: not an activation
                self.saved[storage.data_ptr()] = storage.nbytes()
            return t

        self.hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self.profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self.profiler.__enter__()
        self.hooks.__enter__()
        self.start = time.perf_counter()

    def end(self):
        seconds = time.perf_counter() - self.start
        self.hooks.__exit__(None, None, None)
        self.profiler.__exit__(None, None, None)
        events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in self.profiler.events()
                        if e.self_cpu_memory_usage)
        live = peak = 0
        for _, nbytes in events:
            live += nbytes
            peak = max(peak, live)
        if SHOW_OPERATORS:
            print(self.profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), file=sys.stderr)
        self.result = {"step_seconds": round(seconds, 2), "peak_tensor_bytes": peak,
                       "saved_for_backward_bytes": sum(self.saved.values())}


def arm_ours(model, tokenizer, feats, checkpoint: bool, work: Path):
    from transformers import TrainingArguments

    from annotune.model import prefix_attention
    from annotune.model.models import add_lora
    from annotune.training.trainer import AnnotuneTrainer, LossOptions

    prefix_attention.supported = lambda *a, **k: False  # the cache path, as CUDA trains
    model = add_lora(model, "causal", 16, 32, 0.05, "all-linear")
    args = TrainingArguments(output_dir=str(work), per_device_train_batch_size=len(feats), learning_rate=2e-4,
                             max_steps=1, save_strategy="no", report_to="none", logging_strategy="no",
                             disable_tqdm=True, use_cpu=True, seed=42, dataloader_num_workers=0,
                             remove_unused_columns=False)
    options = LossOptions(kind="causal", cpu_bf16="off", gradient_checkpointing="on" if checkpoint else "off")
    measured = Measured()
    trainer = AnnotuneTrainer(model, args, feats, tokenizer, options, [measured.callback])
    trainer.train()
    return dict(measured.result, shared_prefix_tokens=len(trainer.prefix), checkpointed=trainer.checkpoint,
                tokens_run=trainer.totals["processed_tokens"])


def arm_trl(model, tokenizer, rows, work: Path):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    config = SFTConfig(output_dir=str(work), per_device_train_batch_size=len(rows), learning_rate=2e-4, max_steps=1,
                       max_length=512, completion_only_loss=True, packing=False, save_strategy="no",
                       report_to="none", logging_strategy="no", disable_tqdm=True, use_cpu=True, bf16=False,
                       fp16=False, seed=42, dataloader_num_workers=0)
    peft = LoraConfig(r=64, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    tokenizer.padding_side = "right"
    measured = Measured()
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer, peft_config=peft,
                         callbacks=[measured.callback])
    trainer.train()
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    return dict(measured.result, checkpointed=bool(config.gradient_checkpointing), tokens_run=tokens)


def worker(spec_json: str) -> dict:
    import tempfile

    from annotune.base.cli import quiet_libraries
    from annotune.model.models import load_tokenizer

    global SHOW_OPERATORS
    labelling = json.loads(spec_json)
    SHOW_OPERATORS = bool(labelling.get("profile"))
    quiet_libraries()
    tokenizer = load_tokenizer("smollm2-135m", for_generation=False)
    _, rows, feats = chosen_examples(labelling["task"], labelling["batch"], tokenizer)
    model = random_model(labelling["layers"], tokenizer, labelling["tiny"])
    with tempfile.TemporaryDirectory() as work:
        if labelling["arm"] == "trl+ckpt":
            out = arm_trl(model, tokenizer, rows, Path(work))
        else:
            out = arm_ours(model, tokenizer, feats, labelling["arm"] == "ours+ckpt", Path(work))
    own = [len(f["input_ids"]) for f in feats]
    return dict(out, peak_rss_bytes=peak_rss(), example_tokens=sum(own), longest_example=max(own))


def peak_rss() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run_job(labelling: dict) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(labelling)], cwd=REPO, env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{labelling} failed:\n{out.stderr[-3000:]}")
    if labelling.get("profile"):
        print(out.stderr[out.stderr.find("-----"):], end="")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the table
GIB = 2 ** 30
H200_WEIGHTS_GIB = 4.8  # train.py's 7B model in 4-bit NF4 after load, LoRA included (docs/benchmarks.md, GPU)
H200_PEAK_GIB = 30.2  # train.py's path there, checkpointing off, batch 16, Politosphere


def per_layer(cells: dict, depths) -> dict:
    """Each figure's slope between the two depths, per layer."""
    low, high = (cells[str(d)] for d in depths)
    span = depths[1] - depths[0]
    keys = ("peak_tensor_bytes", "saved_for_backward_bytes", "peak_rss_bytes", "step_seconds")
    return {k: (high[k] - low[k]) / span for k in keys}


def estimate_7b(cells: dict, depths, layers: int = 32) -> float:
    """GiB on a GPU for `layers` layers in 4-bit with bf16 compute: the weights after load plus the
    fp32 step peak measured here extended to `layers`: W + P_low + (layers - low) * s, with s the
    peak's slope per layer. Not halved for bf16: the 4-bit path keeps its residual stream in fp32
    (prepare_model_for_kbit_training casts the embeddings and norms to fp32, and a bf16 matmul's
    output added to it is promoted back), and the formula with the full fp32 figure reproduces the
    H200's measured peak (H200_PEAK_GIB; docs/benchmarks.md)."""
    slope = per_layer(cells, depths)["peak_tensor_bytes"]
    low = cells[str(depths[0])]["peak_tensor_bytes"]
    return H200_WEIGHTS_GIB + (low + (layers - depths[0]) * slope) / GIB


def report(record: dict) -> str:
    depths = record["layers"]
    out = [f"Machine: {record['machine']}. Per layer = (figure at {depths[1]} layers - at {depths[0]}) / "
           f"{depths[1] - depths[0]}; fp32, one optimizer step in a fresh process.", "",
           "| task | batch | arm | tokens run | peak tensor MiB / layer | saved for backward MiB / layer | "
           "peak RSS MiB / layer | step s / layer | examples/s at 32 layers | 7B 4-bit estimate GiB | "
           "memory / layer vs TRL | examples/s / layer vs TRL |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, cells in sorted(record["cells"].items(), key=lambda kv: (kv[0].split("|")[0], int(kv[0].split("|")[1]))):
        task, batch, arm = key.split("|")
        slope = per_layer(cells, depths)
        seconds = cells[str(depths[0])]["step_seconds"] + (32 - depths[0]) * slope["step_seconds"]
        trl = record["cells"].get(f"{task}|{batch}|trl+ckpt")
        versus = "| - | - |"
        if trl and arm != "trl+ckpt":
            theirs = per_layer(trl, depths)
            versus = (f"| {slope['peak_tensor_bytes'] / theirs['peak_tensor_bytes']:.2f}x | "
                      f"{theirs['step_seconds'] / slope['step_seconds']:.2f}x |")
        out.append(f"| {task} | {batch} | {arm} | {cells[str(depths[1])]['tokens_run']} | "
                   f"{slope['peak_tensor_bytes'] / 2**20:.0f} | {slope['saved_for_backward_bytes'] / 2**20:.0f} | "
                   f"{slope['peak_rss_bytes'] / 2**20:.0f} | {slope['step_seconds']:.2f} | "
                   f"{int(batch) / seconds:.4f} | {estimate_7b(cells, depths):.1f} {versus}")
    out += ["", f"7B estimate: {H200_WEIGHTS_GIB} GiB of 4-bit weights and LoRA after load (measured on the "
            "H200) + the step's fp32 peak at the lower depth + (32 - that depth) x the peak's slope per "
            f"layer; the H200 measured {H200_PEAK_GIB} GiB for train.py's path without checkpointing at batch 16 on "
            "Politosphere (length-grouped batches over one epoch: its largest is about the 16 longest examples)."]
    check = record["cells"].get("politosphere|16|ours")
    if check:
        estimate = estimate_7b(check, depths)
        out.append(f"Check: the formula gives {estimate:.1f} GiB for that run, {100 * (estimate / H200_PEAK_GIB - 1):+.1f}% "
                   f"against the {H200_PEAK_GIB} GiB measured.")
    return "\n".join(out) + "\n"


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return 0
    out = REPO / args.out
    if args.report:
        print(report(json.loads(out.read_text())))
        return 0
    from annotune.base.files import atomic_write_json
    from label_precision import cpu_name  # bench/ is on the path: this script's folder

    depths = [int(d) for d in args.layers.split(",")]
    if args.profile:
        for task in args.tasks.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                for arm in args.arms.split(","):
                    print(f"{task} batch {batch} {arm}, {depths[0]} layers:")
                    run_job({"task": task, "batch": batch, "arm": arm, "layers": depths[0], "tiny": args.tiny,
                             "profile": True})
        return 0
    record = json.loads(out.read_text()) if out.exists() else {"cells": {}}
    record.update(machine=f"{cpu_name()}, {os.cpu_count()} cores", layers=depths, tiny=args.tiny,
                  command=" ".join(sys.argv))
    for task in args.tasks.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            for arm in args.arms.split(","):
                cells = {}
                for layers in depths:
                    labelling = {"task": task, "batch": batch, "arm": arm, "layers": layers, "tiny": args.tiny}
                    cells[str(layers)] = run_job(labelling)
                    print(f"{task} batch {batch} {arm} {layers} layers: {cells[str(layers)]}", flush=True)
                record["cells"][f"{task}|{batch}|{arm}"] = cells
                atomic_write_json(out, record)  # each result kept as it comes
    print(report(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
