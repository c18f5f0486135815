"""Ray Train jobs: the worker loops (plain PyTorch + DeepSpeed) and their drivers."""
