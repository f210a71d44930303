"""Huge pages for XLA:CPU's per-call buffers: the restart happens once, keeps the command and the
user's tunables, and cuts the page faults of a call with a large temporary buffer."""
import os
import subprocess
import sys
import textwrap

import pytest

from coca_jax.parallel import host_memory, platforms

SUPPORTED = (sys.platform.startswith("linux")
             and (host_memory.glibc_version() or (0, 0)) >= host_memory.MIN_GLIBC
             and host_memory.kernel_allows_huge_pages())
needs_huge_pages = pytest.mark.skipif(not SUPPORTED, reason="glibc < 2.35 or THP off")

# Restarts, then reports each start and what a jitted call with a 64 MiB temporary buffer (a
# 4096 x 4096 float32 product between two matmuls) costs in minor page faults.
PROBE = textwrap.dedent("""
    import os, resource, sys
    with open(sys.argv[1], "a") as f:
      f.write(repr(sys.orig_argv[1:]) + "\\n")
    from coca_jax.parallel import host_memory, platforms
    host_memory.restart_with_huge_pages()
    import jax, jax.numpy as jnp
    step = jax.jit(lambda a, b, c: (a @ b) @ c)
    a, b, c = jnp.ones((4096, 64)), jnp.ones((64, 4096)), jnp.ones((4096, 8))
    step(a, b, c).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
      step(a, b, c).block_until_ready()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
    print(os.environ.get("GLIBC_TUNABLES", ""), faults)
""")


def _probe(tmp_path, *, tunables=None, as_module=False):
  (tmp_path / "probe_main.py").write_text(PROBE)
  starts = tmp_path / "starts.txt"
  starts.unlink(missing_ok=True)
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(tmp_path))
  if tunables is not None:
    env["GLIBC_TUNABLES"] = tunables
  command = ["-m", "probe_main"] if as_module else [str(tmp_path / "probe_main.py")]
  out = subprocess.run([sys.executable, *command, str(starts)], env=env, check=True,
                       capture_output=True, text=True, timeout=300).stdout.split()
  return out[0] if len(out) > 1 else "", float(out[-1]), starts.read_text().splitlines()


def test_environment_appends_the_tunable_once():
  assert host_memory.huge_pages_environment({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
  env = host_memory.huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2",
                                            "HOME": "/h"})
  assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1",
                 "HOME": "/h"}
  # The user's own setting, on or off, is left alone (and a restart cannot loop).
  assert host_memory.huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
  assert host_memory.huge_pages_environment(env) is None
  # benchmarks/vs_open_clip.py's off setting for both sides
  assert (host_memory.with_huge_pages("glibc.malloc.arena_max=2", on=False)
          == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0")


def test_only_cpu_runs_restart():
  assert platforms.runs_on_cpu({"JAX_PLATFORMS": "cpu"})
  assert not platforms.runs_on_cpu({"JAX_PLATFORMS": "cuda"})
  assert not platforms.runs_on_cpu({"JAX_PLATFORMS": "tpu,cpu"})


def test_kernel_setting_is_read(tmp_path):
  setting = tmp_path / "enabled"
  for text, allowed in [("always [madvise] never", True), ("[always] madvise never", True),
                        ("always madvise [never]", False)]:
    setting.write_text(text)
    assert host_memory.kernel_allows_huge_pages(str(setting)) is allowed
  assert not host_memory.kernel_allows_huge_pages(str(tmp_path / "absent"))


@needs_huge_pages
@pytest.mark.parametrize("as_module", [False, True])
def test_restart_once_same_command_fewer_page_faults(tmp_path, as_module):
  tunables, faults, starts = _probe(tmp_path, tunables="glibc.malloc.arena_max=8",
                                    as_module=as_module)
  assert tunables == "glibc.malloc.arena_max=8:glibc.malloc.hugetlb=1"
  assert len(starts) == 2 and starts[0] == starts[1]  # restarted once, same arguments
  _, faults_off, starts_off = _probe(tmp_path, tunables="glibc.malloc.hugetlb=0",
                                     as_module=as_module)
  assert len(starts_off) == 1  # the user's own setting: no restart
  # 64 MiB in 4 KiB pages is 16,384 faults a call; in 2 MiB pages, 32.
  assert faults_off > 8000 and faults < faults_off / 8, (faults, faults_off)
