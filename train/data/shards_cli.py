"""`swinv2-shards`: write webdataset shards (+ index.json) from image collections, or index shards.

    swinv2-shards imagefolder ROOT OUT [options]      # ROOT/CLASS/IMAGE
    swinv2-shards imagenet22k ROOT OUT [options]      # ROOT/nXXXXXXXX.tar (or folders), one per synset
    swinv2-shards fashion-mnist OUT --split train     # IDX files from dataset-fashion-mnist
    swinv2-shards index 'SHARDS-{000000..000099}.tar' [--out index.json]

Rerunning a write into the same OUT keeps finished shards and rewrites unfinished ones.
"""

import argparse
import logging
import os
import sys

from train.data import fashion_mnist
from train.data.index import INDEX_NAME, expand_shards
from train.data.shards import (
    WriteOptions,
    fashion_mnist_refs,
    imagefolder_refs,
    imagenet22k_refs,
    index_shards,
    write_shards,
)


def _write_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output directory (shards, index.json, manifest.json)")
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.add_argument("--resize", type=int, default=0, help="resize the shorter side to this (never enlarges); 0 keeps")
    p.add_argument("--pad", type=int, default=0, help="centre smaller images on a black square of this side; 0: never")
    p.add_argument("--quality", type=int, default=0, help="re-encode as JPEG at this quality; 0 keeps the bytes")
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    p.add_argument("--prefix", default="shard", help="shard names: PREFIX-000000.tar")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample shuffle across shards")
    p.add_argument("--no-shuffle", action="store_true", help="keep input order (shards then hold few classes)")
    p.add_argument("--no-progress", action="store_true")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="swinv2-shards", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("imagefolder", help="ROOT/CLASS/IMAGE tree")
    p.add_argument("root")
    _write_args(p)
    p = sub.add_parser("imagenet22k", help="one SYNSET.tar or SYNSET/ folder per class")
    p.add_argument("root")
    p.add_argument("--classes", help="file with one synset per line giving label order (default: sorted)")
    _write_args(p)
    p = sub.add_parser("fashion-mnist", help="Fashion-MNIST IDX files")
    p.add_argument("--root", default=fashion_mnist.DEFAULT_DIR)
    p.add_argument("--split", choices=["train", "test"], default="train")
    p.add_argument("--limit", type=int, default=0, help="first N samples only (0: all)")
    _write_args(p)
    p = sub.add_parser("index", help="write index.json for existing shards")
    p.add_argument("shards", help="brace pattern, directory or glob of local .tar shards")
    p.add_argument("--out", default="", help=f"index path (default: {INDEX_NAME} beside the shards)")
    p.add_argument("--num-classes", type=int, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        if args.command == "index":
            urls = expand_shards(args.shards)
            out = args.out or os.path.join(os.path.dirname(urls[0]), INDEX_NAME)
            index = index_shards(urls, out, args.num_classes)
            print(f"{out}: {len(index.shards)} shards, {index.total} samples")
            return 0
        if args.command == "imagefolder":
            refs, classes = imagefolder_refs(args.root)
        elif args.command == "imagenet22k":
            names = None
            if args.classes:
                with open(args.classes) as f:
                    names = [line.strip() for line in f if line.strip()]
            refs, classes = imagenet22k_refs(args.root, names)
        else:
            refs, classes = fashion_mnist_refs(args.root, args.split)
            refs = refs[: args.limit] if args.limit else refs
        opts = WriteOptions(
            samples_per_shard=args.samples_per_shard,
            resize=args.resize,
            pad=args.pad,
            quality=args.quality,
            processes=args.processes,
            shuffle=not args.no_shuffle,
            seed=args.seed,
            prefix=args.prefix,
        )
        index = write_shards(refs, classes, args.out, opts, progress=not args.no_progress)
    except (OSError, ValueError, KeyError) as exc:
        print(f"swinv2-shards: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {len(index.shards)} shards, {index.total} samples, {index.num_classes} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
