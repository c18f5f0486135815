"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/generate.py ...` (= `raypipe generate ...`)."""
import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
