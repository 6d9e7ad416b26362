"""The command line: `data list`, `data prepare`, `demo`, and the error path."""

from __future__ import annotations

import json
import subprocess
import sys

from sas_kit import cli


def test_data_list_json_has_real_targets_with_licence_citation_source(capsys):
    assert cli.main(["data", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    real = [r for r in rows if r["name"] in {"busi", "bus_bra", "hc18", "carotid_cca", "usgra_nerve", "usgra_vessel"}]
    assert len(real) == 6
    for row in real:
        assert row["licence"] and row["citation"] and row["source"]


def test_data_prepare_prints_counts_and_skips(tmp_data_root, fake_busi, capsys):
    assert cli.main(["data", "prepare", "busi", "--mirror", str(fake_busi)]) == 0
    out = capsys.readouterr().out
    assert "busi: prepared" in out and "skipped: 2" in out and "corrupt" in out
    assert cli.main(["data", "prepare", "busi", "--mirror", str(fake_busi)]) == 0
    assert "busi: cache" in capsys.readouterr().out


def test_data_prepare_unavailable_exits_nonzero_with_the_fix(tmp_data_root, monkeypatch, capsys):
    monkeypatch.delenv("SAS_KIT_MIRROR", raising=False)
    assert cli.main(["data", "prepare", "carotid_cca"]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "mendeley" in err.lower() and "SAS_KIT_MIRROR" in err


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "sas_kit", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and "sas-kit" in done.stdout


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "data" in capsys.readouterr().out
