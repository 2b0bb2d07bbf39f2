"""Fine-tuning LLaVA models: data and label masking, freezing presets, LoRA, and the training loop."""
