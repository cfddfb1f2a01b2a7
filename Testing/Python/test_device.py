"""Device settings of the engine's own processes: the backbone's precision, torch threads per job."""
from __future__ import annotations

import torch


def test_auto_precision_is_bf16_only_where_the_device_computes_it_natively():
    from BrainDiffSegLib.device import resolve_precision, use_bf16

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if use_bf16("auto", cpu) else "fp32")
    assert [resolve_precision(p, cpu) for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]


def test_threads_follow_the_idle_cores():
    """`adaptive_threads`: torch's choice on an idle machine, fewer while other work keeps cores busy, at least one;
    `busy_cpus` reads Linux's instant count of runnable threads, less its own reader (median of the reads)."""
    from BrainDiffSegLib.device import DEFAULT_THREADS, adaptive_threads, busy_cpus

    assert adaptive_threads(busy=0, cores=2, default=2) == 2
    assert adaptive_threads(busy=2, cores=2, default=2) == 1
    assert adaptive_threads(busy=5, cores=16, default=8) == 8
    assert adaptive_threads(busy=12, cores=16, default=8) == 4
    reads = iter(["0.5 0.4 0.3 3/250 123", "0.5 0.4 0.3 1/250 123", "0.5 0.4 0.3 3/250 123"])
    assert busy_cpus(samples=3, interval=0, read=lambda: next(reads)) == 2
    assert busy_cpus(samples=1, read=lambda: "garbage") is None
    assert adaptive_threads(busy=None, default=3) in range(1, 4)
    assert 1 <= adaptive_threads() <= DEFAULT_THREADS
