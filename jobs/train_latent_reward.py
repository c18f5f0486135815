"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/train_latent_reward.py ...` (= `raypipe train-latent-reward ...`)."""
import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-latent-reward", *sys.argv[1:]]))
