"""Ray job entrypoint of `raypipe train-online` (the same code, the same arguments):

ray job submit --working-dir . -- python jobs/train_online.py --config FILE --out DIR [key=value ...]
"""

import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-online", *sys.argv[1:]]))
