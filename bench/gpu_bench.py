"""The GPU check's measurements: a Llama-2-7B-shaped model (random weights: fine for
speed), 4-bit NF4 with bf16 compute, on the rendered Politosphere-with-definitions examples.

    python bench/gpu_bench.py --out $OUT/gpu_bench.json      # on the GPU machine (about 5 minutes)
    python bench/gpu_bench.py --tiny --out /tmp/gpu.json     # tiny shapes on the CPU (seconds): keeps it working

1. training, useful tokens/s and peak GPU memory: train.py's path (AnnotuneTrainer: LoRA r16 on all
   linear layers, length-grouped batches, shared prefix, logits only where the loss is) with
   activation checkpointing off (`ours`) and on (`ours+ckpt`), against the seed-style TRL SFTTrainer
   (LoRA r64 on q/v, random order, completion-only loss, its checkpointing on: `seed`), at each
   `--train_batches` size, max length 512, the same examples; `--steps` timed optimizer steps after
   `--warmup`;
2. labelling, examples/s: score mode (every label scored; end to end, pre-tokenised, and one
   forward per label) against greedy generation of the tuned answer's length (the labels' mean
   token count plus EOS: 5 for Politosphere's 7 labels) and of all 80 new tokens (a random model
   never stops at EOS, so both bounds are timed), same prompts, batch 16.

Useful tokens = real tokens of the examples (no padding); processed = what the forwards ran (a
shared prefix counts once per batch). The JSON is written after each stage, so a cut-off run still
reports; the device, the versions and the command are in it.
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results/gpu_bench.json", help="results JSON (default: %(default)s)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes on any device (a smoke test)")
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps per arm (default: 8)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    p.add_argument("--batch_size", type=int, default=16, help="examples per labelling batch (default: 16)")
    p.add_argument("--train_batches", default="16", help="training batch sizes, comma-separated (default: %(default)s)")
    p.add_argument("--arms", default="ours,ours+ckpt,seed",
                   help="training arms: ours (train.py's path, checkpointing off), ours+ckpt (--gradient_checkpointing "
                        "on), seed (TRL SFTTrainer, its checkpointing on) (default: %(default)s)")
    p.add_argument("--label_examples", type=int, default=64, help="prompts labelled per method (default: 64)")
    p.add_argument("--tokenizer", default="smollm2-135m",
                   help="tokenizer (alias or folder) of the random model (default: %(default)s)")
    p.add_argument("--work", default="runs/bench/gpu", help="scratch folder for the random model (default: %(default)s)")
    return p.parse_args(argv)


def device_info() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, memory_gib=round(props.total_memory / 2**30, 1), capability=list(
            torch.cuda.get_device_capability(0)))
    else:
        info["device"] = f"cpu ({os.cpu_count()} cores)"
    for name in ("transformers", "peft", "trl", "bitsandbytes", "accelerate"):
        try:
            info[name] = __import__(name).__version__
        except Exception as err:  # noqa: BLE001 - a missing package is reported, not fatal here
            info[name] = f"missing ({type(err).__name__})"
    return info


def random_model_folder(args, tokenizer) -> Path:
    """A random Llama-2-7B-shaped model (tiny with --tiny) saved once, so it loads through
    annotune's own 4-bit path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = REPO / args.work / ("llama-tiny" if args.tiny else "llama-7b-shape")
    if (folder / "config.json").exists():
        return folder
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4) if args.tiny else dict(hidden_size=4096, intermediate_size=11008,
                                                                num_hidden_layers=32, num_attention_heads=32,
                                                                num_key_value_heads=32)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shape)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if device == "cuda" else torch.float32)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    del model
    reset_memory()
    return folder


def examples(tokenizer):
    """The rendered Politosphere-with-definitions examples (llama2-chat), as train.py builds them."""
    from annotune.data.examples import prepare_splits
    from annotune.data.prompts import Prompter
    from annotune.data.task import load_task

    spec = load_task("politosphere")
    splits, _ = prepare_splits(spec, Prompter(spec, "llama2-chat", True, tokenizer), val_ratio=0.0)
    return spec, splits["train"]


class StepClock:
    """Seconds of the timed steps (after warmup), CUDA synchronised."""

    def __init__(self, warmup):
        from transformers import TrainerCallback

        clock = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                clock.sync()
                clock.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                clock.sync()
                if state.global_step > warmup:
                    clock.seconds += time.perf_counter() - clock.start
                elif state.global_step == warmup:
                    clock.at_warmup = {k: clock.counter[k] for k in ("useful_tokens", "processed_tokens")}

        self.callback, self.seconds, self.start, self.warmup = Callback(), 0.0, 0.0, warmup
        self.counter = {"useful_tokens": 0, "processed_tokens": 0}  # replaced by the arm's own counter
        self.at_warmup = {"useful_tokens": 0, "processed_tokens": 0}

    @staticmethod
    def sync():
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def result(self) -> dict:
        useful = self.counter["useful_tokens"] - self.at_warmup["useful_tokens"]
        processed = self.counter["processed_tokens"] - self.at_warmup["processed_tokens"]
        return {"timed_seconds": round(self.seconds, 3), "useful_tokens": useful, "processed_tokens": processed,
                "useful_tokens_per_s": useful / self.seconds if self.seconds else None}


def quantization() -> str:
    import torch

    return "4bit" if torch.cuda.is_available() else "none"  # CPU (--tiny): bitsandbytes' CPU path is a crawl


def peak_memory_gib():
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def allocated_gib():
    import torch

    return round(torch.cuda.memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def memory_after_load() -> dict:
    """GPU memory held by the loaded model, the peak while loading, then peak stats restarted so the
    arm's peak_gpu_gib is that of training alone."""
    import torch

    out = {"model_loaded_gib": allocated_gib(), "load_peak_gib": peak_memory_gib()}
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    return out


def reset_memory():
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def train_ours(args, folder, tokenizer, spec, rows, batch: int, checkpoint: bool) -> dict:
    from annotune.model.models import add_lora, load_model
    from annotune.training.trainer import AnnotuneTrainer, LossOptions
    from annotune.training.training_set import build_features

    model = add_lora(load_model(str(folder), "causal", quantization()), "causal", 16, 32, 0.05, "all-linear")
    memory = memory_after_load()
    feats, _ = build_features("causal", tokenizer, rows, spec.label_names, 512)
    clock = StepClock(args.warmup)
    options = LossOptions(kind="causal", gradient_checkpointing="on" if checkpoint else "off")
    trainer = AnnotuneTrainer(model, ours_training_args(args, batch), feats, tokenizer, options, [clock.callback])
    clock.counter = trainer.totals  # useful_tokens / processed_tokens, counted by compute_loss
    trainer.train()
    out = dict(clock.result(), peak_gpu_gib=peak_memory_gib(), lora="r16 all-linear", shared_prefix=len(trainer.prefix),
               activation_checkpointing=trainer.checkpoint, batch=batch, **memory)
    del trainer, model
    reset_memory()
    return out


def train_seed(args, folder, tokenizer, spec, rows, batch: int, checkpoint: bool = True) -> dict:
    """TRL SFTTrainer as the seeds ran it (current TRL), same examples and batch."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    kwargs = {"dtype": torch.bfloat16 if cuda else torch.float32}
    if cuda:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    memory = memory_after_load()
    data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    config = training_args(args, batch, "seed", SFTConfig, max_length=512, completion_only_loss=True, packing=False,
                           gradient_checkpointing=checkpoint)
    peft = LoraConfig(r=64, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    tokenizer.padding_side = "right"
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer, peft_config=peft)
    clock = StepClock(args.warmup)
    clock.counter = {"useful_tokens": 0, "processed_tokens": 0}
    collate = trainer.data_collator

    def counting(features):  # every token TRL feeds the model (no shared prefix: processed = useful)
        batch = collate(features)
        n = int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].numel())
        clock.counter["useful_tokens"] += n
        clock.counter["processed_tokens"] += n
        return batch

    trainer.data_collator = counting
    trainer.add_callback(clock.callback)
    trainer.train()
    out = dict(clock.result(), peak_gpu_gib=peak_memory_gib(), lora="r64 q_proj,v_proj",
               activation_checkpointing=bool(config.gradient_checkpointing), batch=batch, **memory)
    del trainer, model
    return out


def ours_training_args(args, batch: int):
    """train.py's own TrainingArguments (trainer_arguments), for a fixed number of steps, no saving."""
    import dataclasses

    from annotune.training.trainer import Schedule, trainer_arguments

    schedule = Schedule(batch_size=batch, epochs=100, max_steps=args.warmup + args.steps, progress=False)
    return dataclasses.replace(trainer_arguments(schedule, REPO / args.work / "ours"), save_strategy="no")


def training_args(args, batch, name, cls, **extra):
    import torch

    cuda = torch.cuda.is_available()
    return cls(output_dir=str(REPO / args.work / name), per_device_train_batch_size=batch,
               learning_rate=2e-4, max_steps=args.warmup + args.steps, save_strategy="no", report_to="none",
               logging_strategy="no", disable_tqdm=True, use_cpu=not cuda, bf16=cuda, seed=42,
               dataloader_num_workers=0, **extra)


def label_speed(args, folder, tokenizer, spec, rows) -> dict:
    """Examples/s: score mode, greedy generation of the answer's length, and of 80 tokens."""
    from annotune.model import lm
    from annotune.labelling.annotator import Annotator
    from annotune.model.models import load_model
    from annotune.data.prompts import Prompter, encode_prompt

    model = load_model(str(folder), "causal", quantization()).eval()
    prompter = Prompter(spec, "llama2-chat", True, tokenizer)
    annotator = Annotator(model, tokenizer, spec, prompter, "causal", "random")
    prompts = [prompter.prompt(r["text"]) for r in (rows * (args.label_examples // len(rows) + 1))[:args.label_examples]]
    answer = round(sum(len(tokenizer(prompter.completion(l), add_special_tokens=False)["input_ids"]) + 1
                       for l in spec.label_names) / len(spec.label_names))  # mean answer tokens + EOS

    def timed(run):
        StepClock.sync()
        start = time.perf_counter()
        run()
        StepClock.sync()
        return len(prompts) / (time.perf_counter() - start)

    annotator.score(prompts[: args.batch_size], args.batch_size)  # warm-up
    start = time.perf_counter()
    prompt_ids = [encode_prompt(tokenizer, p) for p in prompts]
    completions = [annotator.label_completions(p, ids) for p, ids in zip(prompts, prompt_ids)]
    tokenize_s = time.perf_counter() - start
    out = {"examples": len(prompts), "answer_tokens": answer, "labels": len(spec.label_names),
           "score_examples_per_s": timed(lambda: annotator.score(prompts, args.batch_size)),
           "tokenize_seconds": round(tokenize_s, 3),
           "score_pretokenized_examples_per_s": timed(lambda: lm.score_completions(
               model, prompt_ids, completions, args.batch_size)),
           "score_pretokenized_batch64_examples_per_s": timed(lambda: lm.score_completions(
               model, prompt_ids, completions, 64)),
           "score_one_forward_per_label_examples_per_s": timed(lambda: lm.score_completions(
               model, prompt_ids, completions, args.batch_size, packed=False)),
           "generate_answer_examples_per_s": timed(lambda: annotator.generate(
               prompts, answer, args.batch_size, min_new_tokens=answer)),
           "generate_80_examples_per_s": timed(lambda: annotator.generate(
               prompts, 80, args.batch_size, min_new_tokens=80)),
           "peak_gpu_gib": peak_memory_gib()}
    out["score_vs_generate_answer"] = out["score_examples_per_s"] / out["generate_answer_examples_per_s"]
    out["score_vs_generate_80"] = out["score_examples_per_s"] / out["generate_80_examples_per_s"]
    return out


def main(argv=None):
    args = parse_args(argv)
    from annotune.base.cli import quiet_libraries
    from annotune.base.files import atomic_write_json
    from annotune.model.models import load_tokenizer

    quiet_libraries()
    out = Path(args.out)
    result = {"command": " ".join(sys.argv), "tiny": args.tiny, "device": device_info(), "quantization": quantization()}
    atomic_write_json(out, result)
    tokenizer = load_tokenizer(args.tokenizer, for_generation=False)
    spec, rows = examples(tokenizer)
    start = time.time()
    folder = random_model_folder(args, tokenizer)
    result["model"] = {"folder": str(folder), "seconds_to_build": round(time.time() - start, 1),
                       "gib_left_on_gpu_after_build": allocated_gib(),
                       "config": json.loads((folder / "config.json").read_text())}
    train = result.setdefault("train", {})
    arms = {"ours": (train_ours, False), "ours+ckpt": (train_ours, True), "seed": (train_seed, True)}
    for batch in (int(b) for b in args.train_batches.split(",")):
        for arm in args.arms.split(","):
            run, checkpoint = arms[arm]
            reset_memory()
            train[f"{arm}|{batch}"] = run(args, folder, tokenizer, spec, rows, batch, checkpoint)
            atomic_write_json(out, result)
            print(f"train {arm} batch {batch}: {train[f'{arm}|{batch}']}", flush=True)
        for arm in ("ours", "ours+ckpt"):
            if f"{arm}|{batch}" in train and f"seed|{batch}" in train:
                train[f"{arm}_vs_seed_useful_tokens_per_s|{batch}"] = (
                    train[f"{arm}|{batch}"]["useful_tokens_per_s"] / train[f"seed|{batch}"]["useful_tokens_per_s"])
    reset_memory()
    result["label"] = label_speed(args, folder, tokenizer, spec, rows)
    atomic_write_json(out, result)
    ratios = ", ".join(f"{k.split('_vs')[0]} batch {k.split('|')[1]} {v:.2f}x" for k, v in train.items() if "_vs_" in k)
    print(f"label: {result['label']}\ntraining against seed-style TRL: {ratios}; "
          f"score vs generation {result['label']['score_vs_generate_answer']:.2f}x (answer length), "
          f"{result['label']['score_vs_generate_80']:.2f}x (80 tokens) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
