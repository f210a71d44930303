"""Transparent huge pages for the host memory of XLA's CPU runtime.

XLA:CPU allocates an executable's temporary buffer afresh on every call (133 MiB for
configs/tiny.py's train step). glibc's malloc serves an allocation that large with a new
anonymous mmap, so every step page-faults through all of it in 4 KiB pages: about 27,000
faults a step, a third of the step's wall time on a 2-core AVX2 EPYC. glibc 2.35 and later map
such chunks with transparent huge pages (2 MiB) when the tunable `glibc.malloc.hugetlb=1` is
set; glibc reads tunables only when a process starts, so `restart_with_huge_pages()` runs the
command again, once, with it set. Nothing changes numerically.

Left alone: a GLIBC_TUNABLES that already names `glibc.malloc.hugetlb` (so
`GLIBC_TUNABLES=glibc.malloc.hugetlb=0` turns this off), other C libraries and kernels with
transparent huge pages off. `platforms.start_command` calls it only when JAX computes on the
CPU: with TPU chips or a GPU, the host allocations are not on the step's path.
"""
import os
import re
import sys
from typing import Mapping, Optional

TUNABLE = "glibc.malloc.hugetlb"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
MIN_GLIBC = (2, 35)  # the first glibc with glibc.malloc.hugetlb


def glibc_version() -> Optional[tuple]:
  """(major, minor) of the running glibc, None for another C library or platform."""
  try:
    found = re.fullmatch(r"glibc (\d+)\.(\d+).*", os.confstr("CS_GNU_LIBC_VERSION") or "")
  except (AttributeError, ValueError, OSError):
    return None
  return (int(found[1]), int(found[2])) if found else None


def kernel_allows_huge_pages(setting_file: str = THP_SETTING) -> bool:
  """Whether transparent huge pages are "always" or "madvise" (glibc asks by madvise)."""
  try:
    with open(setting_file, encoding="ascii") as f:
      return re.search(r"\[(always|madvise)\]", f.read()) is not None
  except OSError:
    return False


def with_huge_pages(tunables: str, on: bool = True) -> str:
  """A GLIBC_TUNABLES value: `tunables` (':'-separated, as glibc reads them) with
  glibc.malloc.hugetlb=1 (or =0 when not `on`) appended."""
  return ":".join(filter(None, [tunables, f"{TUNABLE}={int(on)}"]))


def huge_pages_environment(environ: Mapping[str, str]) -> Optional[dict]:
  """`environ` with glibc.malloc.hugetlb=1 appended to its GLIBC_TUNABLES; None when
  GLIBC_TUNABLES names that tunable already."""
  tunables = environ.get("GLIBC_TUNABLES", "")
  if TUNABLE in tunables:
    return None
  return {**environ, "GLIBC_TUNABLES": with_huge_pages(tunables)}


def restart_with_huge_pages() -> None:
  """Replaces the process by the same command (`sys.orig_argv`, so `python -m` too) with
  glibc.malloc.hugetlb=1 when it helps (module docstring); returns when nothing is to change.
  Call it at a command's start, before any thread or file it would have to carry over, when
  JAX will compute on the CPU (`platforms.runs_on_cpu`)."""
  version = glibc_version()
  if not sys.platform.startswith("linux") or version is None or version < MIN_GLIBC:
    return
  environ = huge_pages_environment(os.environ)
  if environ is None or not kernel_allows_huge_pages():
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, environ)
