"""freeatm space / freeatm push-space: run the mask viewer locally, or publish it as a Hub Space.

    freeatm space                                  # bundled example dataset + embedded pipeline
    freeatm space --dataset outputs/scenes --pipeline path/or/id
    freeatm push-space user/freeatm-viewer
"""

import argparse


def main(argv=None):
    from .spaces import load_app

    load_app().main(argv)


def push_main(argv=None):
    from .spaces import push_space

    p = argparse.ArgumentParser(prog="freeatm push-space", description="Create or update the mask viewer Space.")
    p.add_argument("repo_id", help="the Space to create or update, user/name (a bare name: under the token's user)")
    p.add_argument("--private", action="store_true", default=None,
                   help="create the Space as private (default: the namespace's default visibility)")
    args = p.parse_args(argv)
    print(push_space(args.repo_id, private=args.private))
