"""The model: loading, quantization, precision and LoRA (models.py), forward passes and label
scoring (lm.py), the CPU and memory patches (prefix_attention.py, lora_dropout.py,
lora_update.py, checkpointing.py), adapter folders (adapters.py). Imports the base only."""
