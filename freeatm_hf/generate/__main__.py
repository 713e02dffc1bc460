import sys

from ..cli import run

run(["generate", *sys.argv[1:]])  # as `freeatm generate`, under `accelerate launch -m freeatm_hf.generate` too
