"""Ray job entrypoint of `raypipe pretrain-reward-backbone` (the same code, the same arguments):

ray job submit --working-dir . -- python jobs/pretrain_reward_backbone.py --config FILE --out DIR [key=value ...]
"""

import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain-reward-backbone", *sys.argv[1:]]))
