"""Ray job entrypoint of `raypipe train-latent-reward` (the same code, the same arguments):

ray job submit --working-dir . -- python jobs/train_latent_reward.py --config FILE --out DIR [key=value ...]
"""

import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-latent-reward", *sys.argv[1:]]))
