"""tools/make_record.py: the records folder from fake OUT_DIRs (the committed record, edited; no training)."""
import hashlib
import json
import re
import statistics
import subprocess
import sys

import pytest

from conftest import ROOT

TOOL = ROOT / "tools" / "make_record.py"
SCRIPT = b"# a stand-in for the packed train_gpt.py\n" * 50
DROP = object()  # make_run(field=DROP) leaves the field out
# the committed record the fake runs start from, its clocks set inside the track's (a CPU bench's eval may take longer)
BASE = {**json.loads((ROOT / "submission.json").read_text()), "train_time_s": 301.25, "eval_time_s": 412.5}


def make_script(tmp_path, data=SCRIPT):
    path = tmp_path / "train_gpt.py"
    path.write_bytes(data)
    return path


def make_run(tmp_path, seed=42, val_bpb=2.24206643, script=SCRIPT, log_bpb=None, hparams={}, **edits):
    """An OUT_DIR as train_gpt.py leaves it: the committed record with this seed's score and the script's hash."""
    out = tmp_path / f"out{seed}"
    out.mkdir(exist_ok=True)
    rec = dict(BASE)
    rec.update(seed=seed, val_bpb=val_bpb, ttt_val_bpb=val_bpb, code_sha256=hashlib.sha256(script).hexdigest(),
               bytes_code=len(script), date="2026-12-05", world_size=1, device="cpu")
    rec.update(edits)
    if "bytes_total" not in edits:
        rec["bytes_total"] = rec["bytes_code"] + rec["bytes_model"]
    rec = {k: v for k, v in rec.items() if v is not DROP}
    shown = val_bpb if log_bpb is None else log_bpb
    log = (ROOT / "train.log").read_text()
    log = re.sub(r"^legal_ttt_exact .*$", f"legal_ttt_exact val_loss:4.15050709 val_bpb:{shown:.8f}", log, flags=re.M)
    log = re.sub(r"^code: .*\n", "", log, flags=re.M)  # the committed record's own code line
    if "code_sha256" in rec:  # the log's code line: the script this record's run hashed
        log = f"code: train_gpt.py {rec['bytes_code']} bytes, sha256 {rec['code_sha256']}\n" + log
    hp = json.loads(re.search(r"^hparams (\{.*\})$", log, re.M).group(1))  # the track's clocks and cap
    hp.update(dict(max_wallclock_seconds=600.0, max_eval_seconds=600.0, byte_cap=16_000_000), **hparams)
    log = re.sub(r"^hparams \{.*\}$", lambda m: "hparams " + json.dumps(hp), log, count=1, flags=re.M)
    (out / "submission.json").write_text(json.dumps(rec, indent=2) + "\n")
    (out / "train.log").write_text(log)
    return out


def run_tool(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_one_seed_builds_the_folder(tmp_path):
    script = make_script(tmp_path)
    out = make_run(tmp_path)
    records = tmp_path / "records"
    r = run_tool(out, "--name", "My Entry: v2!", "--records", records, "--script", script, "--author", "A. Person",
                 "--github-id", "aperson")
    assert r.returncode == 0, r.stderr
    folder = records / "2026-12-05_My_Entry_v2"
    assert [p.name for p in records.iterdir()] == [folder.name]  # no temporary folder left
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["README.md", "requirements.txt", "submission.json", "train.log", "train_gpt.py"]
    assert (folder / "train_gpt.py").read_bytes() == SCRIPT
    assert (folder / "train.log").read_bytes() == (out / "train.log").read_bytes()
    assert (folder / "requirements.txt").read_bytes() == (ROOT / "requirements.txt").read_bytes()
    sub = json.loads((folder / "submission.json").read_text())
    assert sub["name"] == "My Entry: v2!" and sub["author"] == "A. Person" and sub["github_id"] == "aperson"
    assert sub["val_bpb"] == 2.24206643 and sub["seeds"] == [42] and sub["val_bpb_per_seed"] == {"42": 2.24206643}
    assert "val_bpb_std" not in sub and sub["date"] == "2026-12-05" and sub["hardware"] == "1x cpu"
    assert sub["code_sha256"] == hashlib.sha256(SCRIPT).hexdigest() and sub["bytes_code"] == len(SCRIPT)
    assert sub["bytes_total"] == len(SCRIPT) + BASE["bytes_model"] and sub["bytes_model"] == BASE["bytes_model"]
    assert list(sub)[:7] == ["name", "github_id", "author", "val_bpb", "bytes_total", "blurb", "date"]
    text = (folder / "README.md").read_text()
    assert text.startswith("# My Entry: v2!\n") and "**val_bpb 2.24206643** (seed 42)" in text
    assert f"| total | {len(SCRIPT) + BASE['bytes_model']:,} |" in text and "| cap | 16,000,000" in text
    assert re.search(r"^SEED=42 DATA_PATH=\S+ TOKENIZER_PATH=\S+ torchrun --standalone --nproc_per_node=1 train_gpt.py$", text, re.M)
    row = [f"{BASE[k]:.8f}" for k in ("sliding_val_bpb", "roundtrip_val_bpb", "prequant_val_bpb")]
    row += [str(BASE["steps"]), f"{BASE['train_time_s']:.2f}", f"{BASE['eval_time_s']:.2f}"]
    assert "| 42 | 2.24206643 | " + " | ".join(row) + " |" in text
    assert sub["blurb"] in text and "## Source" in text and "lzma.decompress" in text
    hp = json.loads(re.search(r"^hparams (\{.*\})$", (out / "train.log").read_text(), re.M).group(1))
    assert f"## Data\n\n`DATA_PATH={hp['data_path']}` `TOKENIZER_PATH={hp['tokenizer_path']}`" in text
    assert re.search(r"^The log's validation line: `vocab:\d+ val_tokens:\d+ ", text, re.M)


def test_three_seeds_write_the_table_logs_and_mean(tmp_path):
    script = make_script(tmp_path)
    scores = {1337: 2.2401, 42: 2.24206643, 2024: 2.2433}
    outs = [make_run(tmp_path, seed, bpb, bytes_model=BASE["bytes_model"] + seed) for seed, bpb in scores.items()]
    records = tmp_path / "records"
    r = run_tool(*outs, "--name", "Three", "--records", records, "--script", script, "--date", "2027-01-02",
                 "--source", "https://example.org/entry")
    assert r.returncode == 0, r.stderr
    folder = records / "2027-01-02_Three"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["README.md", "requirements.txt", "submission.json", "train_gpt.py",
                     "train_seed1337.log", "train_seed2024.log", "train_seed42.log"]
    for seed, out in zip(scores, outs):
        assert (folder / f"train_seed{seed}.log").read_bytes() == (out / "train.log").read_bytes()
    sub = json.loads((folder / "submission.json").read_text())
    assert sub["seeds"] == [1337, 42, 2024] and sub["date"] == "2027-01-02"
    assert sub["val_bpb"] == pytest.approx(statistics.mean(scores.values()), abs=1e-8)
    assert sub["val_bpb_std"] == pytest.approx(statistics.stdev(scores.values()), abs=1e-8)
    assert sub["val_bpb_per_seed"] == {str(k): v for k, v in scores.items()}
    assert sub["bytes_model"] == BASE["bytes_model"] + 2024 and sub["bytes_total"] == len(SCRIPT) + sub["bytes_model"]
    text = (folder / "README.md").read_text()
    assert f"**val_bpb {sub['val_bpb']:.8f} ± {sub['val_bpb_std']:.8f}** (mean ± sample std over 3 seeds)" in text
    for seed, bpb in scores.items():
        assert f"| {seed} | {bpb:.8f} |" in text
        assert re.search(rf"^SEED={seed} DATA_PATH=\S+ TOKENIZER_PATH=\S+ torchrun --standalone --nproc_per_node=1 train_gpt.py$", text, re.M)
    assert "https://example.org/entry" in text


def test_seeds_on_different_data_are_refused(tmp_path):
    script = make_script(tmp_path)
    outs = [make_run(tmp_path, 1), make_run(tmp_path, 2, hparams=dict(data_path="./data/datasets/other"))]
    r = run_tool(*outs, "--name", "Mixed", "--records", tmp_path / "records", "--script", script)
    assert r.returncode != 0 and "ran on different data" in r.stderr and not (tmp_path / "records").exists()


def test_force_replaces_an_existing_folder(tmp_path):
    script = make_script(tmp_path)
    out = make_run(tmp_path)
    records = tmp_path / "records"
    (records / "2026-12-05_X").mkdir(parents=True)
    (records / "2026-12-05_X" / "stale.txt").write_text("old")
    r = run_tool(out, "--name", "X", "--records", records, "--script", script, "--force")
    assert r.returncode == 0, r.stderr
    assert [p.name for p in records.iterdir()] == ["2026-12-05_X"]
    assert not (records / "2026-12-05_X" / "stale.txt").exists()


def provisional(tmp_path):
    return [make_run(tmp_path, status="provisional: the sliding score; TTT has not finished")]


def violating(tmp_path):
    return [make_run(tmp_path, rule_violations=["training + calibration took 601.0s > MAX_WALLCLOCK_SECONDS=600"])]


def over_cap(tmp_path):
    return [make_run(tmp_path, bytes_total=16_000_001)]


def other_sha(tmp_path):
    return [make_run(tmp_path, code_sha256=hashlib.sha256(b"another script").hexdigest())]


def no_sha(tmp_path):
    return [make_run(tmp_path, code_sha256=DROP)]


def other_size(tmp_path):
    return [make_run(tmp_path, bytes_code=len(SCRIPT) + 1)]


def no_submission(tmp_path):
    out = make_run(tmp_path)
    (out / "submission.json").unlink()
    return [out]


def no_log(tmp_path):
    out = make_run(tmp_path)
    (out / "train.log").unlink()
    return [out]


def log_without_score(tmp_path):
    return [make_run(tmp_path, log_bpb=2.2)]


def log_of_another_script(tmp_path):
    out = make_run(tmp_path)
    log = (out / "train.log").read_text()
    (out / "train.log").write_text(re.sub(r"sha256 [0-9a-f]{64}", "sha256 " + "0" * 64, log, count=1))
    return [out]


def same_seed(tmp_path):
    a = make_run(tmp_path, 42)
    b = tmp_path / "again"
    a.rename(b)
    return [b, make_run(tmp_path, 42, 2.25)]


def different_scripts(tmp_path):
    return [make_run(tmp_path, 1), make_run(tmp_path, 2, 2.25, script=b"another script\n")]


def over_the_training_clock(tmp_path):
    return [make_run(tmp_path, train_time_s=600.5)]


def no_training_clock(tmp_path):
    return [make_run(tmp_path, hparams=dict(max_wallclock_seconds=0.0))]


def another_cap(tmp_path):
    return [make_run(tmp_path, hparams=dict(byte_cap=20_000_000))]


def bytes_that_do_not_add_up(tmp_path):
    return [make_run(tmp_path, bytes_total=BASE["bytes_model"])]


def folder_exists(tmp_path):
    (tmp_path / "records" / "2026-12-05_X").mkdir(parents=True)
    return [make_run(tmp_path)]


@pytest.mark.parametrize("case, words", [
    (provisional, "status"), (violating, "rule_violations"), (over_cap, "cap"), (other_sha, "sha256"),
    (no_sha, "code_sha256"), (other_size, "bytes_code"), (no_submission, "submission.json"), (no_log, "train.log"),
    (log_without_score, "val_bpb:2.24206643"), (log_of_another_script, "code line"), (same_seed, "seed 42 twice"),
    (different_scripts, "different scripts"), (folder_exists, "exists"), (over_the_training_clock, "train_time_s"),
    (no_training_clock, "MAX_WALLCLOCK_SECONDS=0.0"), (another_cap, "BYTE_CAP=20000000"),
    (bytes_that_do_not_add_up, "not bytes_code + bytes_model")])
def test_refusals_write_nothing(tmp_path, case, words):
    script = make_script(tmp_path)
    outs = case(tmp_path)
    records = tmp_path / "records"
    before = sorted(p.name for p in records.rglob("*")) if records.exists() else None
    r = run_tool(*outs, "--name", "X", "--records", records, "--script", script)
    assert r.returncode == 1
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and words in r.stderr, r.stderr
    after = sorted(p.name for p in records.rglob("*")) if records.exists() else None
    assert after == before  # not even the records folder (or a temporary one) appears
