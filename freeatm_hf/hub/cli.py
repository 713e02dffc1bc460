"""freeatm push: upload a finished dataset or model folder to the Hub.

    freeatm push outputs/scenes user/scenes                 # a dataset folder
    freeatm push outputs/simclr user/simclr-atm --repo_type model --private
    freeatm push-model outputs/simclr user/simclr-atm      # the same as --repo_type model
    freeatm push-model outputs/simclr user/simclr-atm --timm   # and the encoder for timm as user/simclr-atm-timm
"""

import argparse


def make_parser():
    p = argparse.ArgumentParser(prog="freeatm push", description=__doc__.splitlines()[0])
    p.add_argument("folder", help="the folder to upload (it must hold its README.md card)")
    p.add_argument("repo_id", help="user/name on the Hub")
    p.add_argument("--repo_type", default="dataset", choices=["dataset", "model", "space"])
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--revision", default=None, help="branch to push to")
    p.add_argument("--commit_message", default=None)
    return p


def main(argv=None):
    from .push import push_folder

    args = make_parser().parse_args(argv)
    url = push_folder(args.folder, args.repo_id, repo_type=args.repo_type, private=args.private,
                      revision=args.revision, commit_message=args.commit_message)
    print(url)
    return url


def push_model_main(argv=None):
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--repo_type" in argv:
        raise SystemExit("freeatm push-model always pushes a model repo; use `freeatm push` for other types")
    p = make_parser()
    p.prog = "freeatm push-model"
    p.add_argument("--timm", action="store_true",
                   help="also push the image encoder exported for timm as REPO_ID-timm (what the card's timm "
                        "snippet loads)")
    args = p.parse_args(argv + ["--repo_type", "model"])
    from .push import push_folder, push_timm_export

    url = push_folder(args.folder, args.repo_id, repo_type="model", private=args.private, revision=args.revision,
                      commit_message=args.commit_message)
    print(url)
    if args.timm:
        print(push_timm_export(args.folder, f"{args.repo_id}-timm", private=args.private, source_repo=args.repo_id))
    return url


if __name__ == "__main__":
    main()
