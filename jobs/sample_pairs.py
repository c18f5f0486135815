"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/sample_pairs.py ...` (= `raypipe sample-pairs ...`)."""
import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["sample-pairs", *sys.argv[1:]]))
