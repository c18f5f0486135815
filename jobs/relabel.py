"""Ray job entrypoint of `raypipe relabel` (the same code, the same arguments):

ray job submit --working-dir . -- python jobs/relabel.py --config FILE --out DIR [key=value ...]
"""

import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["relabel", *sys.argv[1:]]))
