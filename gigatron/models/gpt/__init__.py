"""The gpt family: `config` (the model section, light to import), `model` (layers, ModelSpec)."""
