import sys

from ..cli import run

run(["train", *sys.argv[1:]])  # as `freeatm train`, under `accelerate launch -m freeatm_hf.train` too
