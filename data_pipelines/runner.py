"""What every shard-writing job shares: resumable shards, worker processes, skip counting, summary.

A job splits its inputs into one `ShardTask` per output shard and supplies a module-level
`shard_fn(items, settings, sink)` that turns one task's items into records. The runner:
  * keeps shards that already exist (a shard is written under a temporary name and renamed
    when complete, so an existing shard is a finished one) after checking, through the stats
    file written next to it, that it came from the same inputs and settings (what defines a
    shard, not where its input files lie: see `file_items_identity`), and names what changed
    when it did not;
  * runs the remaining tasks in worker processes (spawned, not forked: safe from a parent
    that holds threads), with one progress bar over input items;
  * counts every skipped input by reason instead of dying on it, and writes a summary JSON.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import multiprocessing
import os
import queue
import sys
import time
import traceback
from typing import Any, Callable, Iterator, Optional, Sequence

import tqdm

from lumiere_jax.data.schema import ClipRecord, encode_record
from lumiere_jax.data.shards import SHARD_SUFFIX, TMP_SUFFIX, ShardWriter, captions_path, shard_name

MAX_LISTED_FAILURES = 200  # per shard and in the summary; the counts are always complete


class JobError(Exception):
    """A problem with the job's arguments or output directory: the job stops before writing."""


class ShardWriteError(Exception):
    """Writing the shard file failed (disk full, ...): fatal for the shard, never one input's fault."""


class Skip(Exception):
    """Raised by a job for one input it cannot use; the runner counts it under `reason`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass
class ShardTask:
    index: int
    path: str
    items: Any  # picklable description of this shard's inputs, read by the job's shard_fn
    num_items: Optional[int]  # for the progress bar; None when unknown until read
    identity: Any  # JSON-able: what of `items` defines the shard's content (see make_tasks)


def make_tasks(
    output_dir: str,
    prefix: str,
    item_lists: Sequence[Any],
    sizes: Sequence[Optional[int]],
    identify: Optional[Callable[[Any], Any]] = None,
) -> list[ShardTask]:
    """One task per entry of `item_lists`, shard k of len(item_lists), with its item count.

    `identify(items)` is what of a task's items defines its shard; the shard's stats record it,
    and a re-run keeps the shard only while it is unchanged. Without it the items themselves
    are used, right for jobs whose items are numbers (seeds, ranges); jobs whose items name
    input files pass `file_items_identity`, so that their shards survive the inputs moving.
    """
    count = len(item_lists)
    paths = [os.path.join(output_dir, shard_name(prefix, k, count)) for k in range(count)]
    return [
        ShardTask(k, path, items, n, identify(items) if identify else items)
        for k, (path, items, n) in enumerate(zip(paths, item_lists, sizes))
    ]


CONTENT_SAMPLE_BYTES = 1 << 16  # read from each end of an input file for its content identity


def file_identity(path: str) -> Optional[dict[str, Any]]:
    """A file's size and a SHA-1 of its first and last 64 KiB (all of it when smaller), or None
    when it cannot be read (the job then skips it, and a readable file later counts as a change).

    Not a hash of the whole file: that would read every input in full at every start, which on
    resuming a large video set costs about as much I/O as the job itself. Another video under
    the same name (re-encoded, trimmed, a different take) changes the size or the container
    header and index at the ends, so the size and the ends tell files apart in two small reads;
    an edit that keeps the size and touches only the middle of a file goes unnoticed.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            digest = hashlib.sha1(f.read(CONTENT_SAMPLE_BYTES))
            if size > CONTENT_SAMPLE_BYTES:
                f.seek(max(CONTENT_SAMPLE_BYTES, size - CONTENT_SAMPLE_BYTES))
                digest.update(f.read())
    except OSError:
        return None
    return {"size": size, "sha1_of_ends": digest.hexdigest()}


def file_items_identity(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The identity of items that name an input file under 'path': every other field, and the
    file's `file_identity` as 'content' in place of the path.

    Where a file lies is not part of the output (a record names its source by the item's key:
    the path relative to the input folder, or as the manifest wrote it), so moving the input
    folder (and its manifest) keeps the finished shards. Its content is, so a file replaced
    under the same name is a change, as is any changed key, caption or segment.
    """
    identities = []
    for item in items:
        identity = {k: v for k, v in item.items() if k != "path"}
        if "path" in item:
            identity["content"] = file_identity(item["path"])
        identities.append(identity)
    return identities


def stats_path(shard_path: str) -> str:
    return shard_path[: -len(SHARD_SUFFIX)] + ".stats.json"


class ShardSink:
    """Where a job's shard function puts records, and how it reports inputs done or skipped."""

    def __init__(self, writer: ShardWriter, progress: Callable[[int], None]):
        self._writer = writer
        self._progress = progress
        self.stats: dict[str, Any] = {"records": 0, "items": 0, "items_with_records": 0, "skipped": {}, "failures": []}

    def write(self, record: ClipRecord) -> None:
        data = encode_record(record, self._writer.codec, self._writer.quality)  # a bad record fails its input
        try:
            self._writer.write_encoded(data, record.id, record.caption)
        except Exception as e:
            raise ShardWriteError(f"writing {self._writer.path} failed: {e}") from e
        self.stats["records"] += 1

    def skip(self, reason: str, item: str, detail: str = "") -> None:
        self.stats["skipped"][reason] = self.stats["skipped"].get(reason, 0) + 1
        if len(self.stats["failures"]) < MAX_LISTED_FAILURES:
            self.stats["failures"].append({"item": item, "reason": reason, "detail": detail})

    @contextlib.contextmanager
    def item(self, name: str) -> Iterator[None]:
        """Processes one input: a Skip, or any other error, is counted and the job goes on."""
        before = self.stats["records"]
        try:
            yield
        except Skip as e:
            self.skip(e.reason, name, e.detail)
        except ShardWriteError:
            raise
        except Exception as e:  # noqa: BLE001 - one bad input must never stop the job
            self.skip("error", name, f"{type(e).__name__}: {e}")
        finally:
            self.stats["items"] += 1
            self.stats["items_with_records"] += int(self.stats["records"] > before)
            self._progress(1)


def _write_json(path: str, value: Any) -> None:
    with open(path + TMP_SUFFIX, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, sort_keys=True)
    os.replace(path + TMP_SUFFIX, path)


def _run_task(shard_fn, task: ShardTask, settings: dict, fingerprint: dict, progress) -> dict:
    """Writes one shard; the stats file lands first, so an existing shard always has one."""
    writer = ShardWriter(task.path, settings["codec"], settings["quality"])
    sink = ShardSink(writer, progress)
    try:
        shard_fn(task.items, settings, sink)
    except BaseException:
        writer.abort()
        raise
    stats = dict(sink.stats, fingerprint=fingerprint)
    _write_json(stats_path(task.path), stats)
    writer.close()
    return stats


_worker_progress: Optional[multiprocessing.Queue] = None


def _init_worker(progress_queue) -> None:
    global _worker_progress
    _worker_progress = progress_queue


def _run_task_in_worker(args) -> tuple[int, Optional[dict], Optional[str]]:
    shard_fn, task, settings, fingerprint = args
    try:
        return task.index, _run_task(shard_fn, task, settings, fingerprint, _worker_progress.put), None
    except Exception:  # noqa: BLE001 - reported in the summary as a failed shard
        return task.index, None, traceback.format_exc()


def shard_fingerprint(job: str, settings: dict, task: ShardTask) -> dict:
    """What a shard is written from: the job, its settings and its inputs' identity (its index
    and the shard count are in its name). Kept whole rather than hashed, so that a mismatch can
    name what changed; JSON-normalised, so it compares equal to the copy read from the stats."""
    content = {"job": job, "settings": settings, "inputs": task.identity}
    return json.loads(json.dumps(content, sort_keys=True, default=str))


def _what_changed(stats: Optional[dict], wanted: dict) -> str:
    """Why a finished shard cannot be kept, naming the first part of its fingerprint that differs."""
    if stats is None:
        return "has no stats file, so what it was written from is unknown"
    had = stats.get("fingerprint")
    if not isinstance(had, dict) or set(had) != set(wanted):
        return "was written by an older version of the job, whose stats file does not record its inputs"
    if had["job"] != wanted["job"]:
        return f"was written by the job {had['job']}, not {wanted['job']}"
    if had["settings"] != wanted["settings"]:
        return f"was written with other settings ({_changes(had['settings'], wanted['settings'])})"
    return f"was written from other inputs ({_input_change(had['inputs'], wanted['inputs'])})"


def _changes(old: dict, new: dict) -> str:
    """'name: old -> new' for every entry of two dicts that differs (null where one is absent)."""
    names = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}" for k in names)


def _input_change(old: Any, new: Any) -> str:
    """The first input that differs between a shard's recorded inputs and today's."""
    if not (isinstance(old, list) and isinstance(new, list)):
        return f"{json.dumps(old)} -> {json.dumps(new)}"
    if len(old) != len(new):
        return f"it holds {len(old)} inputs, today's inputs give it {len(new)}: inputs were added or removed"
    i, a, b = next((i, a, b) for i, (a, b) in enumerate(zip(old, new)) if a != b)
    if isinstance(a, dict) and isinstance(b, dict):
        name = json.dumps(b["key"]) if "key" in b and a.get("key") == b["key"] else str(i)
        return f"input {name}: {_changes(a, b)}"
    return f"input {i}: {json.dumps(a)} -> {json.dumps(b)}"


def _kept_stats(task: ShardTask, fingerprint: dict, overwrite: bool) -> Optional[dict]:
    """Stats of a finished shard to keep, or None when it must be (re)written."""
    for leftover in (task.path + TMP_SUFFIX, captions_path(task.path) + TMP_SUFFIX):
        if os.path.exists(leftover):
            os.remove(leftover)  # left by an interrupted run
    if not os.path.exists(task.path):
        return None
    stats = None
    if os.path.exists(stats_path(task.path)):
        with open(stats_path(task.path), encoding="utf-8") as f:
            stats = json.load(f)
    if stats is not None and stats.get("fingerprint") == fingerprint:
        return stats
    if overwrite:
        os.remove(task.path)
        return None
    raise JobError(
        f"{task.path} exists but {_what_changed(stats, fingerprint)}; write to a new --output_dir, "
        "or pass --overwrite to rewrite the shards whose inputs or settings changed"
    )


def _remove_or_refuse_stale(output_dir: str, prefix: str, tasks: Sequence[ShardTask], overwrite: bool) -> None:
    """Shards of this prefix from a run with another shard count would be read with these by
    any training glob, duplicating data: they are deleted with --overwrite, else refused."""
    wanted = {t.path for t in tasks}
    stale = sorted(p for p in glob.glob(os.path.join(output_dir, f"{prefix}-*-of-*{SHARD_SUFFIX}")) if p not in wanted)
    if stale and not overwrite:
        raise JobError(
            f"{output_dir} holds {len(stale)} '{prefix}' shards of another run (e.g. {os.path.basename(stale[0])}); "
            "write to a new --output_dir or --prefix, or pass --overwrite to delete them"
        )
    for path in stale:
        for leftover in (path, stats_path(path), captions_path(path)):
            if os.path.exists(leftover):
                os.remove(leftover)


def _run_pending(shard_fn, pending, settings, fingerprints, workers, bar) -> tuple[dict[int, dict], dict[int, str]]:
    done: dict[int, dict] = {}
    failed: dict[int, str] = {}
    if workers <= 1 or len(pending) <= 1:
        for task in pending:
            try:
                done[task.index] = _run_task(shard_fn, task, settings, fingerprints[task.index], bar.update)
            except Exception:  # noqa: BLE001 - the other shards still get written
                failed[task.index] = traceback.format_exc()
        return done, failed
    ctx = multiprocessing.get_context("spawn")
    progress_queue = ctx.Queue()
    args = [(shard_fn, task, settings, fingerprints[task.index]) for task in pending]
    with ctx.Pool(min(workers, len(pending)), initializer=_init_worker, initargs=(progress_queue,)) as pool:
        results = pool.imap_unordered(_run_task_in_worker, args)
        remaining = len(pending)
        while remaining:
            try:
                index, stats, error = results.next(timeout=0.2)
            except multiprocessing.TimeoutError:
                pass
            else:
                remaining -= 1
                if error is None:
                    done[index] = stats
                else:
                    failed[index] = error
            _drain(progress_queue, bar)
    _drain(progress_queue, bar)
    return done, failed


def _drain(progress_queue, bar) -> None:
    while True:
        try:
            bar.update(progress_queue.get_nowait())
        except queue.Empty:
            return


def run_job(
    job: str,
    tasks: Sequence[ShardTask],
    shard_fn: Callable[[Any, dict, ShardSink], None],
    settings: dict,
    output_dir: str,
    prefix: str,
    workers: int = 1,
    overwrite: bool = False,
) -> dict:
    """Writes every shard of `tasks` that is not already there, then the summary JSON.

    `settings` must hold 'codec' and 'quality'; all of it is passed to `shard_fn` and recorded in
    the summary. Returns the summary (also written to `<output_dir>/<prefix>.summary.json`).
    """
    start = time.time()
    os.makedirs(output_dir, exist_ok=True)
    _remove_or_refuse_stale(output_dir, prefix, tasks, overwrite)
    fingerprints = {t.index: shard_fingerprint(job, settings, t) for t in tasks}
    kept = {t.index: s for t in tasks if (s := _kept_stats(t, fingerprints[t.index], overwrite)) is not None}
    pending = [t for t in tasks if t.index not in kept]
    sizes = [t.num_items for t in pending]
    total = None if None in sizes else sum(sizes)
    with tqdm.tqdm(total=total, desc=job, unit="input", dynamic_ncols=True) as bar:
        done, failed = _run_pending(shard_fn, pending, settings, fingerprints, workers, bar)
    summary = _summarise(job, settings, tasks, kept, done, failed, time.time() - start)
    _write_json(os.path.join(output_dir, f"{prefix}.summary.json"), summary)
    return summary


def _summarise(job, settings, tasks, kept, done, failed, elapsed) -> dict:
    per_shard = [*kept.values(), *done.values()]
    skipped: dict[str, int] = {}
    failures: list[dict] = []
    for stats in per_shard:
        for reason, n in stats["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
        failures.extend(stats["failures"])
    return {
        "job": job,
        "settings": settings,
        "shards": {
            "total": len(tasks),
            "written": len(done),
            "kept": len(kept),
            "failed": {tasks[i].path: error for i, error in sorted(failed.items())},
        },
        "records": sum(s["records"] for s in per_shard),
        "inputs": sum(s["items"] for s in per_shard),
        "inputs_with_records": sum(s["items_with_records"] for s in per_shard),
        "skipped": dict(sorted(skipped.items())),
        "failures": failures[:MAX_LISTED_FAILURES],
        "elapsed_s": round(elapsed, 3),
    }


def cli(run: Callable[[], dict]) -> int:
    """Runs a job from its CLI: prints the summary JSON, or the error when the job cannot start.

    The exit status is 0 when every shard was written, 1 when a shard failed (re-running the
    same command retries only the missing shards) and 2 when the job could not start.
    """
    try:
        summary = run()
    except JobError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 1 if summary["shards"]["failed"] else 0


def add_common_flags(parser, prefix: str) -> None:
    """Flags every job has: where shards go, how many, how they are encoded, parallelism."""
    parser.add_argument("--output_dir", required=True, help="directory for the shards and the summary JSON")
    parser.add_argument("--prefix", default=prefix, help="shard file name prefix (default: %(default)s)")
    parser.add_argument("--num_shards", type=int, default=8, help="number of shards (default: %(default)s)")
    parser.add_argument(
        "--codec", choices=("jpeg", "png", "raw"), default="jpeg", help="per-frame encoding (default: %(default)s)"
    )
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality 1-100 (default: %(default)s)")
    parser.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1), help="worker processes (default: %(default)s)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace shards written with other settings")


def check_common_flags(parser, args) -> None:
    if args.num_shards < 1:
        parser.error(f"--num_shards must be >= 1, got {args.num_shards}")
    if not 1 <= args.quality <= 100:
        parser.error(f"--quality must be in [1, 100], got {args.quality}")


def captioned_files(root: str, extensions: Sequence[str], flag: str) -> list[dict[str, Any]]:
    """Every file under `root` (sorted, recursive) ending in one of `extensions`, as an item
    {key (the path relative to root), path, caption (its <name>.txt sidecar, '' without one)}."""
    if not os.path.isdir(root):
        raise JobError(f"{flag} {root} is not a directory")
    items = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(tuple(extensions)):
                path = os.path.join(dirpath, name)
                sidecar = os.path.splitext(path)[0] + ".txt"
                caption = ""
                if os.path.isfile(sidecar):
                    with open(sidecar, encoding="utf-8") as f:
                        caption = f.read().strip()
                items.append({"key": os.path.relpath(path, root), "path": path, "caption": caption})
    return items


def parse_sizes(parser, text: str) -> list[int]:
    """'128,512' -> [128, 512]: the smallest becomes the record's frames, the rest its hires copies."""
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, got {text!r}")
    if not sizes or sizes[0] < 1:
        parser.error(f"--sizes must list positive sizes, got {text!r}")
    return sizes
