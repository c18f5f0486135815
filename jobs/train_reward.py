"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/train_reward.py ...` (= `raypipe train-reward ...`)."""
import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-reward", *sys.argv[1:]]))
