"""What one call of the lent device machine sends, and whether it fits: the working tree (tracked files and
untracked files git does not ignore) plus the carried paths must stay under 64 MiB
(/work/.library/device/README.md, Limits).

    python benchmarks/gpu_payload.py [--carry .whl] [--carry .gpu] [--limit-mib 64]

Prints the sizes and exits 1 when the payload is over the limit (gpu_prepare.sh runs it; so does a test).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

LIMIT_MIB = 64.0
MIB = 1024 * 1024


@dataclass
class Payload:
    tracked: int = 0
    untracked: int = 0
    carried: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.tracked + self.untracked + sum(self.carried.values())

    def lines(self, limit_mib: float) -> list[str]:
        rows = [f"tracked files           {self.tracked / MIB:8.2f} MiB",
                f"untracked, not ignored  {self.untracked / MIB:8.2f} MiB"]
        rows += [f"carried {name:<16}{size / MIB:8.2f} MiB" for name, size in self.carried.items()]
        verdict = "fits" if self.total <= limit_mib * MIB else "OVER THE LIMIT"
        rows.append(f"total                   {self.total / MIB:8.2f} MiB of {limit_mib:g} MiB: {verdict}")
        return rows


def _git_files(root: Path, *args: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z", *args], cwd=root, capture_output=True, check=True).stdout
    return [root / name for name in out.decode().split("\0") if name]


def _size(paths: list[Path]) -> int:
    # A tracked file deleted in the working tree does not travel; a link travels as a link.
    return sum(p.lstat().st_size for p in paths if p.is_symlink() or p.is_file())


def payload(root: Path, carry: list[str]) -> Payload:
    """The bytes one call sends from the checkout at `root` with `carry` (paths relative to it)."""
    result = Payload(tracked=_size(_git_files(root)),
                     untracked=_size(_git_files(root, "--others", "--exclude-standard")))
    for name in carry:
        path = root / name
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
        result.carried[name] = _size(files)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--carry", action="append", default=[], help="a carried path (repeatable)")
    parser.add_argument("--limit-mib", type=float, default=LIMIT_MIB)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args(argv)
    found = payload(args.root, args.carry)
    print("\n".join(found.lines(args.limit_mib)))
    return 0 if found.total <= args.limit_mib * MIB else 1


if __name__ == "__main__":
    sys.exit(main())
