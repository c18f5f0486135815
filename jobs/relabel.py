"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/relabel.py ...` (= `raypipe relabel ...`)."""
import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["relabel", *sys.argv[1:]]))
