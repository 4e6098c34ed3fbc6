"""Throughput, latency, memory and size measurements."""

from .speed import BenchResult, bench_models, count_parameters, measure_peak_memory, time_prefill_decode

__all__ = ["BenchResult", "bench_models", "count_parameters", "measure_peak_memory", "time_prefill_decode"]
