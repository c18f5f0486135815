"""Decoder memory drill, run as its own process: `python tests/decode_memory.py DIR N` decodes the clips in DIR
round-robin N times in this one process (as a long-lived decode worker would) and prints JSON: RSS after a
warm-up of N/10 decodes, RSS at the end, the growth in MB, and the outcomes by kind."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import psutil

from raypipe.config import SamplingConfig
from raypipe.video.decode import VideoError, decode_video


def main(folder: str, n: int) -> dict:
    clips = sorted(str(p) for p in Path(folder).iterdir())
    sampling = SamplingConfig(fps=4.0, max_frames=16)
    proc, warm = psutil.Process(), max(1, n // 10)
    kinds: Counter = Counter()
    rss_warm = None
    for i in range(n):
        result = decode_video(clips[i % len(clips)], sampling)
        kinds[result.kind if isinstance(result, VideoError) else "ok"] += 1
        if i + 1 == warm:
            rss_warm = proc.memory_info().rss
    rss_end = proc.memory_info().rss
    return {
        "decodes": n,
        "clips": len(clips),
        "rss_after_warmup_mb": round(rss_warm / 2**20, 1),
        "rss_end_mb": round(rss_end / 2**20, 1),
        "growth_mb": round((rss_end - rss_warm) / 2**20, 1),
        "outcomes": dict(kinds),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]))))
