"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/demo.py ...` (= `raypipe demo ...`)."""
import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
