"""Ray job entrypoint of `raypipe pretrain-generator` (the same code, the same arguments):

ray job submit --working-dir . -- python jobs/pretrain_generator.py --config FILE --out DIR [key=value ...]
"""

import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain-generator", *sys.argv[1:]]))
