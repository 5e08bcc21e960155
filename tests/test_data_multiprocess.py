"""Two JAX processes (jax.distributed on CPU, 4 devices each) read disjoint halves of the data,
build one global batch together, and resume exactly from a saved iterator state."""
import json
import os
import socket
import subprocess
import sys

import numpy as np

from lumiere_jax.data import schema, shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_RECORDS = 16

PROCESS = r'''
import json, sys
import jax

jax.config.update("jax_num_cpu_devices", 4)
process_id, port, pattern, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)

import numpy as np
from absl import flags
from lumiere_jax.config import base_config
from lumiere_jax.data.pipeline import DataPipeline
from lumiere_jax.data.shards import iter_records
from lumiere_jax.parallel import logical_axis_rules, make_mesh

flags.FLAGS.mark_as_parsed()
c = base_config()
c.data.update(dict(num_frames=8, resolution=16, batch_size=4, num_workers=0, read_threads=1, read_buffer_size=4))
c.data.sources = [{"glob": pattern, "weight": 1.0, "kind": "video"}]
mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
records = {r.id: r.frames for path in sorted(__import__("glob").glob(pattern)) for r in iter_records(path)}


def rows_match(batch):
    """Every row this process holds of the global batch is a window of the record its id names."""
    shards = batch["video"].addressable_shards
    first = min(s.index[0].start for s in shards)
    for s in shards:
        row = s.index[0].start
        clip = np.round((np.asarray(s.data[0], np.float64) + 1) * 127.5).astype(np.uint8)
        frames = records[batch["id"][row - first]]
        if not any(np.array_equal(clip, frames[k : k + 8]) for k in range(len(frames) - 7)):
            return False
    return True


def fingerprint(batch):
    return [list(map(str, batch["id"])), float(jax.numpy.sum(batch["video"]))]


pipeline = DataPipeline(c, mesh, logical_axis_rules(None))
epoch = [next(pipeline) for _ in range(4)]  # 8 records per process = 4 batches of 2 local rows
state = pipeline.get_state()
after = [fingerprint(next(pipeline)) for _ in range(3)]
pipeline.close()
resumed = DataPipeline(c, mesh, logical_axis_rules(None))
resumed.set_state(json.loads(json.dumps(state)))
again = [fingerprint(next(resumed)) for _ in range(3)]
resumed.close()
result = {
    "epoch_ids": [str(i) for b in epoch for i in b["id"]],
    "global_shape": list(epoch[0]["video"].shape),
    "rows_match": all(rows_match(b) for b in epoch),
    "after": after,
    "again": again,
}
with open(out, "w") as f:
    json.dump(result, f)
'''


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_split_the_data_and_resume(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"clip-{i:02d}" for i in range(NUM_RECORDS)]
    for k in range(2):
        with shards.ShardWriter(str(tmp_path / f"clips-0000{k}-of-00002.array_record"), codec="raw") as writer:
            for record_id in ids[k::2]:
                frames = rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
                writer.write(schema.ClipRecord(id=record_id, caption=record_id, frames=frames, fps=16.0))
    script = tmp_path / "process.py"
    script.write_text(PROCESS)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # 4 devices each, not conftest's 8
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    port, pattern = str(free_port()), str(tmp_path / "clips-*.array_record")
    procs = [
        subprocess.Popen([sys.executable, str(script), str(i), port, pattern, str(tmp_path / f"out{i}.json")],
                         env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    results = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)]
    halves = [set(r["epoch_ids"]) for r in results]
    assert all(len(r["epoch_ids"]) == NUM_RECORDS // 2 == len(h) for r, h in zip(results, halves))
    assert not halves[0] & halves[1] and halves[0] | halves[1] == set(ids)
    for r in results:
        assert r["global_shape"] == [4, 8, 16, 16, 3] and r["rows_match"]
        assert r["again"] == r["after"]
    assert results[0]["after"][0][1] == results[1]["after"][0][1]  # one global batch, summed on both
