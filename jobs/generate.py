"""Ray job entrypoint of `raypipe generate` (the same code, the same arguments):

ray job submit --working-dir . -- python jobs/generate.py --config FILE --out DIR [key=value ...]
"""

import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
