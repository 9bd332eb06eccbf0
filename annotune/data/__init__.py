"""The data side: label spellings and merges (labels.py), the task YAML's keys (schema.py), task
specs (task.py), the raw rows of every source layout (sources.py), examples and splits
(examples.py), prompt templates and tokenisation (prompts.py). Imports the base only."""
