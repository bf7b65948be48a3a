"""Summarise `py-spy record --format raw` files: where a worker's CPU samples go.

    python -m bench.pyspy_summary DIR_OR_FILES... [--top 15]

Prints three views of the samples (py-spy leaves idle threads out by default, so these
are samples of running Python): by library (the package of the innermost frame), the
functions that are innermost most often (self time), and our own functions by how many
samples have them on the stack (inclusive time).
"""

import argparse
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

OUR_PACKAGES = ("workers/", "models/", "producer/", "simulator/")
FRAME = re.compile(r"^(?P<function>.+) \((?P<file>[^:()]+):\d+\)$")


@dataclass
class Profile:
    samples: int = 0
    by_package: Counter[str] = field(default_factory=Counter)
    by_leaf: Counter[str] = field(default_factory=Counter)
    ours_inclusive: Counter[str] = field(default_factory=Counter)


def frame_parts(frame: str) -> tuple[str, str]:
    """(function, file) of one `function (file:line)` frame."""
    match = FRAME.match(frame.strip())
    return (match["function"], match["file"]) if match else (frame.strip(), "?")


def package_of(file: str) -> str:
    if file.startswith(OUR_PACKAGES):
        return "ours: " + file.split("/")[0]
    head = file.split("/")[0]
    return head.removesuffix(".py") if "/" in file else f"stdlib: {head.removesuffix('.py')}"


def add_stack(profile: Profile, stack: str, count: int) -> None:
    frames = [frame_parts(frame) for frame in stack.split(";")]
    function, file = frames[-1]
    profile.samples += count
    profile.by_package[package_of(file)] += count
    profile.by_leaf[f"{function} ({file})"] += count
    ours = {f"{fn} ({fl})" for fn, fl in frames if fl.startswith(OUR_PACKAGES)}
    for name in ours:
        profile.ours_inclusive[name] += count


def read_profile(paths: list[Path]) -> Profile:
    profile = Profile()
    for path in paths:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                add_stack(profile, stack, int(count))
    return profile


def print_counter(title: str, counter: Counter[str], total: int, top: int) -> None:
    print(f"\n{title}")
    for name, count in counter.most_common(top):
        print(f"  {count / total:6.1%}  {name}")


def files_in(paths: list[Path]) -> list[Path]:
    return [f for p in paths for f in (sorted(p.glob("*.txt")) if p.is_dir() else [p])]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    profile = read_profile(files_in(args.paths))
    if not profile.samples:
        raise SystemExit("no samples found")
    print(f"{profile.samples} samples")
    print_counter("by library (innermost frame)", profile.by_package, profile.samples, args.top)
    print_counter("innermost functions (self)", profile.by_leaf, profile.samples, args.top)
    print_counter(
        "our functions on the stack (inclusive)", profile.ours_inclusive, profile.samples, args.top
    )


if __name__ == "__main__":
    main()
