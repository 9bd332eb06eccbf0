"""Training FLOP efficiency: achieved GFLOP/s of train.py's step against the peak of a plain
matmul measured in the same process.

    .venv/bin/python bench/flops.py                 # Politosphere with definitions, 12 steps
    .venv/bin/python bench/flops.py --task sst2 --steps 12
    .venv/bin/python bench/flops.py -- --lora_dropout 0 --train_batch_size 16    # extra train.py flags
    .venv/bin/python bench/flops.py --profile --out /tmp/flops.json    # where the time goes (slower)

FLOPs of a LoRA step ~= 4 x N x T: forward 2 x N x T, backward through the activations 2 x N x T
(the frozen weights get no weight gradient; LoRA's own are negligible), with N = the parameters of
the decoder's linear layers (embeddings are a lookup; the output layer only runs where the loss is
and is left out) and T = the tokens the forwards actually ran (the shared prefix once per batch).
Attention score FLOPs are left out too, so the ratio is a slight underestimate.
Peak = the best torch.matmul on 2048x2048 matrices, on the same threads, in the dtype the step's matmuls
ran in: bf16 where train.py trained under bf16 autocast (--cpu_bf16), else fp32; the fp32 peak is
printed too, for runs in the two precisions to be compared.
Prints a table and writes bench/results/flops.json; --profile adds torch.profiler's top operators,
by name and by input shape (the profiler's overhead then lowers the ratio).
"""
import argparse
import contextlib
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
    p.add_argument("--task", default="politosphere", help="task spec (default: politosphere)")
    p.add_argument("--steps", type=int, default=12, help="optimizer steps to time (default: 12)")
    p.add_argument("--out", default="bench/results/flops.json", help="JSON written here")
    p.add_argument("--profile", action="store_true", help="also print the top operators of the run (default: off)")
    p.add_argument("train_args", nargs="*", help="extra train.py flags, after -- (default: none, train.py's defaults)")
    return p.parse_args(argv)


def matmul_peak(size=2048, repeats=8, dtype=None):
    import torch

    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best / 1e9


def profile_table(profiler, top=20, ops=("aten::mm", "aten::mul", "aten::copy_"), shapes=8) -> str:
    """The top operators by self time (share of the total, calls), then the costliest input shapes of
    a few of them: where the step goes, and which tensors the memory-bound passes run over."""
    averages = profiler.key_averages()
    total = sum(e.self_cpu_time_total for e in averages)
    lines = [f"profiled self time {total / 1e6:.1f} s in {sum(e.count for e in averages)} operator calls", "",
             "| operator | self s | share | calls |", "|---|---|---|---|"]
    for e in sorted(averages, key=lambda e: -e.self_cpu_time_total)[:top]:
        lines.append(f"| {e.key[:60]} | {e.self_cpu_time_total / 1e6:.2f} | {100 * e.self_cpu_time_total / total:.1f}% "
                     f"| {e.count} |")
    by_shape = profiler.key_averages(group_by_input_shape=True)
    for name in ops:
        lines += ["", f"{name} by input shapes:"]
        for e in sorted((e for e in by_shape if e.key == name), key=lambda e: -e.self_cpu_time_total)[:shapes]:
            lines.append(f"  {e.self_cpu_time_total / 1e6:6.2f} s {e.count:6d} calls  {e.input_shapes}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    import tempfile

    import torch

    from transformers import AutoModelForCausalLM

    import train
    from annotune.base.cli import run_cli
    from annotune.base.files import atomic_write_json
    from annotune.model.models import load_config

    peaks_before = {dtype: matmul_peak(dtype=dtype) for dtype in (torch.float32, torch.bfloat16)}
    run_dir = Path(tempfile.mkdtemp(prefix="annotune-flops-"))
    profiler = (torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)
                if args.profile else contextlib.nullcontext())
    with profiler:
        # --balance none: the same batches as the measurements in docs/benchmarks.md (a later flag wins).
        code = run_cli(train.main, ["--task", args.task, "--stop_condition", "steps", "--steps", str(args.steps),
                                    "--eval_strategy", "no", "--balance", "none", "--quiet",
                                    "--output_dir", str(run_dir / "run"), *args.train_args])
    assert code == 0
    manifest = json.loads((run_dir / "run" / "manifest.json").read_text())
    result = manifest["result"]
    dtype = torch.bfloat16 if result.get("bf16_autocast") else torch.float32
    peak_before, peak_after = peaks_before[dtype], matmul_peak(dtype=dtype)
    fp32_peak = max(peaks_before[torch.float32], peak_after if dtype == torch.float32 else 0.0)
    # Parameter count only: the architecture on the meta device, no weights loaded a second time.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(load_config(manifest["args"]["model_name"]))
    n_linear = sum(m.weight.numel() for name, m in model.model.named_modules() if isinstance(m, torch.nn.Linear))
    flops = 4 * n_linear * result["processed_tokens"]
    achieved = flops / result["train_seconds"] / 1e9
    peak = max(peak_before, peak_after)
    table = {"task": args.task, "train_args": args.train_args, "steps": result["steps"], "linear_params": n_linear,
             "processed_tokens": result["processed_tokens"], "train_seconds": result["train_seconds"],
             "achieved_gflops": achieved, "matmul_peak_gflops": peak, "matmul_peak_before": peak_before,
             "matmul_peak_after": peak_after, "ratio": achieved / peak, "matmul_dtype": str(dtype)[6:],
             "fp32_matmul_peak_gflops": fp32_peak, "ratio_to_fp32_peak": achieved / fp32_peak,
             "threads": torch.get_num_threads(),
             "machine": f"{platform.machine()}, {os.cpu_count()} cores", "command": " ".join(sys.argv)}
    print("| task | extra flags | steps | tokens run | seconds | achieved GFLOP/s | matmuls in | matmul peak GFLOP/s "
          "| ratio | fp32 peak GFLOP/s | ratio to fp32 peak |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.task} | {' '.join(args.train_args) or '-'} | {result['steps']} | {result['processed_tokens']} | "
          f"{result['train_seconds']:.1f} | {achieved:.1f} | {table['matmul_dtype']} | {peak:.1f} | "
          f"{100 * achieved / peak:.0f}% | {fp32_peak:.1f} | {100 * achieved / fp32_peak:.0f}% |")
    if args.profile:
        print(profile_table(profiler))
    atomic_write_json(REPO / args.out, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
