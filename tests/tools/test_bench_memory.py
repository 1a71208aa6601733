"""tools/bench/bench_memory.py: the micro-batch is the largest power of two that fits and divides
the per-process batch, and the command line carries it."""
from tools.bench.bench_memory import command, micro_batch


def test_micro_batch_rule():
    assert micro_batch(155, 512) == 128
    assert micro_batch(5, 512) == 4
    assert micro_batch(0, 512) == 0          # not even one image fits
    assert micro_batch(3000, 512) == 512     # never above the per-process batch
    assert micro_batch(100, 96) == 32        # must divide 96


def test_command_line():
    line = command("LightningDiT-XL/1", 128, True, 2)
    assert line.startswith("GPUS_PER_NODE=2 bash run_train.sh configs/lightningdit_xl_vavae_f16d32.yaml")
    assert "train.micro_batch_size=128" in line and "model.use_checkpoint=true" in line
