"""Training: TRL SFT / DPO wrappers, LoRA via peft."""
