"""The committed train.log / submission.json come from a run of the committed train_gpt.py."""
import hashlib
import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT, metric

LOG, SUB = ROOT / "train.log", ROOT / "submission.json"
pytestmark = pytest.mark.skipif(not LOG.exists(), reason="no train.log committed yet")


def test_train_log_was_written_by_the_current_script_packed():
    """The record ran train_gpt.py as a record runs it, packed by tools/pack.py: the log names the packed file's
    bytes and hash and the readable source's hash, which must be this train_gpt.py's."""
    log, sub = LOG.read_text(), json.loads(SUB.read_text())
    size, sha, source = re.search(r"^code: \S+ (\d+) bytes, sha256 (\w+) \(packed; source sha256 (\w+)\)$", log, re.M).groups()
    assert source == sub["source_sha256"] == hashlib.sha256((ROOT / "train_gpt.py").read_bytes()).hexdigest(), \
        "regenerate with bash bench/make_record.sh"
    assert (int(size), sha) == (sub["bytes_code"], sub["code_sha256"]) and sub["bytes_code"] <= 48_000


def test_submission_numbers_are_the_logs():
    log, sub = LOG.read_text(), json.loads(SUB.read_text())
    assert sub["val_bpb"] == pytest.approx(metric(log, "legal_ttt_exact"), abs=1e-8)
    assert sub["roundtrip_val_bpb"] == pytest.approx(metric(log, "final_int5_zstd_roundtrip_exact"), abs=1e-8)
    total = int(re.findall(r"bytes_total:(\d+)", log)[-1])
    assert sub["bytes_total"] == total <= 16_000_000


def test_plot_helper_writes_a_png_from_train_log(tmp_path):
    out = tmp_path / "plot.png"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "plot_log.py"), str(LOG), "-o", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 1000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
