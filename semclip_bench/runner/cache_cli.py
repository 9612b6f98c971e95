"""``cache info`` and ``cache clear``: what the package keeps in its cache folder, and removing it.

The cache folder is ``$SEMCLIP_BENCH_CACHE`` (default ``~/.cache/semclip_bench``). It holds the
generated ``sem-synth`` datasets (``sem-synth-<config hash>``) and the on-disk feature store
(``features/<kind>/<key digest>/``, or ``$SEMCLIP_BENCH_FEATURES``; see
``runner/execute/feature_store.py``). Everything there can be
rebuilt: clearing costs time on the next run, never results.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path


def add_parser(subparsers, formatter_class) -> None:
    cache = subparsers.add_parser(
        "cache",
        help="show or clear the cache folder (generated data, stored features)",
        description="The cache folder ($SEMCLIP_BENCH_CACHE, default ~/.cache/semclip_bench) "
        "holds generated sem-synth data and frozen features stored by earlier runs.",
        formatter_class=formatter_class,
    )
    commands = cache.add_subparsers(dest="cache_command", metavar="ACTION")
    info = commands.add_parser(
        "info",
        help="size of the stored features per feature kind, and of the generated data",
        formatter_class=formatter_class,
    )
    info.add_argument("--keys", action="store_true", help="also list every feature key folder")
    info.set_defaults(func=_info)
    clear = commands.add_parser(
        "clear",
        help="remove stored features (default), generated data, or both",
        description="Remove cached files. Do not run it while a sweep using the cache runs.",
        formatter_class=formatter_class,
    )
    which = clear.add_mutually_exclusive_group()
    which.add_argument(
        "--features",
        dest="what",
        action="store_const",
        const="features",
        help="stored features (the default)",
    )
    which.add_argument(
        "--data", dest="what", action="store_const", const="data", help="generated sem-synth data"
    )
    which.add_argument(
        "--all", dest="what", action="store_const", const="all", help="features and data"
    )
    clear.set_defaults(func=_clear, what="features")
    cache.set_defaults(func=lambda args: _no_action(cache))


def _no_action(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def cache_dir() -> Path:
    from semclip_bench.data.dataset import default_cache_dir

    return default_cache_dir()


def data_entries(base: Path) -> list[Path]:
    """Generated datasets (and partial generations) directly under the cache folder."""
    from semclip_bench.data.dataset import SYNTH_NAME

    if not base.is_dir():
        return []
    return sorted(
        p
        for p in base.iterdir()
        if p.name.startswith((SYNTH_NAME, f".{SYNTH_NAME}")) and p.is_dir()
    )


def tree_size(path: Path) -> tuple[int, int]:
    """(files, bytes) under ``path``."""
    files = total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
                files += 1
            except OSError:
                continue
    return files, total


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _info(args: argparse.Namespace) -> int:
    from semclip_bench.runner.execute.feature_store import (  # imports torch
        features_root,
        folder_usage,
    )

    base = cache_dir()
    print(f"cache folder: {base}" + ("" if base.is_dir() else " (does not exist)"))
    root = features_root()
    usage = folder_usage(root)
    kinds: dict[str, list[int]] = {}
    for entry in usage:
        totals = kinds.setdefault(entry.kind, [0, 0, 0])
        totals[0] += 1
        totals[1] += entry.files
        totals[2] += entry.bytes
    feature_bytes = sum(t[2] for t in kinds.values())
    print(f"features: {_size(feature_bytes)} in {root}")
    if kinds:
        width = max(len(k) for k in kinds)
        print(f"  {'kind':<{width}}  keys  images  size")
        for kind, (keys, files, size) in sorted(kinds.items()):
            print(f"  {kind:<{width}}  {keys:>4}  {files:>6}  {_size(size)}")
    if args.keys:
        for entry in usage:
            d = entry.description
            print(
                f"  {entry.kind}/{entry.digest}: {entry.files} images, {_size(entry.bytes)}; "
                f"{d.get('feature_key', '?')} size={d.get('image_size', '?')} "
                f"precision={d.get('precision', '?')} device={d.get('device_type', '?')} "
                f"torch={d.get('torch', '?')}"
            )
    data = [(p, *tree_size(p)) for p in data_entries(base)]
    print(f"data: {_size(sum(size for _, _, size in data))}")
    for path, files, size in data:
        print(f"  {path.name}: {files} files, {_size(size)}")
    return 0


def _clear(args: argparse.Namespace) -> int:
    from semclip_bench.runner.execute.feature_store import features_root  # imports torch

    base = cache_dir()
    targets: list[Path] = []
    if args.what in {"features", "all"}:
        targets.append(features_root())
    if args.what in {"data", "all"}:
        targets += data_entries(base)
    freed = 0
    for target in targets:
        if not target.exists():
            continue
        freed += tree_size(target)[1]
        shutil.rmtree(target, ignore_errors=True)
    what = {"features": "stored features", "data": "generated data", "all": "features and data"}
    print(f"cache clear: removed {what[args.what]} under {base} ({_size(freed)} freed)")
    return 0
