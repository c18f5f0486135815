"""Ray job entrypoint of `raypipe synth` (the same code, the same arguments):

ray job submit --working-dir . -- python jobs/synth.py --config FILE --out DIR [key=value ...]
"""

import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["synth", *sys.argv[1:]]))
