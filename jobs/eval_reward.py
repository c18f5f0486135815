"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/eval_reward.py ...` (= `raypipe eval-reward ...`)."""
import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval-reward", *sys.argv[1:]]))
