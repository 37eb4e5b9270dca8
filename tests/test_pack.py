"""tools/pack.py: the self-extracting script a record runs and counts (the end-to-end run of a packed
train_gpt.py is in test_distributed.py)."""
import subprocess
import sys

from conftest import ROOT, load_module

pack = load_module("pack", ROOT / "tools" / "pack.py")


def run_pack(src, out):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "pack.py"), str(src), "-o", str(out)],
                          capture_output=True, text=True, timeout=60)


def test_packing_is_deterministic_and_unpacks_to_the_source():
    source = (ROOT / "train_gpt.py").read_bytes()
    packed = pack.pack(source, "train_gpt.py")
    assert packed == pack.pack(source, "train_gpt.py") and pack.unpack(packed) == source
    assert packed.isascii() and len(packed) < len(source) / 2


def test_a_packed_script_runs_as_itself_and_its_tracebacks_show_the_source_lines(tmp_path):
    src = tmp_path / "boom.py"
    src.write_text('import sys\n\n\ndef explode(x):\n    raise ValueError(f"bad {x}")  # the line to see\n\n\n'
                   'if __name__ == "__main__":\n    print(__name__, __file__)\n    explode(7)\n')
    out = tmp_path / "dist" / "boom.py"
    assert run_pack(src, out).returncode == 0
    r = subprocess.run([sys.executable, str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stdout.split() == ["__main__", str(out)]
    assert 'File "boom.py (packed)", line 5, in explode' in r.stderr
    assert 'raise ValueError(f"bad {x}")  # the line to see' in r.stderr and "ValueError: bad 7" in r.stderr


def test_a_source_that_does_not_compile_is_refused_in_one_line(tmp_path):
    src = tmp_path / "bad.py"
    src.write_text("def f(:\n")
    r = run_pack(src, tmp_path / "out.py")
    assert r.returncode == 1 and r.stderr.startswith("error: cannot pack") and len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "out.py").exists()


def test_the_records_readme_command_prints_a_packed_scripts_source(tmp_path):
    """tools/make_record.py's README tells a reader how to see the source inside the folder's train_gpt.py."""
    command = load_module("make_record", ROOT / "tools" / "make_record.py").UNPACK
    assert run_pack(ROOT / "train_gpt.py", tmp_path / "train_gpt.py").returncode == 0
    r = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (ROOT / "train_gpt.py").read_text()
