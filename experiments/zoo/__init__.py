"""Training the zoo: each model's recipe (``recipes``), a fresh Hugging Face model for it (``architectures``), the
trainer (``train``) and the modular-training objectives (``modular_training``)."""
