"""Fine-tuning backends: LoRA with TRL/PEFT on CPU or CUDA (``lora.py``) and ``mlx_lm`` on Apple
Silicon (``mlx.py``), each ``setup → fit → evaluate``; ``backends.py`` says which run here."""
