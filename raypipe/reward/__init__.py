"""VideoReward: model, processor, losses, metrics."""
