"""Ray job entrypoint of `raypipe demo` (the same code, the same arguments):

ray job submit --working-dir . -- python jobs/demo.py --config FILE --out DIR [key=value ...]
"""

import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
