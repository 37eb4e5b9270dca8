"""The bench's own evaluation helpers score as train_gpt.py does: the same targets, the same bytes."""
import sys

from conftest import ROOT, TINY, TOKENIZER


def test_bench_validation_counts_the_bytes_train_gpt_logs(tg, tiny_data):
    sys.path.insert(0, str(ROOT / "bench"))
    from ttt_sweep import validation
    h = tg.Hyperparameters.from_env({**TINY, "DATA_PATH": str(tiny_data), "TOKENIZER_PATH": str(TOKENIZER)})
    val, nbytes = validation(h)
    assert nbytes.numel() == val.numel() - 1  # one byte count per scored target, the last one included
