"""Packs train_gpt.py into the script a record runs and counts: the source, lzma-compressed and
base85-encoded, under a few lines that decompress it and run it as themselves.

    python3 tools/pack.py train_gpt.py -o dist/train_gpt.py

The challenge counts the bytes of the script as it runs, so the packed file is what runs and what
counts (~36 KB against ~95 KB of readable source). The packed script behaves as the source does:
the same module globals (`__name__`, and `__file__` naming the packed file, whose size the script
reports as bytes_code), and its source registered with linecache under `<name> (packed)`, so a
traceback shows the source's own line numbers and lines. No minification: the bytes it would save
are a few KB, and it would cost readable tracebacks.
"""
import argparse
import base64
import hashlib
import lzma
import sys
from pathlib import Path

# The stub: {name} the source's file name, {sha} its sha256, {payload} the base85 text.
STUB = '''"""{name}, packed by tools/pack.py (source sha256 {sha}): lzma + base85, run as itself."""
import base64
import linecache
import lzma
import sys
import traceback
source = lzma.decompress(base64.b85decode("{payload}")).decode()
linecache.cache["{name} (packed)"] = (len(source), None, source.splitlines(True), "{name} (packed)")
sys.excepthook = traceback.print_exception  # reads linecache (the built-in hook reads the file on disk)
exec(compile(source, "{name} (packed)", "exec"))
'''


def pack(source: bytes, name: str) -> bytes:
    """The packed script of `source` (UTF-8 Python), which runs it under the file name `name (packed)`."""
    source.decode("utf-8")  # a clear error here rather than in the packed script
    payload = base64.b85encode(lzma.compress(source, preset=9 | lzma.PRESET_EXTREME)).decode("ascii")
    return STUB.format(name=name, sha=hashlib.sha256(source).hexdigest(), payload=payload).encode("ascii")


def unpack(packed: bytes) -> bytes:
    """The source inside a packed script (for checks and tests)."""
    text = packed.decode("ascii")
    payload = text.split('b85decode("', 1)[1].split('")', 1)[0]
    return lzma.decompress(base64.b85decode(payload))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path, help="the readable script (train_gpt.py)")
    ap.add_argument("-o", "--out", type=Path, required=True, help="the packed script to write (dist/train_gpt.py)")
    args = ap.parse_args(argv)
    try:
        source = args.source.read_bytes()
        compile(source, str(args.source), "exec")  # a syntax error is the source's, reported as such
        packed = pack(source, args.source.name)
        if unpack(packed) != source:
            raise ValueError("the packed script does not decompress to the source")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_bytes(packed)
        tmp.replace(args.out)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError) as e:
        print(f"error: cannot pack {args.source}: {e}", file=sys.stderr)
        return 1
    print(f"{args.out}: {len(packed)} bytes (source {len(source)} bytes, sha256 {hashlib.sha256(source).hexdigest()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
