"""Shard lists (brace patterns, directories, globs, URLs) and the shard index JSON.

The index records how many samples each shard holds. It is what lets every rank compute, before
reading a byte, which samples it owns and how many batches it will yield: webdataset alone cannot
know that, and uneven shards then give ranks unequal batch counts (a hang under DDP/FSDP).
"""

import glob
import json
import os
from dataclasses import dataclass, field

import braceexpand
from webdataset.gopen import gopen

INDEX_NAME = "index.json"
INDEX_FORMAT = "swinv2-shards/1"
INDEX_SETTINGS = "data.index_path (data.val_index_path for data.val_path)"
_SHOWN = 3  # missing names quoted in an error


class ShardListError(ValueError):
    """A shard list and its index that do not fit together (a shard the index lacks, `pipe:` shards
    without an index)."""


def is_remote(url: str) -> bool:
    return url.startswith("pipe:") or "://" in url


def expand_shards(pattern: str) -> list[str]:
    """Shard URLs of `pattern`: brace patterns, a directory (its *.tar, sorted), globs, `pipe:` commands
    and URLs, several joined with `::`. Raises FileNotFoundError naming the pattern if nothing matches,
    or naming the missing ones if any local name it expands to (a file, a directory or glob with no
    shard) is not there: a brace range that runs past the shards is a typo, not a smaller data set."""
    if not pattern:
        raise ValueError("empty shard list: set data.train_path / data.val_path")
    urls: list[str] = []
    missing: list[str] = []
    names = 0
    for part in pattern.split("::"):
        for item in braceexpand.braceexpand(part):
            names += 1
            if is_remote(item):
                found = [item]
            elif os.path.isdir(item):
                found = sorted(
                    glob.glob(os.path.join(item, "*.tar")) + glob.glob(os.path.join(item, "*.tar.gz"))
                )
            elif glob.has_magic(item):
                found = sorted(glob.glob(item))
            else:
                found = [item] if os.path.exists(item) else []
            urls += found
            if not found:
                missing.append(item)
    if not urls:
        raise FileNotFoundError(f"shard list {pattern!r} matches no file")
    if missing:
        shown = ", ".join(missing[:_SHOWN]) + (
            f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
        )
        raise FileNotFoundError(
            f"shard list {pattern!r}: {len(missing)} of the {names} names it expands to do not exist ({shown}); "
            "fix the brace range or path"
        )
    return urls


@dataclass
class ShardIndex:
    """Samples per shard (by file name), class count and names when known."""

    shards: dict[str, int] = field(default_factory=dict)
    num_classes: int | None = None
    class_names: list[str] | None = None

    @property
    def total(self) -> int:
        return sum(self.shards.values())

    def to_json(self) -> dict:
        return {
            "format": INDEX_FORMAT,
            "num_samples": self.total,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "shards": [{"name": k, "samples": v} for k, v in sorted(self.shards.items())],
        }

    @classmethod
    def from_json(cls, obj: dict) -> "ShardIndex":
        return cls(
            shards={s["name"]: int(s["samples"]) for s in obj["shards"]},
            num_classes=obj.get("num_classes"),
            class_names=obj.get("class_names"),
        )

    def write(self, path: str) -> None:
        """Atomically (temp file + rename), so a reader never sees half an index."""
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(self.to_json(), f, indent=1)
        os.replace(tmp, path)


def default_index_path(urls: list[str]) -> str:
    first = urls[0]
    if first.startswith("pipe:"):
        raise ShardListError(f"shards given as pipe: commands need an explicit index: set {INDEX_SETTINGS}")
    return first.rsplit("/", 1)[0] + "/" + INDEX_NAME if "/" in first else INDEX_NAME


def load_index(path: str) -> ShardIndex:
    try:
        with gopen(path, "rb") as f:
            return ShardIndex.from_json(json.loads(f.read()))
    except (OSError, ValueError, KeyError) as exc:
        raise FileNotFoundError(
            f"cannot read shard index {path!r} ({exc}); write one with `swinv2-shards index SHARDS` "
            f"or set {INDEX_SETTINGS}"
        ) from exc


def shard_counts(urls: list[str], index: ShardIndex, index_path: str) -> list[int]:
    """Samples in each shard of `urls`, looked up by file name."""
    counts = []
    for url in urls:
        name = os.path.basename(url.rstrip("/").split(" ")[-1])
        if name not in index.shards:
            raise ShardListError(
                f"shard {url!r} is not in the index {index_path!r}; rebuild it with `swinv2-shards index`"
            )
        counts.append(index.shards[name])
    return counts
