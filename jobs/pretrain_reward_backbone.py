"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/pretrain_reward_backbone.py ...` (= `raypipe pretrain-reward-backbone ...`)."""
import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain-reward-backbone", *sys.argv[1:]]))
