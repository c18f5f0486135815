"""Ray job entrypoint of `raypipe pairs` (the same code, the same arguments):

ray job submit --working-dir . -- python jobs/pairs.py --config FILE --out DIR [key=value ...]
"""

import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["pairs", *sys.argv[1:]]))
