"""freeatm push: upload a finished dataset or model folder to the Hub.

    freeatm push outputs/scenes user/scenes                 # a dataset folder
    freeatm push outputs/simclr user/simclr-atm --repo_type model --private
    freeatm push-model outputs/simclr user/simclr-atm      # the same as --repo_type model
    freeatm push-model outputs/simclr user/simclr-atm --timm   # and the encoder for timm as user/simclr-atm-timm
    freeatm push-model outputs/mae user/mae-atm --exports       # with vit/ (ViTModel) in the repo, for stock loaders
    freeatm export outputs/simclr simclr-r50.pth --to torchvision   # an export on disk, no push
"""

import argparse


def _push_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("folder", help="the folder to upload (it must hold its README.md card)")
    p.add_argument("repo_id", help="the Hub repo, user/name (a bare name goes under the token's user)")
    p.add_argument("--private", action="store_true", default=None,
                   help="create the repo as private (default: the namespace's default visibility)")
    p.add_argument("--revision", default=None, help="branch to push to (created from main if missing)")
    p.add_argument("--commit_message", default=None, help="default: \"Upload <type> with freeatm_hf <version>\"")
    return p


def make_parser():
    p = _push_parser("freeatm push", __doc__.splitlines()[0])
    p.add_argument("--repo_type", default="dataset", choices=["dataset", "model", "space"],
                   help="what the folder is (default: dataset)")
    return p


def main(argv=None):
    from .push import push_folder

    args = make_parser().parse_args(argv)
    pushed = push_folder(args.folder, args.repo_id, repo_type=args.repo_type, private=args.private,
                         revision=args.revision, commit_message=args.commit_message)
    print(pushed)
    return pushed


def push_model_main(argv=None):
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    p = _push_parser("freeatm push-model", "Upload a checkpoint folder (with its card) as a model repo.")
    # A wrong argument, said as argparse says one (exit 2), in either spelling: `--repo_type=dataset` passed the
    # check, and a bare SystemExit message exited 1.
    if any(a == "--repo_type" or a.startswith("--repo_type=") for a in argv):
        p.error("--repo_type: push-model always pushes a model repo; use `freeatm push` for other types")
    p.add_argument("--timm", action="store_true",
                   help="also push the image encoder exported for timm as REPO_ID-timm (what the card's timm "
                        "snippet loads)")
    p.add_argument("--exports", action="store_true",
                   help="first write the method's stock exports into the folder (torchvision/<arch>.pth, vit/, "
                        "blip-retrieval/, blip-captioning/), so the repo serves them without freeatm_hf")
    args = p.parse_args(argv)
    from .push import push_folder, push_timm_export

    if args.exports:
        from .export import add_stock_exports

        print("exported:", ", ".join(add_stock_exports(args.folder)) or "nothing (timm only)")

    if args.timm:  # both repos checked before the first upload
        from .export import check_timm_export
        from .push import check_private_possible

        check_private_possible(f"{args.repo_id}-timm", "model", args.private)
        check_timm_export(args.folder)
    pushed = push_folder(args.folder, args.repo_id, repo_type="model", private=args.private,
                         revision=args.revision, commit_message=args.commit_message)
    print(pushed)
    if args.timm:  # named with the namespace the Hub gave, as the card names it
        print(push_timm_export(args.folder, f"{pushed.repo_id}-timm", private=args.private,
                               source_repo=pushed.repo_id, revision=args.revision))
    return pushed


def export_main(argv=None):
    from .export import STOCK_EXPORTS, export_checkpoint

    kinds = sorted({"timm", *(k for v in STOCK_EXPORTS.values() for k in v)})
    p = argparse.ArgumentParser(prog="freeatm export", description="Export a checkpoint's encoder for a stock "
                                "library (loads without freeatm_hf).")
    p.add_argument("folder", help="a freeatm checkpoint folder (a training output_dir)")
    p.add_argument("out", help="the export's folder (timm, vit, blip-*) or file (torchvision)")
    p.add_argument("--to", required=True, choices=kinds, help="the library to load it with")
    args = p.parse_args(argv)
    if not args.out.strip():  # an empty path wrote the export's files into the working directory
        p.error("out: give the export's folder or file")
    out = export_checkpoint(args.folder, args.out, args.to)
    print(out)
    return out


if __name__ == "__main__":
    main()
