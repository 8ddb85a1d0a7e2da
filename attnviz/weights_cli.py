"""``python -m attnviz.weights``: list, verify, import and add model sets.

    python -m attnviz.weights list
    python -m attnviz.weights verify [--set NAME]
    python -m attnviz.weights import imagenet [--set NAME] [--torchvision-weights V1|V2] [--files DIR]
    python -m attnviz.weights import SOURCE [--file PATH] [--set NAME] [--torchvision-weights V1|V2]
    python -m attnviz.weights add FILE --variant V --classes FILE.txt --set NAME [--resize N --crop N]

Every subcommand takes ``--weights-dir DIR`` (default: $ATTNVIZ_WEIGHTS or the repository's weights/).
Errors a user can fix print one ``error:`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attnviz.errors import AttnvizError
from attnviz.models import VARIANT_TITLES, VARIANTS
from attnviz.weights import Manifest, ModelEntry, default_weights_dir, verify

IMAGENET = "imagenet"  # the three published models in one step (attnviz.importers.IMAGENET_SOURCES)


def _parser() -> argparse.ArgumentParser:
    from attnviz.importers import IMAGENET_SOURCES, SOURCES, TORCHVISION_WEIGHTS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--weights-dir", type=Path, default=None,
                        help=f"folder holding manifest.json (default: {default_weights_dir()})")
    parser = argparse.ArgumentParser(prog="python -m attnviz.weights",
                                     description="Manage attnviz model sets: list, verify, import, add.")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("list", parents=[common], help="show the installed model sets")

    check = commands.add_parser("verify", parents=[common], help="check every weights file against the manifest")
    check.add_argument("--set", dest="set_name", help="only this set (default: all)")

    imp = commands.add_parser("import", parents=[common], help="convert published ImageNet weights into a set")
    imp.add_argument("source", choices=[IMAGENET, *SOURCES],
                     help=f"{IMAGENET}: the three models ({', '.join(IMAGENET_SOURCES)}) in one step")
    imp.add_argument("--file", type=Path, help="a downloaded weights file (default: download through the library)")
    imp.add_argument("--files", type=Path, metavar="DIR",
                     help=f"{IMAGENET} only: a folder holding the three downloaded files (nothing is downloaded)")
    imp.add_argument("--set", dest="set_name", default="imagenet", help="the model set to add it to (default "
                                                                        "imagenet)")
    imp.add_argument("--torchvision-weights", type=str.upper, choices=TORCHVISION_WEIGHTS,
                     help="which torchvision release a file holds, when its hash does not tell")

    add = commands.add_parser("add", parents=[common], help="add your own checkpoint of one variant to a set")
    add.add_argument("file", type=Path, help="safetensors or .pth state dict with attnviz's key names")
    add.add_argument("--variant", required=True, choices=VARIANTS)
    add.add_argument("--classes", type=Path, required=True, help="text file, one class name per line")
    add.add_argument("--set", dest="set_name", required=True, help="the model set to add it to")
    add.add_argument("--resize", type=int, default=224, help="short side after resizing (default 224)")
    add.add_argument("--crop", type=int, default=224, help="centre crop size (default 224)")
    return parser


def _describe_accuracy(accuracy: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in accuracy.items()) or "no accuracy recorded"


def _list(manifest: Manifest) -> int:
    if not manifest.set_names():
        print(f"no model sets in {manifest.path}; point --weights-dir or ATTNVIZ_WEIGHTS at a weights folder, or "
              f"add one here with python -m attnviz.weights import or add")
        return 0
    for name in manifest.set_names():
        marker = " (default)" if name == manifest.default_set else ""
        try:
            info = manifest.get(name)
        except AttnvizError as exc:
            print(f"{name}{marker}: cannot be read: {exc}")
            continue
        print(f"{name}{marker}: {info.description}" if info.description else f"{name}{marker}")
        for variant, entry in info.models.items():
            print(f"  {VARIANT_TITLES[variant]:<16} {len(entry.classes)} classes  {entry.source or 'unknown source'}; "
                  f"{_describe_accuracy(entry.accuracy)}")
    return 0


def _verify(manifest: Manifest, set_name: str | None) -> int:
    results = verify(manifest, set_name)
    if not results:
        print(f"no model sets in {manifest.path}; nothing to verify")
        return 0
    for name, variant, outcome in results:
        print(f"{name}/{variant}: {outcome}")
    return 0 if all(outcome == "ok" for _, _, outcome in results) else 1


def _report(entry: ModelEntry, set_name: str, weights_dir: Path) -> None:
    print(f"added {VARIANT_TITLES[entry.variant]} to set {set_name!r}: {weights_dir / entry.file} "
          f"(sha256 {entry.sha256[:12]}..., {len(entry.classes)} classes, {entry.source})", flush=True)


def _run(args: argparse.Namespace) -> int:
    weights_dir = Path(args.weights_dir) if args.weights_dir else default_weights_dir()
    if args.command == "list":
        return _list(Manifest(weights_dir))
    if args.command == "verify":
        return _verify(Manifest(weights_dir), args.set_name)

    from attnviz.importers import add_checkpoint, import_imagenet, import_weights

    if args.command == "import" and args.source == IMAGENET:
        if args.file is not None:
            raise AttnvizError("--file names one source's file: import it with that source (e.g. import "
                               "timm-seresnet50 --file PATH), or leave --file out to download all three")
        import_imagenet(args.set_name, weights_dir, args.torchvision_weights,
                        report=lambda line: print(line, flush=True),
                        installed=lambda entry: _report(entry, args.set_name, weights_dir), files=args.files)
        return 0
    if args.command == "import" and args.files is not None:
        raise AttnvizError(f"--files is for import {IMAGENET} (the three files in one folder); give one source's "
                           f"file with --file PATH")
    if args.command == "import":
        entry = import_weights(args.source, args.set_name, file=args.file, weights_dir=weights_dir,
                               torchvision_weights=args.torchvision_weights)
    else:
        entry = add_checkpoint(args.file, args.variant, args.classes, args.set_name, weights_dir=weights_dir,
                               resize=args.resize, crop=args.crop)
    _report(entry, args.set_name, weights_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; 0 on success, 1 when verify finds a bad file, 2 on a user error."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except AttnvizError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
