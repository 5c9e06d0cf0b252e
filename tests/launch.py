"""Launch `mindeye` subprocesses from tests: one process, or two under torchrun (gloo)."""

from __future__ import annotations

import subprocess
import sys

# --standalone: torchrun's rendezvous store binds a port it picks itself (127.0.0.1:0). A port chosen by
# the test and released before torchrun binds it can be taken in between by a parallel test (pytest-xdist),
# which once failed CI with a bare "exit status 1".
TORCHRUN_2 = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--local-addr", "127.0.0.1",
              "--nproc_per_node", "2"]


def run_ok(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    """Run ``cmd``; on failure the assertion carries the tail of its stderr (CI shows nothing else)."""
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd[:8])} ... exited {done.returncode}:\n{done.stderr[-6000:]}"
    return done
