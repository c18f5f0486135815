"""Ray job entrypoint of `raypipe train-flow` (the same code, the same arguments):

ray job submit --working-dir . -- python jobs/train_flow.py --config FILE --out DIR [key=value ...]
"""

import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-flow", *sys.argv[1:]]))
