"""Launch scripts (launch/): dry-run command lines, refusals, and the job's argv surviving every shell hop.

Dry runs print one shell-quoted command per line, so `shlex.split` gives back the exact argv each
tool would receive. The stronger checks run the scripts for real against stand-ins for the cluster
tools (gcloud, scontrol, srun) that execute what they are handed locally, with a stand-in python
that records its argv and environment: the override with spaces, quotes and shell metacharacters
must reach the job byte for byte.
"""
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

import pytest

# Spaces, both quote kinds and shell metacharacters: a quoting bug splits it, or runs part of it.
OVERRIDE = """--config.sample.prompt=a "quoted" cat's day; $(touch pwned) & `echo` $HOME"""
JOB_FLAGS = ["--config=configs/stunet_paper.py", "--workdir=/runs/a b", "--mode=train", OVERRIDE]

FAKE_PYTHON = """#!{python}
import json, os, pathlib, sys, time
out = pathlib.Path(os.environ["FAKE_OUT"])
name = os.environ.get("JAX_PROCESS_ID", "job")
keys = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JOB_SETTING")
record = json.dumps({{"argv": sys.argv[1:], "env": {{k: os.environ.get(k) for k in keys}}}})
(out / f"{{name}}.tmp").write_text(record)
(out / f"{{name}}.tmp").rename(out / f"{{name}}.json")  # whole or absent for a reader polling for it
time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
"""

FAKE_GCLOUD = """#!/usr/bin/env bash
# Records its argv; runs `tpu-vm ssh ... --command CMD` as the worker's login shell would, in FAKE_HOME.
set -euo pipefail
printf '%s\\n' "$*" >> "$FAKE_OUT/gcloud.log"
if [[ "$1 $2 $3 $4" == "compute tpus tpu-vm ssh" ]]; then
  while (($#)); do
    if [[ "$1" == --command ]]; then cd "$FAKE_HOME"; exec bash -c "$2"; fi
    shift
  done
fi
"""

FAKE_SCONTROL = """#!/usr/bin/env bash
[[ "$1 $2 $3" == "show hostnames gpu-[7-9]" ]] || exit 1
printf 'gpu-7\\ngpu-8\\ngpu-9\\n'
"""

FAKE_SRUN = """#!/usr/bin/env bash
# One task per node, one after the other, each with its SLURM_PROCID.
nodes=1
while [[ "$1" == -* ]]; do
  case "$1" in --nodes=*) nodes="${1#*=}" ;; esac
  shift
done
for ((i = 0; i < nodes; i++)); do SLURM_PROCID=$i "$@"; done
"""


GUARDED_TOOLS = ("gcloud", "xpk", "kubectl", "srun", "scontrol")


@pytest.fixture(scope="module")
def launch_dir(repo_root):
    return repo_root / "launch"


@pytest.fixture(scope="module", autouse=True)
def guard_real_tools(tmp_path_factory):
    """Puts failing stand-ins first on PATH, so no test can reach a real cluster tool."""
    guard = tmp_path_factory.mktemp("guard")
    for name in GUARDED_TOOLS:
        (guard / name).write_text(f"#!/bin/sh\necho 'a test called the real {name}' >&2\nexit 97\n")
        (guard / name).chmod(0o755)
    previous = os.environ["PATH"]
    os.environ["PATH"] = f"{guard}:{previous}"
    yield
    os.environ["PATH"] = previous


@pytest.fixture
def fakes(tmp_path):
    """A bin directory with the stand-in tools, the stand-in python, and the folder they report to."""
    bin_dir, out, home = tmp_path / "bin", tmp_path / "out", tmp_path / "home"
    for d in (bin_dir, out, home / "lumiere"):
        d.mkdir(parents=True)
    tools = {"python": FAKE_PYTHON.format(python=sys.executable), "gcloud": FAKE_GCLOUD,
             "scontrol": FAKE_SCONTROL, "srun": FAKE_SRUN}
    for name, text in tools.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_OUT=str(out), FAKE_HOME=str(home))
    return {"out": out, "home": home, "env": env, "python": str(bin_dir / "python")}


def launch(launch_dir, script, *args, env=None):
    """Runs a launch script with `env` (default: ours) minus LUMIERE_/JAX_/SLURM_ settings, LUMIERE_DRY_RUN kept."""
    keep = ("LUMIERE_DRY_RUN",)
    clean = {k: v for k, v in (env or os.environ).items()
             if k in keep or not k.startswith(("LUMIERE_", "JAX_", "SLURM_"))}
    return subprocess.run(["bash", str(launch_dir / script), *args], capture_output=True, text=True, env=clean,
                          timeout=60)


def dry_run(launch_dir, script, *args, env=None):
    """The argv of every command the script would run (dry run by LUMIERE_DRY_RUN=1)."""
    proc = launch(launch_dir, script, *args, env={**(env or os.environ), "LUMIERE_DRY_RUN": "1"})
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines()]


def wait_for(path, seconds=20):
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return json.loads(path.read_text())


TPU = ["--name", "lumiere-v5p", "--zone", "us-east5-a"]


def test_tpu_create_vm_and_queued_resource(launch_dir):
    create = ["create", *TPU, "--accelerator-type", "v5p-32", "--version", "v2-alpha-tpuv5"]
    assert dry_run(launch_dir, "tpu/tpu.sh", *create, "--project", "my-proj") == [
        ["gcloud", "compute", "tpus", "tpu-vm", "create", "lumiere-v5p", "--zone", "us-east5-a", "--project",
         "my-proj", "--accelerator-type", "v5p-32", "--version", "v2-alpha-tpuv5"]]
    assert dry_run(launch_dir, "tpu/tpu.sh", *create, "--queued", "--spot") == [
        ["gcloud", "compute", "tpus", "queued-resources", "create", "lumiere-v5p", "--node-id", "lumiere-v5p",
         "--zone", "us-east5-a", "--accelerator-type", "v5p-32", "--runtime-version", "v2-alpha-tpuv5", "--spot"],
        ["gcloud", "compute", "tpus", "queued-resources", "describe", "lumiere-v5p", "--zone", "us-east5-a",
         "--format", "value(state.state)"]]


def test_tpu_values_come_from_the_environment_too(launch_dir):
    env = dict(os.environ, LUMIERE_TPU_NAME="from-env", LUMIERE_ZONE="europe-west4-a")
    proc = subprocess.run(["bash", str(launch_dir / "tpu/tpu.sh"), "delete", "--dry-run"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert shlex.split(proc.stdout) == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "from-env", "--zone",
                                        "europe-west4-a", "--quiet"]


def test_tpu_run_dry_run_command_line(launch_dir):
    (line,) = dry_run(launch_dir, "tpu/tpu.sh", "run", *TPU, "--config", "configs/stunet_paper.py",
                      "--workdir", "/runs/a b", "--job", "paper", "--", OVERRIDE)
    assert line[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "lumiere-v5p", "--zone", "us-east5-a",
                        "--worker=all"]
    assert line[9] == "--command" and len(line) == 11
    remote = shlex.split(line[10])  # what the worker's shell parses
    job = ["python3", "-m", "lumiere_jax.main", *JOB_FLAGS]
    start = remote.index("nohup") + 1
    assert remote[start:start + len(job) + 2] == [*job, ">", "logs/paper.log"]


def test_tpu_run_logs_and_stop_reach_the_job_verbatim(launch_dir, fakes):
    """run -> gcloud ssh -> the worker's shell -> nohup -> python: argv and --env intact; stop ends it."""
    args = [*TPU, "--python", fakes["python"], "--config", "configs/stunet_paper.py", "--workdir", "/runs/a b",
            "--env", "FAKE_SLEEP=30", "--env", "JOB_SETTING=x y 'z'"]
    proc = launch(launch_dir, "tpu/tpu.sh", "run", *args, "--", OVERRIDE, env=fakes["env"])
    assert proc.returncode == 0, proc.stderr
    record = wait_for(fakes["out"] / "job.json")
    assert record["argv"] == ["-m", "lumiere_jax.main", *JOB_FLAGS]
    assert record["env"]["JOB_SETTING"] == "x y 'z'"
    assert not (fakes["home"] / "lumiere" / "pwned").exists()
    pid = int((fakes["home"] / "lumiere" / "logs" / "lumiere.pid").read_text())
    os.kill(pid, 0)  # still running (sleeping)
    stop = launch(launch_dir, "tpu/tpu.sh", "stop", *TPU, env=fakes["env"])
    assert stop.returncode == 0, stop.stderr
    deadline = time.monotonic() + 20
    while _alive(pid):
        assert time.monotonic() < deadline, "stop did not end the job"
        time.sleep(0.05)
    assert dry_run(launch_dir, "tpu/tpu.sh", "logs", *TPU, "--worker", "3")[0][-3:] == [
        "--worker=3", "--command", "tail -n +1 -F lumiere/logs/lumiere.log"]


def _alive(pid: int) -> bool:
    """Whether `pid` (a child of the fake worker shell) still runs; reaped zombies count as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_tpu_setup_from_git_clones_checks_out_and_installs(launch_dir, fakes, tmp_path):
    repo = tmp_path / "origin"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "marker.txt").write_text("v1")
    subprocess.run([*git, "add", "marker.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "v1"], check=True)
    shutil.rmtree(fakes["home"] / "lumiere")
    proc = launch(launch_dir, "tpu/tpu.sh", "setup", *TPU, "--repo", str(repo), "--python", fakes["python"],
                  env=fakes["env"])
    assert proc.returncode == 0, proc.stderr
    assert (fakes["home"] / "lumiere" / "marker.txt").read_text() == "v1"
    record = json.loads((fakes["out"] / "job.json").read_text())
    assert record["argv"] == ["-m", "pip", "install", "--quiet", "--upgrade", "jax[tpu]>=0.10,<0.11", "-e", "."]
    (repo / "marker.txt").write_text("v2")  # a second setup updates the existing checkout
    subprocess.run([*git, "commit", "-q", "-am", "v2"], check=True)
    proc = launch(launch_dir, "tpu/tpu.sh", "setup", *TPU, "--repo", str(repo), "--python", fakes["python"],
                  env=fakes["env"])
    assert proc.returncode == 0, proc.stderr
    assert (fakes["home"] / "lumiere" / "marker.txt").read_text() == "v2"


def test_tpu_setup_from_a_wheel(launch_dir, repo_root):
    lines = dry_run(launch_dir, "tpu/tpu.sh", "setup", *TPU, "--wheel", "dist/lumiere_jax-0.1.0-py3-none-any.whl")
    ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "lumiere-v5p", "--zone", "us-east5-a", "--worker=all"]
    assert lines == [
        [*ssh, "--command", "mkdir -p lumiere"],
        ["gcloud", "compute", "tpus", "tpu-vm", "scp", "dist/lumiere_jax-0.1.0-py3-none-any.whl",
         "lumiere-v5p:lumiere/", "--zone", "us-east5-a", "--worker=all"],
        ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", str(repo_root / "configs"),
         "lumiere-v5p:lumiere/", "--zone", "us-east5-a", "--worker=all"],
        [*ssh, "--command", "cd lumiere && python3 -m pip install --quiet --upgrade jax\\[tpu\\]\\>=0.10\\,\\<0.11 "
                            "./lumiere_jax-0.1.0-py3-none-any.whl"]]


def test_tpu_stop_and_delete_command_lines(launch_dir):
    (stop,) = dry_run(launch_dir, "tpu/tpu.sh", "stop", *TPU, "--job", "j1")
    assert stop[-1] == 'cd lumiere && kill -TERM "$(cat logs/j1.pid)"'
    assert dry_run(launch_dir, "tpu/tpu.sh", "delete", *TPU, "--queued") == [
        ["gcloud", "compute", "tpus", "queued-resources", "delete", "lumiere-v5p", "--zone", "us-east5-a", "--force",
         "--quiet"]]


def test_xpk_create_list_logs_delete(launch_dir, repo_root):
    cluster = ["--cluster", "v5p-cluster", "--workload", "paper-1", "--project", "my-proj", "--zone", "us-east5-b"]
    proc = launch(launch_dir, "tpu/xpk.sh", "create", *cluster, "--tpu-type", "v5p-256", "--num-slices", "2",
                  "--base-docker-image", "gcr.io/p/base:1", "--config", "configs/stunet_paper.py", "--workdir",
                  "/runs/a b", "--env", "JOB_SETTING=1", "--max-restarts", "3", "--dry-run", "--", OVERRIDE)
    assert proc.returncode == 0, proc.stderr
    assert "2 slices but no --config.mesh.dcn.* override" in proc.stderr
    (line,) = [shlex.split(x) for x in proc.stdout.splitlines()]
    assert line[:-1] == ["xpk", "workload", "create", "--cluster=v5p-cluster", "--workload=paper-1",
                         "--tpu-type=v5p-256", "--num-slices=2", "--base-docker-image=gcr.io/p/base:1",
                         f"--script-dir={repo_root}", "--max-restarts=3", "--project=my-proj", "--zone=us-east5-b"]
    assert line[-1].startswith("--command=")
    assert shlex.split(line[-1][len("--command="):]) == ["env", "JOB_SETTING=1", "python3", "-m", "lumiere_jax.main",
                                                         *JOB_FLAGS]
    assert dry_run(launch_dir, "tpu/xpk.sh", "list", "--cluster", "c") == [["xpk", "workload", "list", "--cluster=c"]]
    assert dry_run(launch_dir, "tpu/xpk.sh", "delete", *cluster) == [
        ["xpk", "workload", "delete", "--cluster=v5p-cluster", "--workload=paper-1", "--project=my-proj",
         "--zone=us-east5-b"]]
    assert dry_run(launch_dir, "tpu/xpk.sh", "logs", *cluster, "--worker", "all") == [
        ["gcloud", "container", "clusters", "get-credentials", "v5p-cluster", "--region", "us-east5", "--project",
         "my-proj"],
        ["kubectl", "logs", "--follow", "--prefix", "--all-containers", "--max-log-requests=1000", "--selector",
         "jobset.sigs.k8s.io/jobset-name=paper-1"]]


def test_gpu_single_host_install_and_run(launch_dir, repo_root):
    assert dry_run(launch_dir, "gpu/local.sh", "install", "--cuda", "13", "--python", ".venv/bin/python") == [
        [".venv/bin/python", "-m", "pip", "install", "--upgrade", "jax[cuda13]>=0.10,<0.11"],
        [".venv/bin/python", "-m", "pip", "install", "-e", str(repo_root)]]
    assert dry_run(launch_dir, "gpu/local.sh", "run", "--config", "configs/stunet_paper.py", "--workdir", "/runs/a b",
                   "--", OVERRIDE) == [["python3", "-m", "lumiere_jax.main", *JOB_FLAGS]]


def test_gpu_multihost_feeds_jax_distributed(launch_dir, fakes):
    args = ["--coordinator", "10.0.0.1:12355", "--num-processes", "4", "--process-id", "3", "--python", fakes["python"],
            "--config", "configs/stunet_paper.py", "--workdir", "/runs/a b", "--", OVERRIDE]
    proc = launch(launch_dir, "gpu/multihost.sh", *args, env=fakes["env"])
    assert proc.returncode == 0, proc.stderr
    record = json.loads((fakes["out"] / "3.json").read_text())
    assert record["argv"] == ["-m", "lumiere_jax.main", *JOB_FLAGS]
    assert record["env"] == {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:12355", "JAX_NUM_PROCESSES": "4",
                             "JAX_PROCESS_ID": "3", "JOB_SETTING": None}
    env = dict(fakes["env"], JAX_COORDINATOR_ADDRESS="h:1", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="0")
    proc = subprocess.run(["bash", str(launch_dir / "gpu/multihost.sh"), "--config", "c.py", "--workdir", "w",
                           "--dry-run"], capture_output=True, text=True, env=env, timeout=60)
    assert shlex.split(proc.stdout) == ["env", "JAX_COORDINATOR_ADDRESS=h:1", "JAX_NUM_PROCESSES=2", "JAX_PROCESS_ID=0",
                                        "python3", "-m", "lumiere_jax.main", "--config=c.py", "--workdir=w",
                                        "--mode=train"]


def test_gpu_slurm_coordinator_from_the_allocation(launch_dir, fakes):
    env = dict(fakes["env"], SLURM_JOB_NODELIST="gpu-[7-9]")
    args = ["--python", fakes["python"], "--config", "configs/stunet_paper.py", "--workdir", "/runs/a b",
            "--port", "23456", "--", OVERRIDE]
    proc = subprocess.run(["bash", str(launch_dir / "gpu/slurm.sh"), *args], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    for rank in range(3):
        record = json.loads((fakes["out"] / f"{rank}.json").read_text())
        assert record["argv"] == ["-m", "lumiere_jax.main", *JOB_FLAGS]
        assert record["env"] == {"JAX_COORDINATOR_ADDRESS": "gpu-7:23456", "JAX_NUM_PROCESSES": "3",
                                 "JAX_PROCESS_ID": str(rank), "JOB_SETTING": None}
    dry = subprocess.run(["bash", str(launch_dir / "gpu/slurm.sh"), "--dry-run", *args[2:]], capture_output=True,
                         text=True, env=env, timeout=60)
    assert shlex.split(dry.stdout)[:6] == ["srun", "--nodes=3", "--ntasks-per-node=1", "env",
                                           "JAX_COORDINATOR_ADDRESS=gpu-7:23456", "JAX_NUM_PROCESSES=3"]


@pytest.mark.parametrize("script, args, message", [
    ("tpu/tpu.sh", ["create", "--name", "n"], "--zone (or LUMIERE_ZONE) is required"),
    ("tpu/tpu.sh", ["create", *TPU, "--version", "v"], "--accelerator-type (or LUMIERE_ACCELERATOR_TYPE) is required"),
    ("tpu/tpu.sh", ["run", *TPU, "--workdir", "w"], "--config (or LUMIERE_CONFIG) is required"),
    ("tpu/tpu.sh", ["run", *TPU, "--config", "c"], "--workdir (or LUMIERE_WORKDIR) is required"),
    ("tpu/tpu.sh", ["setup", *TPU], "setup needs --repo URL (git) or --wheel FILE"),
    ("tpu/tpu.sh", ["setup", *TPU, "--wheel", "missing.whl"], "--wheel missing.whl: no such file"),
    ("tpu/tpu.sh", ["run", *TPU, "--config", "c", "--workdir", "w", "--env", "1BAD=x"], "must be KEY=VALUE"),
    ("tpu/tpu.sh", ["reboot", *TPU], "unknown command 'reboot'"),
    ("tpu/tpu.sh", [], "the first argument must be a command"),
    ("tpu/tpu.sh", ["--name", "n", "create"], "the first argument must be a command"),
    ("tpu/tpu.sh", ["create", *TPU, "--zonee", "x"], "unknown flag --zonee"),
    ("tpu/tpu.sh", ["create", *TPU, "--accelerator-type"], "--accelerator-type needs a value"),
    ("tpu/tpu.sh", ["run", *TPU, "stray"], "unexpected argument 'stray'"),
    ("tpu/xpk.sh", ["create", "--cluster", "c", "--workload", "w", "--tpu-type", "v5p-8", "--config", "c",
                    "--workdir", "w"], "create needs --docker-image or --base-docker-image"),
    ("tpu/xpk.sh", ["create", "--workload", "w"], "--cluster (or LUMIERE_CLUSTER) is required"),
    ("tpu/xpk.sh", ["create", "--cluster", "c", "--workload", "w", "--tpu-type", "v5p-8", "--num-slices", "0"],
     "--num-slices 0 must be a positive integer"),
    ("tpu/xpk.sh", ["logs", "--cluster", "c", "--workload", "w"], "--zone (or LUMIERE_ZONE) is required"),
    ("gpu/local.sh", ["install", "--cuda", "11"], "--cuda 11"),
    ("gpu/local.sh", ["run", "--workdir", "w"], "--config (or LUMIERE_CONFIG) is required"),
    ("gpu/multihost.sh", ["--num-processes", "2", "--process-id", "0"],
     "--coordinator (or JAX_COORDINATOR_ADDRESS) is required"),
    ("gpu/multihost.sh", ["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2", "--config", "c",
                          "--workdir", "w"], "--process-id 2 must be an integer in 0 .. 1"),
    ("gpu/multihost.sh", ["--coordinator", "h", "--num-processes", "2", "--process-id", "0"],
     "--coordinator h must be HOST:PORT"),
    ("gpu/slurm.sh", ["--config", "c", "--workdir", "w"], "SLURM_JOB_NODELIST is not set"),
])
def test_missing_or_bad_values_are_refused_clearly(launch_dir, script, args, message):
    proc = launch(launch_dir, script, *args)
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("script", ["tpu/tpu.sh", "tpu/xpk.sh", "gpu/local.sh", "gpu/multihost.sh", "gpu/slurm.sh"])
def test_help_is_the_header(launch_dir, script):
    proc = launch(launch_dir, script, "--help")
    assert proc.returncode == 0 and "Usage: launch/" in proc.stdout and "--dry-run" in proc.stdout
    assert "shellcheck" not in proc.stdout  # stops at the end of the header


def test_shellcheck_passes(launch_dir):
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install -y shellcheck)")
    scripts = sorted(str(p) for p in launch_dir.rglob("*.sh"))
    assert len(scripts) >= 6
    proc = subprocess.run([shellcheck, "-x", *scripts], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
