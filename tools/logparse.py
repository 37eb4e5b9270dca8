"""Parse a train_gpt.py log into a plain dict (shared by the tools in this folder).

Recognised lines (anywhere in the file, other lines are ignored):
  hparams {JSON}
  model_params:N
  step:S/N train_loss:X train_time:Tms step_avg:Tms
  step:S/N val_loss:X val_bpb:Y
  artifact bytes_total:N bytes_code:C bytes_model:M cap:16000000
  final_prequant_ema_exact val_loss:X val_bpb:Y
  final_int5_zstd_roundtrip_exact val_loss:X val_bpb:Y
  final_sliding_exact val_loss:X val_bpb:Y
  ttt_chunk [i/n] bpb=X time=Ts
  legal_ttt_exact val_loss:X val_bpb:Y
When a final/artifact line appears more than once, the last one wins.
"""
import json
import re

_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf|-inf)"
_RE_TRAIN = re.compile(rf"^step:(\d+)/(\d+) train_loss:{_NUM} train_time:{_NUM}ms")
_RE_VAL = re.compile(rf"^step:(\d+)/(\d+) val_loss:{_NUM} val_bpb:{_NUM}")
_RE_TTT = re.compile(rf"^ttt_chunk \[(\d+)/(\d+)\] bpb={_NUM}")
_RE_PARAMS = re.compile(r"^model_params:(\d+)")
_RE_VOCAB = re.compile(r"^(?:vocab:(\d+) )?val_tokens:(\d+)")  # older logs: no vocab
_RE_KV_INT = re.compile(r"(\w+):(\d+)")
_FINALS = {
    "prequant": "final_prequant_ema_exact",
    "roundtrip": "final_int5_zstd_roundtrip_exact",
    "sliding": "final_sliding_exact",
    "ttt_final": "legal_ttt_exact",
}
_RE_FINAL = {k: re.compile(rf"^{tag} val_loss:{_NUM} val_bpb:{_NUM}") for k, tag in _FINALS.items()}


def parse_log(path):
    out = {"hparams": {}, "model_params": None, "vocab_size": None, "val_tokens": None, "train": [], "val": [], "ttt": [],
           "artifact": {}, "prequant": None, "roundtrip": None, "sliding": None, "ttt_final": None}
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            line = raw.strip()
            if line.startswith("hparams ") and not out["hparams"]:
                try:
                    hp = json.loads(line[len("hparams "):])
                    out["hparams"] = hp if isinstance(hp, dict) else {}
                except json.JSONDecodeError:
                    pass
            elif m := _RE_TRAIN.match(line):
                out["train"].append((int(m[1]), float(m[3]), float(m[4])))
            elif m := _RE_VAL.match(line):
                out["val"].append((int(m[1]), float(m[3]), float(m[4])))
            elif m := _RE_TTT.match(line):
                out["ttt"].append((int(m[1]), int(m[2]), float(m[3])))
            elif m := _RE_VOCAB.match(line):
                out["vocab_size"], out["val_tokens"] = m[1] and int(m[1]), int(m[2])
            elif m := _RE_PARAMS.match(line):
                out["model_params"] = int(m[1])
            elif line.startswith("artifact "):
                out["artifact"] = {k: int(v) for k, v in _RE_KV_INT.findall(line)}
            else:
                for key, rx in _RE_FINAL.items():
                    if m := rx.match(line):
                        out[key] = (float(m[1]), float(m[2]))
                        break
    return out


def final_result(parsed, metric="final"):
    """Best available final score: (label, val_loss, val_bpb) or None.
    Preference: legal TTT, then sliding window, then the int5 round-trip pass; or only
    `metric` (one of _FINALS' keys) when it is not "final"."""
    for key in ("ttt_final", "sliding", "roundtrip") if metric == "final" else (metric,):
        if parsed.get(key) is not None:
            return (_FINALS[key],) + tuple(parsed[key])
    return None
