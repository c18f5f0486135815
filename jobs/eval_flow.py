"""Ray job entrypoint of `raypipe eval-flow` (the same code, the same arguments):

ray job submit --working-dir . -- python jobs/eval_flow.py --config FILE --out DIR [key=value ...]
"""

import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval-flow", *sys.argv[1:]]))
