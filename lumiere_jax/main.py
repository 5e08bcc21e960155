"""The one entry point: `python -m lumiere_jax.main --config=configs/NAME.py[:ARGS] --workdir=DIR --mode=MODE`.

Config values are overridden with `--config.a.b=value`. Every start-up problem (unknown mode,
missing config file, bad override, invalid config value) ends the process with one line that
names it and a non-zero exit status.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

MODES = ("model_report", "train", "export", "sample", "compile_report", "eval", "demo", "verify")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "ml_collections config file, e.g. configs/stunet_tiny.py[:ARG].")
flags.DEFINE_string("workdir", None, "Directory for this job's outputs (checkpoints, logs, reports).")
flags.DEFINE_string("mode", "model_report", f"What to run: one of {', '.join(MODES)}.")


def _fail(message: str) -> None:
    """Exits with status 2 and `message` on a single line."""
    print("lumiere_jax: " + " ".join(str(message).split()), file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    try:
        return FLAGS(argv)
    except flags.Error as e:
        _fail(f"bad flag: {e}")
    except (AttributeError, KeyError) as e:  # an override naming a key the config does not have
        _fail(f"unknown config key in a --config.* override: {e}")
    except Exception as e:  # config files are Python: any error loading one is a bad --config
        _fail(f"could not load --config: {type(e).__name__}: {e}")


def load_config():
    """FLAGS.config, failing cleanly: config_flags defers a missing/broken file's error to first use."""
    if FLAGS["config"].value is None:
        _fail("--config is required, e.g. --config=configs/stunet_tiny.py")
    try:
        config = FLAGS.config
        config.keys()
    except OSError as e:
        _fail(f"could not load --config: {str(e).strip()}")
    return config


def run_model_report(config, workdir: pathlib.Path) -> None:
    from lumiere_jax.models.report import model_report

    _write_report(model_report(config), workdir / "model_report.json")


def _write_report(report: dict, path: pathlib.Path) -> None:
    """Writes `report` to `path` as JSON and prints it on stdout (the path on stderr)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"wrote {path}", file=sys.stderr)


def run_train(config, workdir: pathlib.Path) -> None:
    from lumiere_jax.parallel.distributed import maybe_initialize
    from lumiere_jax.train.trainer import train

    maybe_initialize()
    summary = train(config, workdir)
    print(f"trained to step {summary['step']}; checkpoints in {workdir / 'checkpoints'}", file=sys.stderr)


def run_export(config, workdir: pathlib.Path) -> None:
    from lumiere_jax.parallel.distributed import maybe_initialize
    from lumiere_jax.train.trainer import export

    maybe_initialize()
    print(f"wrote {export(config, workdir)}", file=sys.stderr)


def run_sample(config, workdir: pathlib.Path) -> None:
    from lumiere_jax.parallel.distributed import maybe_initialize
    from lumiere_jax.sample.job import sample

    maybe_initialize()
    report = sample(config, workdir)
    print(f"wrote {len(report['samples'])} videos and {workdir / 'samples.json'}", file=sys.stderr)


def run_compile_report(config, workdir: pathlib.Path) -> None:
    import jax

    if not os.environ.get("JAX_PLATFORMS"):
        # The TPU program is compiled from a topology description; keep libtpu from probing for a local TPU.
        jax.config.update("jax_platforms", "cpu")
    # A compile-only TPU executable can be written to the persistent cache but never read back.
    jax.config.update("jax_enable_compilation_cache", False)
    from lumiere_jax.train.compile_report import compile_report

    _write_report(compile_report(config), workdir / "compile_report.json")


def run_eval(config, workdir: pathlib.Path) -> None:
    """The clips and their prompts come from the sampling run in workdir (or, with eval.protocol, from
    a sampling run the protocol makes there); config.eval names the metrics and what they need."""
    from lumiere_jax.evaluation.job import REPORT_NAME, evaluate

    try:
        _, table = evaluate(config, workdir)
    except ValueError as e:
        _fail(f"cannot evaluate {workdir}: {e}")
    print(table)
    print(f"wrote {workdir / REPORT_NAME}", file=sys.stderr)


def run_demo(config, workdir: pathlib.Path) -> None:
    from lumiere_jax.demo import describe, run_demo as demo

    print(describe(demo(config, workdir), workdir))


def run_verify(config, workdir: pathlib.Path) -> None:
    """Watermark and Content Credentials of config.verify.input: a table on stdout, the JSON report in workdir."""
    from lumiere_jax.provenance.verify import REPORT_NAME, verify

    try:
        report, text = verify(config)
    except ValueError as e:
        _fail(f"cannot verify {config.verify.input or 'verify.input'}: {e}")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / REPORT_NAME).write_text(json.dumps(report, indent=2))
    print(text)
    print(f"wrote {workdir / REPORT_NAME}", file=sys.stderr)


RUNNERS = {"model_report": run_model_report, "train": run_train, "export": run_export, "sample": run_sample,
           "compile_report": run_compile_report, "eval": run_eval, "demo": run_demo, "verify": run_verify}


def main(argv: list[str]) -> None:
    del argv
    if not FLAGS["verbosity"].present:
        # absl.app would print INFO (Orbax writes ~60 lines per checkpoint): the terminal output of a job
        # is its progress bar and summary; --verbosity=0 brings the library logs back.
        logging.set_verbosity(logging.WARNING)
    if FLAGS.mode not in RUNNERS:
        _fail(f"unknown --mode={FLAGS.mode!r}; choose one of {', '.join(MODES)}")
    config = load_config()
    if not FLAGS.workdir:
        _fail("--workdir is required")
    from lumiere_jax.parallel.platforms import use_cpu_without_accelerators

    use_cpu_without_accelerators()
    try:
        RUNNERS[FLAGS.mode](config, pathlib.Path(FLAGS.workdir))
    except ValueError as e:
        _fail(f"invalid config: {e}")
    except FileNotFoundError as e:
        _fail(f"missing file: {e}")
    except FileExistsError as e:
        _fail(str(e))


def run() -> None:
    """Console-script entry (`lumiere ...`)."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
