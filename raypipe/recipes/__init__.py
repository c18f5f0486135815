"""One module per job: its config dataclass (the header comment shows the command), its `train_func(config)` for
Ray Train jobs, and `run(cfg)`. Only the CLI table, `bench/` and other recipes (the demo, sample-pairs,
pretrain-generator compose jobs) import a recipe."""
