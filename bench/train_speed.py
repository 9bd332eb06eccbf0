"""Training throughput: the seed-style pipeline against train.py's defaults, same model and data.

    .venv/bin/python bench/train_speed.py                      # both tasks (about 15 minutes, 2 cores)
    .venv/bin/python bench/train_speed.py --tasks sst2 --sst2_samples 200
    .venv/bin/python bench/train_speed.py --tasks politosphere --arms seed --seed_bf16   # TRL under bf16 autocast

Seed-style = the Politosphere settings on current libraries: TRL SFTTrainer, batch 16, lr 2e-4,
LoRA r=64 alpha=16 on q_proj,v_proj, max_length 512, loss on the completion only, random batch
order, logits for every position. Ours = `train.py` defaults (LoRA r=16 on all linear layers,
batch 8, length-grouped batches, logits only where the loss is, the shared prompt prefix run once
per batch; `--balance none`, so no label is oversampled). Both train the same examples (same
rendered prompts) for the same epochs on
SmolLM2-135M with fp32 weights on the CPU, each in its own process (so peak RSS is its own). Ours
trains under bf16 autocast where the CPU has bf16 instructions (train.py --cpu_bf16 auto); the
seed-style arm runs fp32, as the seeds' scripts do on a CPU, or TRL's bf16=True autocast with --seed_bf16.

Useful tokens/s = tokens of real input (each example's full prompt + answer, no padding) trained
on, divided by the seconds of optimisation (model loading and evaluation excluded).
Validation macro-F1 = evaluate.py score mode on the same validation rows, for both adapters.
Prints a table and writes bench/results/train_speed.json (train_speed_seed_bf16.json with --seed_bf16).
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="politosphere,sst2", help="comma-separated: politosphere, sst2")
    p.add_argument("--epochs", type=int, default=1, help="epochs for both arms (default: 1)")
    p.add_argument("--sst2_samples", type=int, default=240, help="SST-2 rows per split (default: 240)")
    p.add_argument("--arms", default="seed,ours", help="comma-separated: seed, ours (default: both)")
    p.add_argument("--seed_bf16", action="store_true",
                   help="the seed-style arm with TRL's bf16=True (autocast on the CPU) (default: fp32)")
    p.add_argument("--out", default="bench/results", help="results folder (default: bench/results)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--dataset", help=argparse.SUPPRESS)
    p.add_argument("--run_dir", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def peak_rss_gib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def worker_ours(args):
    import train
    from annotune.base.cli import run_cli

    # --balance none: both arms train on the same examples (oversampling, the default, repeats some).
    code = run_cli(train.main, ["--dataset_name", args.dataset, "--epoch", str(args.epochs), "--eval_strategy", "no",
                                "--balance", "none", "--quiet", "--output_dir", args.run_dir, "--max_seq_length", "512"])
    assert code == 0
    result = json.loads((Path(args.run_dir) / "manifest.json").read_text())["result"]
    return {"train_seconds": result["train_seconds"], "useful_tokens": result["useful_tokens"],
            "processed_tokens": result["processed_tokens"], "adapter": result["adapters"][-1]}


def worker_seed(args):
    """TRL SFTTrainer with the seeds' settings on the same rendered examples."""
    import torch
    from datasets import load_from_disk
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from annotune.model.adapters import ADAPTER_INFO
    from annotune.base.cli import quiet_libraries
    from annotune.data.examples import load_dataset_folder
    from annotune.base.files import atomic_write_json
    from annotune.model.models import load_tokenizer, resolve_model_path

    quiet_libraries()
    torch.manual_seed(42)
    _, manifest, spec = load_dataset_folder(args.dataset)
    train = load_from_disk(args.dataset)["train"].select_columns(["prompt", "completion"])
    tokenizer = load_tokenizer("smollm2-135m", for_generation=False)
    tokenizer.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path("smollm2-135m"), dtype=torch.float32)
    config = SFTConfig(output_dir=args.run_dir, per_device_train_batch_size=16, learning_rate=2e-4,
                       num_train_epochs=args.epochs, max_length=512, completion_only_loss=True, packing=False,
                       report_to="none", save_strategy="no", logging_steps=1000,
                       seed=42, disable_tqdm=True, use_cpu=True, bf16=args.seed_bf16, fp16=False,
                       dataloader_num_workers=0)
    peft_config = LoraConfig(r=64, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
                             task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=train, processing_class=tokenizer,
                         peft_config=peft_config)
    # Real (non-pad) tokens of the examples TRL trains on, per epoch.
    useful = sum(len(ids) for ids in trainer.train_dataset["input_ids"]) * args.epochs
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    adapter = Path(args.run_dir) / "adapter"
    trainer.model.save_pretrained(str(adapter))
    tokenizer.save_pretrained(str(adapter))
    spec_dict, merge = spec.saved_form()
    atomic_write_json(adapter / ADAPTER_INFO, {
        "base_model": "smollm2-135m", "kind": "causal", "task": spec.name, "merge": merge,
        "labels": spec.label_names, "prompt": manifest["prompt"], "task_spec": spec_dict, "epoch": args.epochs,
        "dataset": str(Path(args.dataset).resolve())})
    return {"train_seconds": seconds, "useful_tokens": useful, "processed_tokens": useful, "adapter": str(adapter)}


def run_worker(kind, dataset, run_dir, epochs, seed_bf16=False):
    cmd = [sys.executable, __file__, "--worker", kind, "--dataset", str(dataset), "--run_dir", str(run_dir),
           "--epochs", str(epochs)] + ["--seed_bf16"] * seed_bf16
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def macro_f1(adapter, out_dir):
    cmd = [sys.executable, "evaluate.py", "--adapters_name", adapter, "--quiet", "--output_dir", str(out_dir),
           "--bootstrap", "1000"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    metrics = json.loads(next(Path(out_dir).glob("*/validation/metrics.json")).read_text())
    return metrics["macro_f1"], metrics["ci95"]["macro_f1"], metrics["n"]


def prepare(task, folder, sst2_samples):
    import preprocess
    from annotune.base.cli import run_cli

    argv = ["--task", task, "--output_dir", str(folder), "--num_preview", "0"]
    if task == "sst2":
        argv += ["--max_samples", str(sst2_samples)]
    assert run_cli(preprocess.main, argv) == 0


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        result = {"ours": worker_ours, "seed": worker_seed}[args.worker](args)
        result["peak_rss_gib"] = peak_rss_gib()
        print(json.dumps(result))
        return 0
    import platform
    import shutil

    from annotune.base.files import atomic_write_json

    out = REPO / args.out
    work = REPO / "runs" / "bench" / "train_speed"  # scratch: the two arms' data and runs
    shutil.rmtree(work, ignore_errors=True)
    rows = []
    for task in args.tasks.split(","):
        data = work / f"{task}-data"
        prepare(task, data, args.sst2_samples)
        for arm in args.arms.split(","):
            res = run_worker(arm, data, work / f"{task}-{arm}", args.epochs, args.seed_bf16)
            f1, ci, n = macro_f1(res["adapter"], work / f"{task}-{arm}-eval")
            res.update(task=task, arm=arm, seed_bf16=args.seed_bf16,
                       useful_tokens_per_s=res["useful_tokens"] / res["train_seconds"],
                       macro_f1=f1, macro_f1_ci95=ci, validation_n=n, epochs=args.epochs)
            rows.append(res)
            print(f"{task:<13} {arm:<5} {res['useful_tokens_per_s']:8.1f} useful tok/s  "
                  f"{res['peak_rss_gib']:.2f} GiB  macro-F1 {f1:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]", flush=True)
    print("\n| task | pipeline | useful tokens | optimisation s | useful tokens/s | peak RSS GiB | val macro-F1 [95% CI] |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['arm']} | {r['useful_tokens']} | {r['train_seconds']:.0f} | "
              f"{r['useful_tokens_per_s']:.0f} | {r['peak_rss_gib']:.2f} | {r['macro_f1']:.3f} "
              f"[{r['macro_f1_ci95'][0]:.3f}, {r['macro_f1_ci95'][1]:.3f}] |")
    for task in args.tasks.split(",") if {"seed", "ours"} <= set(args.arms.split(",")) else ():
        seed, ours = (next(r for r in rows if r["task"] == task and r["arm"] == a) for a in ("seed", "ours"))
        print(f"{task}: ours / seed-style useful tokens/s = {ours['useful_tokens_per_s'] / seed['useful_tokens_per_s']:.2f}x")
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "rows": rows,
              "command": " ".join(sys.argv)}
    atomic_write_json(out / f"train_speed{'_seed_bf16' * args.seed_bf16}.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
