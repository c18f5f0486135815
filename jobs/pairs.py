"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/pairs.py ...` (= `raypipe pairs ...`)."""
import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["pairs", *sys.argv[1:]]))
