"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/synth.py ...` (= `raypipe synth ...`)."""
import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["synth", *sys.argv[1:]]))
