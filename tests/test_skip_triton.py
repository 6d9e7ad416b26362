"""precision.skip_triton: in the memory-bounded (Binder) configuration on a machine without a GPU, triton is kept
from loading; otherwise nothing changes. Each case runs in a fresh interpreter (the module acts on import)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

PROBE = ("import sys, torch\nfrom sas_kit.models import precision\nimport torch.utils._triton as t\n"
         "print(sys.modules.get('triton', 'absent') is None, t.has_triton_package())")


def _run(env_value: str | None) -> list[str]:
    import os

    env = {k: v for k, v in os.environ.items() if k != "SAS_KIT_MMAP_THRESHOLD"}
    if env_value is not None:
        env["SAS_KIT_MMAP_THRESHOLD"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU triton is left alone")
def test_binder_configuration_without_a_gpu_keeps_triton_out():
    blocked, has_triton = _run("1048576")
    assert blocked == "True" and has_triton == "False"


def test_default_configuration_leaves_triton_alone():
    blocked, _ = _run(None)
    assert blocked == "False"  # not registered as None: importable if installed, absent if not


def test_skip_triton_is_a_no_op_when_off_or_already_loaded(monkeypatch):
    from sas_kit.models import precision

    assert precision.skip_triton(threshold=0) is False
    monkeypatch.setitem(sys.modules, "triton", object())
    assert precision.skip_triton(threshold=1 << 20) is False
