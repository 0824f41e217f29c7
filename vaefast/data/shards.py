"""WebDataset tar shards: ``--data 'shards/train-{0000..0099}.tar'``, a folder of ``.tar`` files, one ``.tar``, or a
``TRAIN,TEST`` pair of such specs. With ``--frames`` a sample's component is a video file instead (``.mp4``,
``.webm``, ...; the layout video2dataset writes), read by :mod:`vaefast.data.clips`.

A sample is the group of tar members that share a key (the member's path up to the first dot of its file name, the
WebDataset rule that DALI's ``fn.readers.webdataset`` follows); its image is the ``.jpg``, ``.jpeg`` or ``.png``
component, and samples without one are skipped, as the DALI reader is told to. Other components (labels, captions)
are ignored.

The shards are listed once up front with :mod:`tarfile`, reading headers only: this counts the samples (the steps
per epoch), gives the torch and in-memory loaders random access to every image by its byte offset, and turns a
truncated or non-tar shard into a :class:`DataError` that names it before training starts. Image bytes are only
checked when decoded; a sample that does not decode is named as ``shard.tar:member``.

Without a separate test spec the last shard is held out for the test metrics (at most ``MAX_TEST_IMAGES`` of its
samples), so no training sample is ever a test sample.
"""

from __future__ import annotations

import logging
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError

SHARD_SUFFIX = ".tar"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")
# DALI reads an index file beside the shard when there is one (made by DALI's ``wds2idx``), instead of scanning it.
INDEX_SUFFIX = ".idx"
log = logging.getLogger("vaefast.data")


@dataclass(frozen=True)
class ShardMember:
    """One image inside a tar shard, addressed by its byte range so that any loader can read it directly."""

    shard: Path
    name: str
    offset: int
    size: int

    def read(self) -> bytes:
        with open(self.shard, "rb") as f:
            f.seek(self.offset)
            payload = f.read(self.size)
        if len(payload) != self.size:
            raise DataError(f"{self}: the shard ends inside this member ({len(payload)} of {self.size} bytes); "
                            "the file is truncated")
        return payload

    def __str__(self) -> str:
        return f"{self.shard}:{self.name}"


_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_CHOICE = re.compile(r"\{([^{}]*,[^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` → three names (zero padding kept from the first bound); ``{a,b}`` lists expand too,
    leftmost group outermost, as the shell does."""
    matches = [m for m in (_RANGE.search(pattern), _CHOICE.search(pattern)) if m]
    if not matches:
        return [pattern]
    match = min(matches, key=lambda m: m.start())
    head, tail = pattern[:match.start()], pattern[match.end():]
    if match.re is _CHOICE:
        choices = match.group(1).split(",")
    else:
        lo, hi = match.group(1), match.group(2)
        if int(hi) < int(lo):
            raise DataError(f"--data {pattern}: the range {{{lo}..{hi}}} is empty")
        width = len(lo) if lo.startswith("0") else 0
        choices = [f"{i:0{width}d}" for i in range(int(lo), int(hi) + 1)]
    return [name for choice in choices for name in expand_braces(head + choice + tail)]


def is_shard_spec(spec: str) -> bool:
    """Whether ``--data`` names tar shards (a .tar path or pattern, a folder that holds .tar files only, or a
    ``TRAIN,TEST`` pair of those)."""
    train_spec, comma, test_spec = _split_pair(spec)
    if comma:
        return is_shard_spec(train_spec) and is_shard_spec(test_spec)
    if spec.endswith(SHARD_SUFFIX) or spec.endswith(SHARD_SUFFIX + "}"):
        return True
    path = Path(spec).expanduser()
    if path.is_dir():
        entries = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
        return bool(entries) and any(p.suffix == SHARD_SUFFIX for p in entries) and all(
            p.suffix in (SHARD_SUFFIX, INDEX_SUFFIX) for p in entries)
    return False


def shard_paths(spec: str) -> list[Path]:
    """The shard files a spec names, each checked to exist."""
    path = Path(spec).expanduser()
    if path.is_dir():
        paths = sorted(path.glob("*" + SHARD_SUFFIX))
    else:
        paths = [Path(name).expanduser() for name in expand_braces(spec)]
    if not paths:
        raise DataError(f"--data {spec}: no {SHARD_SUFFIX} shards found")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"--data {spec}: {len(missing)} of {len(paths)} shards not found (first: {missing[0]})")
    return paths


def sample_key(name: str) -> tuple[str, str]:
    """(key, extension) of a tar member by the WebDataset rule: the extension starts at the basename's first dot."""
    folder, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (extension.lower() if dot else "")


def list_shard(path: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[ShardMember]:
    """The image members (or the members of other ``extensions``: clips' videos) of one shard, one per sample, in tar
    order. A shard that is not a readable tar, or that ends inside a member, raises naming it."""
    try:
        size = path.stat().st_size
        with tarfile.open(path, mode="r:") as archive:
            members = archive.getmembers()
    except MemoryError:
        raise
    except Exception as exc:  # tarfile.TarError, OSError, EOFError, or a header that breaks tarfile's parser
        raise DataError(f"corrupt WebDataset shard {path}: not a readable tar file ({exc})") from exc
    _check_end_of_archive(path, members, size)
    images: dict[str, ShardMember] = {}
    for member in members:
        if not member.isfile():
            continue
        if member.offset_data + member.size > size:
            raise DataError(f"corrupt WebDataset shard {path}: truncated inside member {member.name} "
                            f"({size} bytes on disk, the member ends at byte {member.offset_data + member.size})")
        key, extension = sample_key(member.name)
        if extension in extensions:
            if key in images:
                raise DataError(f"WebDataset shard {path}: sample {key} has two {extension} components "
                                f"({images[key].name}, {member.name}); keep one")
            images[key] = ShardMember(path, member.name, member.offset_data, member.size)
    return list(images.values())


def _check_end_of_archive(path: Path, members: list[tarfile.TarInfo], size: int) -> None:
    """tarfile stops quietly at a header cut short, so a shard truncated between members would lose its tail
    unnoticed: require the two zero blocks that end every tar archive right after the last member."""
    end = members[-1].offset_data + -(-members[-1].size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE if members else 0
    with open(path, "rb") as f:
        f.seek(end)
        marker = f.read(2 * tarfile.BLOCKSIZE)
    if marker != bytes(2 * tarfile.BLOCKSIZE):
        raise DataError(f"corrupt WebDataset shard {path}: no end-of-archive marker after its last readable member "
                        f"({members[-1].name if members else 'none'}, ends at byte {end} of {size}); the file is "
                        "truncated or damaged")


def list_shards(paths: list[Path], extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[ShardMember]:
    members = [member for path in paths for member in list_shard(path, extensions)]
    if not members:
        raise DataError(f"the {len(paths)} shards from {paths[0]} hold no "
                        f"{', '.join('.' + e for e in extensions)} samples")
    return members


def index_paths(paths: list[Path]) -> list[str] | None:
    """DALI index files, when every shard has one beside it (``train-0000.idx`` for ``train-0000.tar``)."""
    indexes = [path.with_suffix(INDEX_SUFFIX) for path in paths]
    return [str(p) for p in indexes] if all(p.is_file() for p in indexes) else None


def split_shards(spec: str) -> tuple[list[Path], list[Path]]:
    """(train shards, test shards) for ``--data``: an explicit ``TRAIN,TEST`` pair, or the last shard held out."""
    train_spec, comma, test_spec = _split_pair(spec)
    train = shard_paths(train_spec)
    if comma:
        return train, shard_paths(test_spec)
    if len(train) < 2:
        raise DataError(f"--data {spec} names one shard; the last shard is held out for the test metrics, so give "
                        "at least two, or a TRAIN,TEST pair of shard specs")
    log.info("WebDataset: %d train shards, %s held out for the test metrics", len(train) - 1, train[-1])
    return train[:-1], train[-1:]


def _split_pair(spec: str) -> tuple[str, bool, str]:
    """Split ``TRAIN,TEST`` at the comma outside braces (``{a,b}`` is one spec)."""
    depth = 0
    for i, char in enumerate(spec):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            return spec[:i], True, spec[i + 1:]
    return spec, False, ""
