"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/eval_flow.py ...` (= `raypipe eval-flow ...`)."""
import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval-flow", *sys.argv[1:]]))
