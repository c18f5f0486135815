"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/pretrain_generator.py ...` (= `raypipe pretrain-generator ...`)."""
import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain-generator", *sys.argv[1:]]))
