"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/train_flow.py ...` (= `raypipe train-flow ...`)."""
import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-flow", *sys.argv[1:]]))
