"""Ray job entrypoint of `raypipe export-reward` (the same code, the same arguments):

ray job submit --working-dir . -- python jobs/export_reward.py --config FILE --out DIR [key=value ...]
"""

import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["export-reward", *sys.argv[1:]]))
