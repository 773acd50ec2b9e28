"""Codec benchmark: encode/decode throughput and ratio, RAW vs LZ4, on feature-like data."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from wire import codec


@dataclass(frozen=True, slots=True)
class CodecResult:
    data: str
    compression: str
    raw_bytes: int
    wire_bytes: int
    ratio: float
    encoding: str
    encode_mb_s: float
    decode_mb_s: float


def feature_like_data(candidates: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Columns shaped like a request's features for ``candidates`` items."""
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((candidates, 64), dtype=np.float32)
    sparse = rng.random((candidates, 64), dtype=np.float32)
    sparse[rng.random(sparse.shape) < 0.7] = 0.0
    # 8-bit quantised embedding dequantised to float32: 256 distinct values.
    levels = np.linspace(-1, 1, 256, dtype=np.float32)
    quantised = levels[rng.integers(0, 256, (candidates, 64))]
    lengths = rng.integers(0, 32, candidates)
    ids = rng.integers(1, 10_000_000, (candidates, 32), dtype=np.int64)
    ids[np.arange(32)[None, :] >= lengths[:, None]] = 0  # padded id lists
    small_ints = rng.integers(0, 12, (candidates, 64), dtype=np.uint8)
    return {
        "dense_f32": dense,
        "sparse_f32_70pct_zero": sparse,
        "quantised_emb_f32": quantised,
        "padded_ids_i64": ids,
        "uint8_buckets": small_ints,
    }


def _best_seconds(fn: Callable[[], object], repeat: int, min_time: float) -> float:
    """Fastest of ``repeat`` timed batches, each looping until ``min_time`` passed."""
    best = float("inf")
    for _ in range(repeat):
        loops = 0
        start = time.perf_counter()
        while True:
            fn()
            loops += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time or loops >= 10_000:
                break
        best = min(best, elapsed / loops)
    return best


def run(candidates: int, repeat: int, min_time: float) -> list[CodecResult]:
    results = []
    for name, array in feature_like_data(candidates).items():
        for compression in (codec.Compression.NONE, codec.Compression.LZ4_ALWAYS):
            tensor = codec.encode(name, array, compression)
            enc = _best_seconds(lambda: codec.encode(name, array, compression), repeat, min_time)
            dec = _best_seconds(lambda: codec.decode(tensor), repeat, min_time)
            raw = tensor.raw_size
            results.append(
                CodecResult(
                    data=name,
                    compression="raw" if compression is codec.Compression.NONE else "lz4",
                    raw_bytes=raw,
                    wire_bytes=tensor.ByteSize(),
                    ratio=round(raw / max(1, tensor.ByteSize()), 3),
                    encoding=codec.Encoding.Name(codec.encode(name, array, codec.Compression.LZ4).encoding),
                    encode_mb_s=round(raw / enc / 1e6, 1),
                    decode_mb_s=round(raw / dec / 1e6, 1),
                )
            )
    return results


def format_table(results: list[CodecResult]) -> str:
    header = f"{'data':<24}{'mode':<6}{'raw B':>10}{'wire B':>10}{'ratio':>8}{'enc MB/s':>11}{'dec MB/s':>11}  adaptive"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.data:<24}{r.compression:<6}{r.raw_bytes:>10}{r.wire_bytes:>10}{r.ratio:>8.2f}"
            f"{r.encode_mb_s:>11.0f}{r.decode_mb_s:>11.0f}  {r.encoding if r.compression == 'lz4' else ''}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rootleaf bench codec", description=__doc__)
    parser.add_argument("--candidates", type=int, default=256, help="rows per tensor")
    parser.add_argument("--repeat", type=int, default=3, help="timed batches per case (best kept)")
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds per timed batch")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON ('-' = stdout)")
    args = parser.parse_args(argv)
    results = run(args.candidates, args.repeat, args.min_time)
    print(format_table(results))
    if args.json:
        payload = json.dumps({"candidates": args.candidates, "results": [asdict(r) for r in results]}, indent=2)
        if args.json == "-":
            print(payload)
        else:
            with open(args.json, "w", encoding="utf-8") as fh:
                fh.write(payload + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
