"""Process settings (separator.runtime): applied by the entry points, never by importing."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

PRINT = "import os; print(os.environ.get('OMP_WAIT_POLICY'))"
CONFIGURE = "import separator.runtime as r; r.configure_process(); "


def run(code: str, **env: str) -> str:
    e = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "SEPARATOR_OMP_PASSIVE")}
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True,
                          check=True, timeout=120).stdout.strip()


@pytest.mark.parametrize("code, env, want", [
    ("import separator, separator.api; " + PRINT, {}, "None"),                   # importing changes nothing
    (CONFIGURE + PRINT, {}, "PASSIVE"),                                          # set before torch
    (CONFIGURE + "import torch; " + PRINT, {}, "PASSIVE"),
    ("import torch; " + CONFIGURE + PRINT, {}, "None"),                          # too late: left alone
    (CONFIGURE + PRINT, {"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),                # the user's choice wins
    (CONFIGURE + PRINT, {"SEPARATOR_OMP_PASSIVE": "0"}, "None"),                  # opt-out
])
def test_openmp_wait_policy(code, env, want):
    assert run(code, **env) == want


def test_the_command_line_sets_it_before_torch_loads(tmp_path):
    """`separator` (the entry point) configures its process and the processes it starts."""
    code = ("import sys, os, runpy; sys.argv = ['separator', '--version']\n"
            "try:\n    from separator.cli import entry; entry()\n"
            "except SystemExit:\n    print(os.environ.get('OMP_WAIT_POLICY'))\n")
    assert run(code).splitlines()[-1] == "PASSIVE"


def test_spawned_workers_inherit_the_policy(tmp_path):
    script = tmp_path / "spawn_child.py"
    script.write_text("import separator.runtime, multiprocessing as mp, os\n"
            "def f(q): q.put(os.environ.get('OMP_WAIT_POLICY'))\n"
            "if __name__ == '__main__':\n"
            "    separator.runtime.configure_process()\n"
            "    ctx = mp.get_context('spawn'); q = ctx.Queue(); p = ctx.Process(target=f, args=(q,))\n"
            "    p.start(); print(q.get(timeout=60)); p.join()\n")
    assert run(f"import runpy; runpy.run_path({str(script)!r}, run_name='__main__')") == "PASSIVE"
