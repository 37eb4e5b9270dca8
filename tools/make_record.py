"""Build the challenge's records folder for an entry from its finished runs, in one command.

Usage:
  python3 tools/make_record.py OUT_DIR [OUT_DIR ...] --name NAME [--author A] [--github-id G]
         [--blurb TEXT] [--source URL] [--records DIR] [--script PATH] [--date YYYY-MM-DD] [--force]

Each OUT_DIR is one run (one seed): the submission.json and train.log that train_gpt.py wrote there.
It writes DIR/<date>_<NAME>/ (DIR: --records, default records/track_10min_16mb under the current
directory, e.g. a clone of openai/parameter-golf; <date>: --date, else the first record's `date`;
NAME with spaces as `_` and only [A-Za-z0-9_.-] kept) holding
  train_gpt.py      --script, default this repository's dist/train_gpt.py (the packed script that ran)
  train.log         with one OUT_DIR; with several, train_seed<SEED>.log for each
  submission.json   the challenge's fields (val_bpb: the mean over seeds) and the per-seed figures
  requirements.txt  this repository's
  README.md         score, per-seed table, bytes, hardware, command, what the entry does, source
Every check runs before anything is written, and the folder is built beside its place and renamed
into it whole: a refusal (one `error:` line, exit 1) leaves nothing behind. The checks: each record is
final with no rule violations and at most 16,000,000 bytes (code + model); it trained and evaluated
within 600 s each, under the track's clocks and cap (its log's hparams: MAX_WALLCLOCK_SECONDS=600,
MAX_EVAL_SECONDS <= 600, BYTE_CAP=16000000); its log holds its val_bpb; the script's
sha256 and size are every record's code_sha256 and bytes_code; no seed twice; the folder is new
(--force replaces it).
"""
import argparse
import datetime
import hashlib
import json
import math
import os
import re
import shutil
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CAP = 16_000_000
TRAIN_SECONDS = 600  # the track's training clock, and its evaluation clock
EVAL_SECONDS = 600
DEFAULT_RECORDS = Path("records") / "track_10min_16mb"
DEFAULT_SCRIPT = REPO / "dist" / "train_gpt.py"
NUMBER = (int, float)
REQUIRED = {"status": str, "rule_violations": list, "val_bpb": NUMBER, "bytes_total": int,
            "bytes_code": int, "bytes_model": int, "seed": int, "world_size": int, "device": str}
TABLE = ("seed", "val_bpb", "sliding_val_bpb", "roundtrip_val_bpb", "prequant_val_bpb", "steps",
         "train_time_s", "eval_time_s", "bytes_total")
BPB_COLUMNS = {"val_bpb", "sliding_val_bpb", "roundtrip_val_bpb", "prequant_val_bpb"}


class Refusal(Exception):
    """A reason not to build the folder; main() prints it as one `error:` line."""


def folder_name(name):
    """The NAME part of <date>_<NAME>: spaces to `_`, then only [A-Za-z0-9_.-] (a path-safe folder)."""
    spaced = re.sub(r"\s+", "_", name.strip())
    safe = re.sub(r"[^A-Za-z0-9_.-]", "", spaced)
    if not safe.strip("_.-"):
        raise Refusal(f"--name {name!r} has no letter or digit to name the folder with")
    return safe


def checked_date(date, origin):
    """YYYY-MM-DD and a real day: it starts the folder's name, which sorts the records."""
    if not isinstance(date, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        raise Refusal(f"{origin} {date!r} is not a YYYY-MM-DD date")
    try:
        datetime.date.fromisoformat(date)
    except ValueError:
        raise Refusal(f"{origin} {date!r} is not a day of the calendar") from None
    return date


def bpb_text(value):
    """val_bpb as the log writes its final scores (8 decimals): the form the checks compare."""
    return f"{value:.8f}"


def logged_bpbs(log_text):
    """Every value of a `val_bpb:` token in the log (not `sliding_val_bpb:` and the like)."""
    return set(re.findall(r"\bval_bpb:(\S+)", log_text))


def logged_code(log_text):
    """(bytes, sha256) of the log's `code: [<file>] <N> bytes, sha256 <hex>` line (None in older logs); a log whose
    code lines disagree is refused (two runs' logs in one file)."""
    found = set(re.findall(r"^code: (?:.* )?(\d+) bytes, sha256 ([0-9a-f]{64})\b", log_text, re.MULTILINE))
    if len(found) > 1:
        raise Refusal(f"the log names {len(found)} different scripts in its code lines")
    if not found:
        return None
    size, sha = found.pop()
    return int(size), sha


def logged_hparams(log_text, log):
    """The run's settings: the JSON of the log's `hparams` line."""
    m = re.search(r"^hparams (\{.*\})$", log_text, re.MULTILINE)
    if not m:
        raise Refusal(f"{log} has no hparams line (not a train_gpt.py log?)")
    try:
        return json.loads(m.group(1))
    except ValueError as e:
        raise Refusal(f"{log}: its hparams line is not JSON ({e})") from None


def logged_data(log_text):
    """The log's validation line: vocabulary, tokens, documents, bytes and whence the bytes (None in older logs)."""
    m = re.search(r"^vocab:\d+ val_tokens:.*$", log_text, re.MULTILINE)
    return m.group(0) if m else None


def load_run(out_dir):
    """One OUT_DIR's record and log, read once: what is checked is what gets copied."""
    out = Path(out_dir)
    sub_path, log_path = out / "submission.json", out / "train.log"
    for path in (sub_path, log_path):
        if not path.is_file():
            raise Refusal(f"no {path.name} in {out} (is it a finished run's OUT_DIR?)")
    try:
        record = json.loads(sub_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise Refusal(f"{sub_path} is not JSON ({e})") from None
    if not isinstance(record, dict):
        raise Refusal(f"{sub_path} is not a JSON object")
    for key, kind in REQUIRED.items():
        value = record.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise Refusal(f"{sub_path}: {key!r} is missing or not a {getattr(kind, '__name__', 'number')}")
    log_bytes = log_path.read_bytes()
    return dict(dir=out, sub_path=sub_path, record=record, log=log_bytes, log_text=log_bytes.decode(errors="replace"))


def check_run(run):
    """A record that may be published: final, within the rules and the cap, and its log shows its score."""
    rec, where = run["record"], run["sub_path"]
    if rec["status"] != "final":
        raise Refusal(f"{where}: status is {rec['status']!r}, not 'final' (an unfinished or re-evaluated run)")
    if rec["rule_violations"]:
        raise Refusal(f"{where}: rule_violations {rec['rule_violations'][0]!r} ({len(rec['rule_violations'])} in all)")
    if not math.isfinite(rec["val_bpb"]):
        raise Refusal(f"{where}: val_bpb {rec['val_bpb']} is not finite")
    if rec["bytes_total"] > CAP:
        raise Refusal(f"{where}: bytes_total {rec['bytes_total']:,} > the cap {CAP:,}")
    if rec["bytes_total"] != rec["bytes_code"] + rec["bytes_model"]:
        raise Refusal(f"{where}: bytes_total {rec['bytes_total']:,} is not bytes_code + bytes_model")
    for key, limit in (("train_time_s", TRAIN_SECONDS), ("eval_time_s", EVAL_SECONDS)):
        if not isinstance(rec.get(key), NUMBER) or rec[key] > limit:
            raise Refusal(f"{where}: {key} {rec.get(key)} is not within the track's {limit} s")
    sha = rec.get("code_sha256")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise Refusal(f"{where}: no code_sha256 (a record of a train_gpt.py that did not hash itself)")
    log = run["dir"] / "train.log"
    if bpb_text(rec["val_bpb"]) not in logged_bpbs(run["log_text"]):
        raise Refusal(f"{log} has no val_bpb:{bpb_text(rec['val_bpb'])} (the record's score): another run's log?")
    hp = logged_hparams(run["log_text"], log)
    for key, ok, rule in (("max_wallclock_seconds", lambda v: v == TRAIN_SECONDS, f"= {TRAIN_SECONDS}"),
                          ("max_eval_seconds", lambda v: 0 < v <= EVAL_SECONDS, f"<= {EVAL_SECONDS}"),
                          ("byte_cap", lambda v: v == CAP, f"= {CAP}")):
        if not ok(hp.get(key, math.nan)):
            raise Refusal(f"{log}: the run had {key.upper()}={hp.get(key)}, the track needs {rule}")
    code = logged_code(run["log_text"])
    if code is not None and code != (rec["bytes_code"], sha):
        raise Refusal(f"{log}: its code line ({code[0]} bytes, sha256 {code[1][:12]}…) is not the record's "
                      f"({rec['bytes_code']} bytes, sha256 {sha[:12]}…)")


def check_together(runs):
    """Seeds of one entry: each seed once, all from the same script."""
    seen = {}
    for run in runs:
        seed = run["record"]["seed"]
        if seed in seen:
            raise Refusal(f"seed {seed} twice: {seen[seed]} and {run['dir']}")
        seen[seed] = run["dir"]
    first = runs[0]
    data = [(hp["data_path"], hp["tokenizer_path"]) for hp in (logged_hparams(r["log_text"], r["dir"]) for r in runs)]
    for run, where in zip(runs[1:], data[1:]):
        if where != data[0]:
            raise Refusal(f"{first['dir']} and {run['dir']} ran on different data (DATA_PATH, TOKENIZER_PATH {data[0]} and {where})")
    for run in runs[1:]:
        if run["record"]["code_sha256"] != first["record"]["code_sha256"]:
            raise Refusal(f"{first['dir']} and {run['dir']} ran different scripts (code_sha256 "
                          f"{first['record']['code_sha256'][:12]}… and {run['record']['code_sha256'][:12]}…)")


def check_script(script, data, runs):
    """The copied train_gpt.py must be, byte for byte, the script every run hashed."""
    sha = hashlib.sha256(data).hexdigest()
    for run in runs:
        rec = run["record"]
        if rec["code_sha256"] != sha:
            raise Refusal(f"{script} has sha256 {sha[:12]}…, {run['sub_path']} ran {rec['code_sha256'][:12]}…: "
                          f"not the script that ran (--script)")
        if rec["bytes_code"] != len(data):
            raise Refusal(f"{script} is {len(data):,} bytes, {run['sub_path']} counted bytes_code {rec['bytes_code']:,}")


def hardware(runs):
    """`<world_size>x <device>` of the runs (one text when they agree, as they should)."""
    kinds = []
    for run in runs:
        kind = f"{run['record']['world_size']}x {run['record']['device']}"
        if kind not in kinds:
            kinds.append(kind)
    return ", ".join(kinds)


def log_name(run, several):
    """train.log for a single run; train_seed<SEED>.log each when there are several."""
    if not several:
        return "train.log"
    return f"train_seed{run['record']['seed']}.log"


def summary(runs, args, date):
    """submission.json: the challenge's fields first (val_bpb the mean, bytes_total the largest), then the seeds'."""
    first = runs[0]["record"]
    bpbs = [run["record"]["val_bpb"] for run in runs]
    largest = max(runs, key=lambda run: run["record"]["bytes_total"])["record"]
    sub = dict(name=args.name,
               github_id=args.github_id if args.github_id is not None else first.get("github_id", ""),
               author=args.author if args.author is not None else first.get("author", ""),
               val_bpb=round(statistics.mean(bpbs), 8),
               bytes_total=largest["bytes_total"],
               blurb=args.blurb if args.blurb is not None else first.get("blurb", ""),
               date=date,
               seeds=[run["record"]["seed"] for run in runs],
               val_bpb_per_seed={str(run["record"]["seed"]): run["record"]["val_bpb"] for run in runs})
    if len(runs) >= 2:
        sub["val_bpb_std"] = round(statistics.stdev(bpbs), 8)
    losses = [run["record"].get("val_loss") for run in runs]
    if all(isinstance(loss, NUMBER) for loss in losses):
        sub["val_loss"] = round(statistics.mean(losses), 8)
        if len(runs) >= 2:
            sub["val_loss_std"] = round(statistics.stdev(losses), 8)
    sub.update(bytes_code=largest["bytes_code"], bytes_model=largest["bytes_model"],
               code_sha256=first["code_sha256"], hardware=hardware(runs),
               logs={str(run["record"]["seed"]): log_name(run, len(runs) > 1) for run in runs})
    return sub


UNPACK = """python3 - <<'EOF'
import base64, lzma
text = open("train_gpt.py").read()
payload = text.split('b85decode("')[1].split('")')[0]
print(lzma.decompress(base64.b85decode(payload)).decode(), end="")
EOF"""


def source_text(args):
    """The README's Source section: --source (the repository), and always how to read the packed script's source."""
    lines = [f"The repository: {args.source}", ""] if args.source else []
    lines += ["`train_gpt.py` is the readable source packed by `tools/pack.py` (lzma + base85, its first line gives "
              "the source's sha256); to print the source:", "", "```bash", *UNPACK.splitlines(), "```"]
    return lines


def cell(key, value):
    """One table cell: bpb with 8 decimals, byte counts with separators, `-` where a run has no figure."""
    if value is None:
        return "-"
    if key in BPB_COLUMNS:
        return bpb_text(value)
    if key == "bytes_total":
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def readme(sub, runs, source):
    """README.md of the folder, from the records alone (nothing here is typed by hand)."""
    several = len(runs) > 1
    if several:
        score = (f"**val_bpb {bpb_text(sub['val_bpb'])} ± {bpb_text(sub['val_bpb_std'])}** "
                 f"(mean ± sample std over {len(runs)} seeds)")
    else:
        score = f"**val_bpb {bpb_text(sub['val_bpb'])}** (seed {sub['seeds'][0]})"
    by = [sub["author"] or None, f"@{sub['github_id']}" if sub["github_id"] else None]
    byline = " ".join(part for part in by if part)
    lines = [f"# {sub['name']}", "", score, ""]
    lines += [f"{sub['date']}" + (f", {byline}" if byline else ""), ""]
    lines += ["## Results", "", "| " + " | ".join(TABLE) + " |", "|" + "---:|" * len(TABLE)]
    for run in runs:
        lines.append("| " + " | ".join(cell(key, run["record"].get(key)) for key in TABLE) + " |")
    if several:
        lines.append(f"| mean | {bpb_text(sub['val_bpb'])} |" + " |" * (len(TABLE) - 2))
    largest = max(runs, key=lambda run: run["record"]["bytes_total"])["record"]
    whose = f", seed {largest['seed']}" if several else ""
    lines += ["", "## Bytes", "", "| | bytes |", "|---|---:|",
              f"| code (`train_gpt.py`) | {sub['bytes_code']:,} |",
              f"| model (compressed artifact{whose}) | {sub['bytes_model']:,} |",
              f"| total{' (the largest seed)' if several else ''} | {sub['bytes_total']:,} |",
              f"| cap | {CAP:,} ({CAP - sub['bytes_total']:,} to spare) |"]
    hp = logged_hparams(runs[0]["log_text"], runs[0]["dir"])
    validation = logged_data(runs[0]["log_text"])
    lines += ["", "## Data", "", f"`DATA_PATH={hp['data_path']}` `TOKENIZER_PATH={hp['tokenizer_path']}`"]
    if validation:
        lines += ["", f"The log's validation line: `{validation}`"]
    lines += ["", "## Hardware", "", sub["hardware"]]
    lines += ["", "## Command", "", "```bash", "pip install -r requirements.txt"]
    for run in runs:
        rec = run["record"]
        lines.append(f"SEED={rec['seed']} DATA_PATH={hp['data_path']} TOKENIZER_PATH={hp['tokenizer_path']} "
                     f"torchrun --standalone --nproc_per_node={rec['world_size']} train_gpt.py")
    lines += ["```", "", "Each log's `hparams` line lists every hyperparameter its run used. "
              f"`train_gpt.py` is the script that ran ({sub['bytes_code']:,} bytes, sha256 `{sub['code_sha256']}`)."]
    lines += ["", "## What it does", "", sub["blurb"] or "-"]
    lines += ["", "## Files", "", "- `train_gpt.py`: the script (code bytes above)",
              "- `requirements.txt`: its Python packages", "- `submission.json`: the score and the per-seed figures"]
    for run in runs:
        lines.append(f"- `{log_name(run, several)}`: the log of seed {run['record']['seed']}")
    lines += ["", "## Source", ""] + source
    return "\n".join(lines) + "\n"


def folder_files(runs, script_bytes, requirements, sub, text):
    """name -> bytes of everything the folder holds."""
    files = {"train_gpt.py": script_bytes}
    for run in runs:
        files[log_name(run, len(runs) > 1)] = run["log"]
    files["submission.json"] = (json.dumps(sub, indent=2) + "\n").encode()
    files["requirements.txt"] = requirements
    files["README.md"] = text.encode()
    return files


def write_folder(target, files, force):
    """Write the files into a hidden sibling, then rename it into place: the folder appears whole or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{os.getpid()}.tmp"
    old = target.parent / f".{target.name}.{os.getpid()}.old.tmp"
    tmp.mkdir()
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        if force and target.exists():
            target.rename(old)
        try:
            tmp.rename(target)
        except OSError:
            if old.exists():
                old.rename(target)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def plan(args):
    """Every check, and the folder's path and files; nothing is written here."""
    name = folder_name(args.name)
    runs = [load_run(out) for out in args.out_dirs]
    for run in runs:
        check_run(run)
    check_together(runs)
    script = Path(args.script)
    if not script.is_file():
        raise Refusal(f"no script at {script} (--script: the train_gpt.py that ran)")
    script_bytes = script.read_bytes()
    check_script(script, script_bytes, runs)
    if args.date is not None:
        date = checked_date(args.date, "--date")
    else:
        date = checked_date(runs[0]["record"].get("date"), f"{runs[0]['sub_path']}: date")
    requirements = REPO / "requirements.txt"
    if not requirements.is_file():
        raise Refusal(f"no {requirements}")
    target = Path(args.records) / f"{date}_{name}"
    if target.exists() and not (args.force and target.is_dir()):
        raise Refusal(f"{target} exists (--force replaces a folder)")
    sub = summary(runs, args, date)
    text = readme(sub, runs, source_text(args))
    return target, folder_files(runs, script_bytes, requirements.read_bytes(), sub, text)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Build records/track_10min_16mb/<date>_<name>/ from finished runs.")
    ap.add_argument("out_dirs", nargs="+", metavar="OUT_DIR", help="a finished run's OUT_DIR (one per seed)")
    ap.add_argument("--name", required=True, help="the entry's name (submission.json; the folder's name, sanitized)")
    ap.add_argument("--author", help="overrides the records' author")
    ap.add_argument("--github-id", help="overrides the records' github_id")
    ap.add_argument("--blurb", help="overrides the records' blurb (what the entry does)")
    ap.add_argument("--source", help="URL of the entry's source repository (for the README)")
    ap.add_argument("--records", default=str(DEFAULT_RECORDS), help="the records folder (default: %(default)s)")
    ap.add_argument("--script", default=str(DEFAULT_SCRIPT),
                    help="the script that ran (default: this repository's dist/train_gpt.py)")
    ap.add_argument("--date", help="YYYY-MM-DD (default: the first record's date)")
    ap.add_argument("--force", action="store_true", help="replace the folder if it exists")
    args = ap.parse_args(argv)
    try:
        target, files = plan(args)
        write_folder(target, files, args.force)
    except Refusal as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {target}: " + ", ".join(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
