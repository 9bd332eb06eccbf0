"""Training FLOP efficiency: achieved GFLOP/s of train.py's step against the peak of a plain
matmul measured in the same process.

    .venv/bin/python bench/flops.py                 # Politosphere with definitions, 12 steps
    .venv/bin/python bench/flops.py --task sst2 --steps 12
    .venv/bin/python bench/flops.py -- --lora_dropout 0 --train_batch_size 16    # extra train.py flags

FLOPs of a LoRA step ~= 4 x N x T: forward 2 x N x T, backward through the activations 2 x N x T
(the frozen weights get no weight gradient; LoRA's own are negligible), with N = the parameters of
the decoder's linear layers (embeddings are a lookup; the output layer only runs where the loss is
and is left out) and T = the tokens the forwards actually ran (the shared prefix once per batch).
Attention score FLOPs are left out too, so the ratio is a slight underestimate.
Peak = the best of fp32 torch.matmul on 2048x2048 matrices, on the same threads.
Prints a table and writes bench/results/flops.json.
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
    p.add_argument("--task", default="politosphere", help="task spec (default: politosphere)")
    p.add_argument("--steps", type=int, default=12, help="optimizer steps to time (default: 12)")
    p.add_argument("--out", default="bench/results/flops.json", help="JSON written here")
    p.add_argument("train_args", nargs="*", help="extra train.py flags, after -- (default: none, train.py's defaults)")
    return p.parse_args(argv)


def matmul_peak(size=2048, repeats=8):
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best / 1e9


def main(argv=None):
    args = parse_args(argv)
    import tempfile

    import torch

    import train
    from annotune.io import run_cli
    from annotune.models import load_model

    peak_before = matmul_peak()
    run_dir = Path(tempfile.mkdtemp(prefix="annotune-flops-"))
    code = run_cli(train.main, ["--task", args.task, "--stop_condition", "steps", "--steps", str(args.steps),
                                "--eval_strategy", "no", "--quiet", "--output_dir", str(run_dir / "run"), *args.train_args])
    assert code == 0
    result = json.loads((run_dir / "run" / "manifest.json").read_text())["result"]
    peak_after = matmul_peak()
    model = load_model("smollm2-135m", "causal", "none")
    n_linear = sum(m.weight.numel() for name, m in model.model.named_modules() if isinstance(m, torch.nn.Linear))
    flops = 4 * n_linear * result["processed_tokens"]
    achieved = flops / result["train_seconds"] / 1e9
    peak = max(peak_before, peak_after)
    table = {"task": args.task, "train_args": args.train_args, "steps": result["steps"], "linear_params": n_linear,
             "processed_tokens": result["processed_tokens"], "train_seconds": result["train_seconds"],
             "achieved_gflops": achieved, "matmul_peak_gflops": peak, "matmul_peak_before": peak_before,
             "matmul_peak_after": peak_after, "ratio": achieved / peak, "threads": torch.get_num_threads(),
             "machine": f"{platform.machine()}, {os.cpu_count()} cores", "command": " ".join(sys.argv)}
    print("| task | extra flags | steps | tokens run | seconds | achieved GFLOP/s | matmul peak GFLOP/s | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {args.task} | {' '.join(args.train_args) or '-'} | {result['steps']} | {result['processed_tokens']} | {result['train_seconds']:.1f} | "
          f"{achieved:.1f} | {peak:.1f} | {100 * achieved / peak:.0f}% |")
    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
