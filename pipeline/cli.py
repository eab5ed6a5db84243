"""The `actsearch` command line.

    actsearch run --preset=demo                       # the whole pipeline on the embedded digits
    actsearch run --preset=cifar10 --data=folder:.cache/cifar10/train --parallel_trials=2
    actsearch run --preset=demo --runner=kfp-local    # the same DAG through Kubeflow's local runner
    actsearch compile --target=kubeflow --output=pipeline.yaml --preset=paper --image=me/actsearch:1
    actsearch runs  [--pipeline_root=...]             # what ran, newest first
    actsearch show RUN_ID [--pipeline_root=...]       # components, cache hits, lineage of the winner

Every field of `pipeline.config.PipelineConfig` is also a flag (`--max_trials=40`,
`--seed_functions=relu,swish`), overriding the preset. Unknown flags or values, an unreadable data
source and a pipeline root that cannot be written are reported before any work starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import signal
import sqlite3
import sys
import time
import traceback
from typing import Any, Callable, Iterator

from absl import app, flags, logging

from components.base import remember_ctrl_c, stopped_by
from pipeline import config as config_lib
from pipeline.local_runner import PipelineError, last_alive, run_id_problem
from pipeline.metadata import MetadataStore
from components.terminal import import_tensorflow_quietly, quiet_known_warnings

COMMANDS = ("run", "compile", "runs", "show")

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", "demo", sorted(config_lib.PRESETS),
                  "Complete configuration to start from (see pipeline/config.py); flags override its fields.")
flags.DEFINE_enum("runner", "local", list(config_lib.RUNNERS), "local: in-process with cache; kfp-local: kfp.local.")
flags.DEFINE_enum("target", "kubeflow", ["kubeflow"], "compile: the orchestrator to compile for.")
flags.DEFINE_string("output", "pipeline.yaml", "compile: where to write the compiled pipeline.")
flags.DEFINE_string("run_id", None, "run: id of the new run (default: a timestamp).")



_DEFAULT_CONFIG = config_lib.PipelineConfig()  # built once for every flag's help


def preset_defaults(name: str) -> str:
    """What a field is when no flag sets it, per preset, for its --help line (the flags
    themselves default to None: the preset decides)."""
    base = getattr(_DEFAULT_CONFIG, name)
    if isinstance(base, dict):
        return " Default: per preset, see pipeline/config.py."

    def text(value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return ",".join(map(str, value)) or "none"
        return "none" if value is None or value == "" else str(value)

    values = {preset: text(config_lib.PRESETS[preset].get(name, base)) for preset in sorted(config_lib.PRESETS)}
    if len(set(values.values())) == 1:
        return f" Default: {text(base)}."
    return " Default: " + "; ".join(f"{value} ({preset})" for preset, value in values.items()) + "."


_FIELDS = {f.name: f for f in dataclasses.fields(config_lib.PipelineConfig)}
for _name, _field in _FIELDS.items():
    if _field.type == "bool":  # --augment, --noaugment and --augment=true all work
        flags.DEFINE_bool(_name, None, f"{config_lib.FIELD_HELP[_name]}.{preset_defaults(_name)}")
    else:
        flags.DEFINE_string(_name, None, f"{config_lib.FIELD_HELP[_name]} ({_field.type}).{preset_defaults(_name)}")


class UsageError(ValueError):
    """A command-line mistake, reported with what is allowed."""


def build_config(functions: bool = True) -> config_lib.PipelineConfig:
    """The configuration the flags give. Every value is checked before TensorFlow is imported
    (quietly: see `import_tensorflow_quietly`) to check the function names, so a typo in a
    value costs no start-up; `functions=False` (runs, show; run, which checks --run_id first and
    then calls `check_functions`) does not import it."""
    overrides = {name: getattr(FLAGS, name) for name in _FIELDS if getattr(FLAGS, name) is not None}
    config = config_lib.preset(FLAGS.preset, overrides, functions=False)
    if functions:
        check_functions(config)
    return config


def check_functions(config: config_lib.PipelineConfig) -> None:
    """The last check of the flags: function names need the activations library, and with it
    TensorFlow (seconds to import, quietly), so every cheaper check comes first."""
    import_tensorflow_quietly()
    config.check_functions()


def check_run_id(root: str) -> None:
    """A --run_id that cannot name a run, or names one the root already has, is a flag mistake
    like any other: reported before TensorFlow is imported and the run announced, with exit 2."""
    run_id = FLAGS.run_id
    if run_id is None:
        return
    problem = run_id_problem(run_id)
    if problem:
        raise UsageError(f"--run_id: {problem}")
    if _run_exists(root, run_id):
        raise UsageError(f"--run_id: run {run_id!r} already exists under {root!r}; choose another id, "
                         "or leave --run_id out for a new timestamped one")


def _run_exists(root: str, run_id: str) -> bool:
    """Whether the root records a run with this id (either runner's). A store that cannot be
    read here is left to the runner, which reports it with its own words."""
    if os.path.exists(os.path.join(root, "kfp-local", run_id)):
        return True
    path = os.path.join(root, "metadata.sqlite")
    if not os.path.isfile(path):
        return False
    try:
        with MetadataStore(path, read_only=True) as store:
            return store.get_run(run_id) is not None
    except sqlite3.Error:
        return False


COMPILE_SUFFIXES = (".yaml", ".yml", ".json")
"""What KFP's compiler writes: YAML by the suffix, JSON (deprecated by KFP) for .json."""


def check_output_path(output: str) -> None:
    """`compile --output` is checked before any work: its suffix picks KFP's format, and a
    parent that is a file would otherwise surface as makedirs' bare "File exists"."""
    if not output.endswith(COMPILE_SUFFIXES):
        raise UsageError(f"--output={output!r} must end with .yaml or .yml (KFP's pipeline format; "
                         ".json also works but KFP deprecates it)")
    path = os.path.abspath(output)
    if os.path.isdir(path):
        raise UsageError(f"--output={output!r} is a directory; name the file to write, "
                         f"e.g. {os.path.join(output, 'pipeline.yaml')}")
    parent = os.path.dirname(path)
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        kind = "a file, not a directory" if os.path.isfile(parent) else "not a directory"
        raise UsageError(f"cannot write {output!r}: {parent!r} is {kind}")


def pipeline_root(config: config_lib.PipelineConfig) -> str:
    """The pipeline root as an absolute path (the config refuses an empty one)."""
    return os.path.abspath(config.pipeline_root)


def check_data_source(config: config_lib.PipelineConfig) -> None:
    """Cheap checks that the data can be read, so a bad path fails in a second, not an hour in."""
    from trainer import data as data_lib
    from trainer import sources

    spec = data_lib.parse_source(config.data)
    if spec.scheme == "folder":
        path = os.path.abspath(os.path.expanduser(spec.target))
        if os.path.exists(path) and not os.path.isdir(path):
            raise UsageError(f"data folder {path!r} is a file, not a folder of images (from --data={config.data})")
        if not os.path.isdir(path):
            hint = ""
            if FLAGS.preset == "cifar10" and config.data == config_lib.PRESETS["cifar10"]["data"]:
                hint = ("; the cifar10 preset reads the CIFAR-10 images as a folder: "
                        "mkdir -p .cache/cifar10 && tar xzf cifar10-jpeg-train.tar.gz -C .cache/cifar10 "
                        "(see the README), or pass --data=tfds:cifar10")
            raise UsageError(f"data folder {path!r} does not exist (from --data={config.data}){hint}")
        if not os.access(path, os.R_OK | os.X_OK):
            raise UsageError(f"data folder {path!r} is not readable")
    elif spec.scheme == "tfds":
        builder = sources._tfds_builder(spec.target, config.data_dir)  # unknown names raise DataError
        prepared = os.path.exists(os.path.join(builder.data_dir, "dataset_info.json"))
        if not prepared and not sources.internet_reachable():
            raise UsageError(
                f"TFDS data set {spec.target!r} is not prepared in {builder.data_dir!r} and the internet is "
                "unreachable; prepare it elsewhere and pass --data_dir, or use folder:<path>"
            )


def note_compile_settings(pipeline, config: config_lib.PipelineConfig) -> None:
    """`--resources` is checked as `compile` checks it (a typo in a step name should not wait for
    the cluster), and settings this run does not use are named: the local runner uses no image
    or resource requests, and no runner of `actsearch run` a resume root (the pipeline root
    holds the resume state)."""
    from pipeline.kubeflow import ResourceSpecError, validate_resources

    try:
        validate_resources(pipeline, config.resources)
    except ResourceSpecError as error:
        raise UsageError(f"--resources: {error}") from None
    unused = ["resume_root"] + (["image", "resources"] if FLAGS.runner == "local" else [])
    given = [f"--{name}" for name in unused if FLAGS[name].present]
    if given:
        print(f"actsearch: note: {', '.join(given)} {'is' if len(given) == 1 else 'are'} for `actsearch compile`; "
              f"this run (runner {FLAGS.runner}) does not use {'it' if len(given) == 1 else 'them'}.", flush=True)


def check_root_free(root: str) -> None:
    """A usage error (2) before the banner when another run holds the root; the runner's own
    lock still decides a race between two starts."""
    from pipeline.local_runner import root_in_use

    if root_in_use(os.path.abspath(root)):
        raise UsageError(f"another run is using pipeline_root {os.path.abspath(root)!r}; wait for it to finish, "
                         "or give this run another --pipeline_root")


def check_writable(root: str) -> None:
    root = os.path.abspath(root)
    if os.path.exists(root) and not os.path.isdir(root):
        raise UsageError(f"pipeline_root {root!r} is a file, not a directory")
    try:
        os.makedirs(root, exist_ok=True)
        probe = os.path.join(root, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as error:
        raise UsageError(f"pipeline_root {root!r} is not writable: {error.strerror or error}") from None


def _print_progress(event) -> None:
    print(f"{time.strftime('%H:%M:%S')} {event}", flush=True)


def command_run() -> int:
    config = build_config(functions=False)
    check_run_id(pipeline_root(config))
    check_functions(config)
    from activations.layer import prefer_wide_vectors
    from pipeline.dag import create_pipeline

    # The command owns its process (and the Beam workers and KFP steps that inherit the
    # environment): before anything is compiled, let XLA use 512-bit vectors for the fused
    # activation kernels on AVX-512 CPUs (bench/activation_overhead.py; no effect elsewhere).
    prefer_wide_vectors()

    global _RUN_ROOT
    _RUN_ROOT = pipeline_root(config)
    check_data_source(config)  # first: a bad data path should not leave an empty root behind
    pipeline = create_pipeline(config)
    check_writable(config.pipeline_root)
    check_root_free(config.pipeline_root)
    note_compile_settings(pipeline, config)
    min_seeds = pipeline.component("evaluator").exec_properties["min_seeds"]
    if config.seeds < min_seeds:
        print(f"actsearch: note: --seeds={config.seeds} is below the {min_seeds} runs per function a statistical "
              "test needs: the evaluation will report no p-values and bless nothing.", flush=True)
    starting = len(config.seed_functions) + config.num_candidates
    if config.strategy != "exhaustive" and config.max_trials <= starting:
        searcher = "the controller" if config.strategy == "rl" else f"the {config.strategy} strategy"
        print(f"actsearch: note: --max_trials={config.max_trials} is no more than the {starting} functions the search "
              f"starts from ({len(config.seed_functions)} seed functions + {config.num_candidates} sampled "
              f"candidates): the trials train those, and {searcher} proposes nothing of its own. Raise "
              "--max_trials, or lower --num_candidates or --seed_functions.", flush=True)
    if config.strategy == "exhaustive":
        from activations.oracle import exhaustive_coverage_note

        coverage = exhaustive_coverage_note(config.core_units or 1, config.unary_forms or None,
                                            config.binary_forms or None, config.max_trials)
        print("actsearch: note: the exhaustive strategy enumerates core units: the seed functions and sampled "
              "candidates are not trained" + (f"; {coverage}" if coverage else ""), flush=True)
    print(f"actsearch: running {len(pipeline.components)} components of {config.name!r} "
          f"(preset {FLAGS.preset}, runner {FLAGS.runner}) under {os.path.abspath(config.pipeline_root)}", flush=True)
    if FLAGS.runner == "kfp-local":
        from pipeline.kubeflow import run_kfp_local

        result = run_kfp_local(pipeline, pipeline_root=config.pipeline_root, run_id=FLAGS.run_id,
                               image=config.image, resources=config.resources,
                               on_complete=lambda done: publish_completed(done.run_json))
    else:
        from pipeline.local_runner import LocalRunner

        runner = LocalRunner(on_progress=_print_progress, on_complete=lambda done: publish_completed(done.run_json))
        result = runner.run(pipeline, run_id=FLAGS.run_id)
    _print_summary(result.run_json)
    return 0


def publish_completed(run_json: str) -> None:
    """`publish`, with a failure (a full disk) reported as one line that says the run itself is
    done and recorded, rather than a traceback."""
    try:
        publish(run_json)
    except OSError as error:
        root = os.path.dirname(os.path.abspath(run_json))
        raise PipelineError(f"the run completed and is recorded, but its deliverables could not be copied to "
                            f"{root}/export and {root}/report: {error}; they are in the steps' folders named "
                            f"in {run_json}") from error


def publish(run_json: str) -> None:
    """Puts the deliverables at stable places under the pipeline root and points run.json at
    them: `export/` (activation.json, model.keras) and `report/` (report.html, report.md) are
    copies; `tensorboard` is a relative symlink to the run's log directory (logs can be large)."""
    import shutil

    with open(run_json) as f:
        run = json.load(f)
    root = os.path.dirname(os.path.abspath(run_json))
    results = run.setdefault("results", {})

    def copy(source: str, name: str) -> str:
        target = os.path.join(root, name)
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        return target

    exported = results.get("exported_activation")
    if exported and os.path.isdir(exported):
        target = copy(exported, "export")
        results["exported_activation"] = os.path.join(target, "activation.json")
        if os.path.exists(os.path.join(target, "model.keras")):
            results["exported_model"] = os.path.join(target, "model.keras")
    report = results.get("report")
    if report and os.path.exists(report):
        target = copy(os.path.dirname(report), "report")
        results["report"] = os.path.join(target, os.path.basename(report))
        results["report_markdown"] = os.path.join(target, "report.md")
    logs = results.get("tensorboard")
    if logs and os.path.isdir(logs):
        link = os.path.join(root, "tensorboard")
        if not os.path.exists(link) or os.path.islink(link):  # never replace a user's folder
            with contextlib.suppress(FileNotFoundError):
                os.remove(link + ".tmp")
            os.symlink(os.path.relpath(logs, root), link + ".tmp")
            os.replace(link + ".tmp", link)
            results["tensorboard"] = link
    evaluation = results.get("evaluation")
    if evaluation and os.path.isdir(evaluation):
        results["evaluation"] = os.path.join(evaluation, "evaluation.json")
    _write_json(run_json, run)
    _write_json(os.path.join(root, PUBLISHED), {
        "run_id": run["run_id"], "published": time.strftime("%Y-%m-%d %H:%M:%S"),
        "deliverables": sorted(name for name in ("export", "report", "tensorboard")
                               if os.path.lexists(os.path.join(root, name)))})


_RUN_ROOT: str | None = None  # the pipeline root of this process's `run`, for its error messages

PUBLISHED = "published.json"
"""Names the run whose deliverables `export/`, `report/` and `tensorboard` are: a later run that
fails or is stopped leaves them in place, and the CLI says whose they are."""


def _write_json(path: str, value) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=2)
    os.replace(path + ".tmp", path)


def _previous_deliverables(root: str | None, run_id: str | None) -> str:
    """A note for a run that did not complete: whose deliverables the root still holds;
    nothing when no root is known yet (stopped early), never the current directory's."""
    if root is None:
        return ""
    try:
        with open(os.path.join(root, PUBLISHED)) as f:
            published = json.load(f)
    except (OSError, ValueError):
        return ""
    if published.get("run_id") == run_id or not published.get("deliverables"):
        return ""
    names = ", ".join(f"{name}/" if name != "tensorboard" else name for name in published["deliverables"])
    return (f"\nNote: {names} under {root} still hold the results of run {published['run_id']} "
            f"(completed {published['published']}), not of this run.")


def _print_summary(run_json: str) -> None:
    with open(run_json) as f:
        run = json.load(f)
    results = run.get("results", {})
    print(f"\nrun {run['run_id']}: {run['status']}")
    for cid, info in run.get("components", {}).items():
        seconds = info.get("duration_s")
        print(f"  {cid:<14} {info.get('state', ''):<9} {'' if seconds is None else f'{seconds:7.1f} s'}")
    evaluation = results.get("evaluation")
    if evaluation and os.path.isfile(evaluation):
        with open(evaluation) as f:
            print(f"\n{json.load(f).get('summary', '')}")
    print(f"\nrun record:   {run_json}")
    for key, label in (("report", "report:      "), ("exported_activation", "activation:  "),
                       ("exported_model", "model:       ")):
        if key in results:
            print(f"{label} {results[key]}")
    if "tensorboard" in results:
        print(f"TensorBoard:  {results['tensorboard']}")
        beside = os.path.join(os.path.dirname(sys.executable), "tensorboard")  # the venv's, if any
        command = beside if os.path.exists(beside) else "tensorboard"
        print(f"  open it with: {shlex.quote(command)} --logdir {shlex.quote(results['tensorboard'])}")


def command_compile() -> int:
    check_output_path(FLAGS.output)
    config = build_config()
    from pipeline.dag import create_pipeline
    from pipeline.kubeflow import compile_pipeline

    pipeline = create_pipeline(config)
    try:
        path = compile_pipeline(pipeline, FLAGS.output, image=config.image, resources=config.resources,
                                resume_root=config.resume_root or None)
    except OSError as error:
        raise UsageError(f"cannot write {FLAGS.output!r}: {error.strerror or error}") from None
    print(f"wrote the Kubeflow pipeline {config.name!r} ({len(pipeline.components)} steps, image {config.image}) to {path}")
    return 0


def _metadata_path(root: str) -> str:
    path = os.path.join(os.path.abspath(root), "metadata.sqlite")
    if not os.path.exists(path):
        raise UsageError(f"no runs under {os.path.abspath(root)!r} (no metadata.sqlite); pass --pipeline_root")
    return path


@contextlib.contextmanager
def _read_metadata(root: str) -> Iterator[MetadataStore]:
    """The root's metadata store, opened read-only: `runs` and `show` must work on archived or
    read-only roots; a store that cannot be read is one line naming the file, not a traceback."""
    path = _metadata_path(root)
    try:
        with MetadataStore(path, read_only=True) as store:
            yield store
    except sqlite3.Error as error:
        raise UsageError(f"cannot read {path}: {error}") from None


def command_runs() -> int:
    root = pipeline_root(build_config(functions=False))
    with _read_metadata(root) as store:
        runs = store.list_runs()
        live = _live_status(root)
        alive = last_alive(root)  # a killed run is recorded as ended only by the next run
        print(f"{'run id':<28} {'status':<12} {'runner':<10} {'started':<20} {'took':>8}  "
              "components (complete/cached/failed)")
        for run in runs:
            end = run.end_time or (alive.get(run.run_id) if live(run.status) != run.status else None)
            took = f"{end - run.start_time:7.0f}s" if end else "       -"
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.start_time))
            print(f"{run.run_id:<28} {live(run.status):<12} {run.runner:<10} {started:<20} {took}  "
                  f"{_component_counts([live(e.state) for e in store.executions(run.run_id)])}")
    return 0


def _component_counts(states: list[str]) -> str:
    """complete/cached/failed, and the steps Ctrl-C, SIGTERM or a dead process stopped apart
    (they are not broken and run again next time): "4/2/0, 1 interrupted"."""
    from pipeline import metadata

    counts = "/".join(str(states.count(state)) for state in (metadata.COMPLETE, metadata.CACHED, metadata.FAILED))
    stopped = states.count(metadata.INTERRUPTED)
    return f"{counts}, {stopped} interrupted" if stopped else counts


def _live_status(root: str) -> Callable[[str], str]:
    """Maps a recorded status to what is true now: RUNNING is INTERRUPTED when no process holds
    the root's run lock (the metadata says so only from the next run on this root)."""
    from pipeline import metadata
    from pipeline.local_runner import root_in_use

    running = root_in_use(root)
    return lambda status: metadata.INTERRUPTED if status == metadata.RUNNING and not running else status


def command_show(run_id: str) -> int:
    root = pipeline_root(build_config(functions=False))
    with _read_metadata(root) as store:
        run = store.get_run(run_id)
        if run is None:
            known = [r.run_id for r in store.list_runs()][:10]
            raise UsageError(f"no run {run_id!r} under {root!r}; recent runs: {known}")
        live = _live_status(root)
        print(f"run {run.run_id} ({run.pipeline_name}, runner {run.runner}): {live(run.status)}"
              + (f" - {run.error}" if run.error else ""))
        search_uri = None
        for execution in store.executions(run_id):
            took = f"{execution.end_time - execution.start_time:.1f} s" if execution.end_time else "-"
            origin = f" (reused execution {execution.cached_from})" if execution.cached_from else ""
            print(f"  {execution.component_id:<14} {live(execution.state):<11} {took:>9}{origin}")
            for name, artifacts in store.outputs_of(execution.id).items():
                for artifact in artifacts:
                    print(f"      {name}: {artifact.uri}")
                    if artifact.type_name == "SearchResults":
                        search_uri = artifact.uri
        for key, path in run.results.items():
            print(f"  result {key}: {path}")
        exported = run.results.get("exported_activation")
        if exported and os.path.isdir(exported):
            exported = os.path.join(exported, "activation.json")
        if exported and os.path.exists(exported) and search_uri:
            _print_function_lineage(exported, search_uri)
    return 0


def _print_function_lineage(activation_json: str, search_uri: str) -> None:
    """How evolution arrived at the exported function: its trial and its ancestors. `activations`
    imports TensorFlow: quietly, as `run` does, or its native start-up notes fill the terminal."""
    import_tensorflow_quietly()
    import activations
    from components.tuner import read_trials

    with open(activation_json) as f:
        record = json.load(f)
    expression = record["expression"]
    # The search's own spelling: simplifying may drop dead parameters, which can move a fingerprint.
    fingerprint = activations.fingerprint(record.get("searched_as") or expression)
    trials = {t["trial_id"]: t for t in read_trials(search_uri)}
    found = [t for t in trials.values() if t["fingerprint"] == fingerprint]
    print(f"\nlineage of the exported function {activations.parse(expression).infix()}:")
    if not found:
        print("  (a baseline or given function: it was not found among the search trials)")
        return

    def show(trial, depth):
        fitness = "failed" if trial.get("fitness") is None else f"{trial['fitness']:.4f}"
        print(f"  {'  ' * depth}trial {trial['trial_id']} gen {trial.get('generation')} "
              f"[{trial.get('operator')}] fitness {fitness}: {trial['expression']}")
        if depth < 12:
            for parent in trial.get("parents") or []:
                if parent in trials:
                    show(trials[parent], depth + 1)

    show(found[0], 0)


def main(argv: list[str]) -> int:
    args = argv[1:]
    if not args or args[0] not in COMMANDS:
        # One line, not absl's usage text with the error below a hundred lines of flags.
        print(f"actsearch: error: expected a command, one of {list(COMMANDS)}; got {args[0] if args else 'nothing'} "
              "(usage: actsearch COMMAND [--flag=value ...]; `actsearch --help` explains every flag)", file=sys.stderr)
        return 2
    command, rest = args[0], args[1:]
    if not FLAGS["verbosity"].present:
        # absl logs at INFO under app.run, which lets every library's start-up notes through
        # (Beam's among them); progress has its own lines. --verbosity=0 brings them back.
        logging.set_verbosity(logging.WARNING)
        quiet_known_warnings()
    try:
        if command == "show":
            if len(rest) != 1:
                raise UsageError("usage: actsearch show RUN_ID [--pipeline_root=...]")
            return command_show(rest[0])
        if rest:
            raise UsageError(f"unexpected arguments {rest}; settings are flags, e.g. --max_trials=10")
        return {"run": command_run, "compile": command_compile, "runs": command_runs}[command]()
    except (UsageError, config_lib.ConfigError, ValueError) as error:
        print(f"actsearch {command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        return _report_stop(command, stop)
    except PipelineError as error:  # a step failed (what ran is recorded), or the run could not start
        if FLAGS["verbosity"].present:
            traceback.print_exc()
        hint = ""
        if error.component_id:  # a step failed: what ran is recorded, the failed step keeps its resume state
            hint = (f"\nFix the cause and {_run_again()}: finished steps are reused and the failed one "
                    "continues where it stopped (--verbosity=0 shows the traceback).")
            hint += _previous_deliverables(_RUN_ROOT, error.run_id)
        print(f"actsearch {command}: {error}{hint}", file=sys.stderr)
        return 1


def _report_stop(command: str, stop: KeyboardInterrupt) -> int:
    """Ctrl-C and SIGTERM (`docker stop`, an eviction, a job's time limit, `timeout`) both stop
    a run cleanly (see `remember_ctrl_c`); the message says which, and how to continue. The exit
    status is 128 + the signal's number, what a shell reports for a process the signal ended:
    130 for Ctrl-C (SIGINT), 143 for SIGTERM."""
    terminated = stopped_by(stop) == "SIGTERM"
    what = "terminated (SIGTERM)" if terminated else "interrupted"
    if command == "run":
        again = f"Finished steps and trials are kept: {_run_again()} to continue where it stopped."
        print(f"\nactsearch {command}: {what}. {again}{_previous_deliverables(_RUN_ROOT, FLAGS.run_id)}",
              file=sys.stderr)
    else:
        print(f"\nactsearch {command}: {what}.", file=sys.stderr)
    return 128 + (signal.SIGTERM if terminated else signal.SIGINT)


def _run_again() -> str:
    """How to continue a stopped or failed run. Both runners record each attempt as a new run
    whose finished steps are reused from the metadata (CACHED), and a run id names one run, so
    a given --run_id must go or change."""
    if FLAGS.run_id is None:
        return "run the same command again"
    return f"run the same command again without --run_id={FLAGS.run_id} (or with a new --run_id)"


def run_main() -> None:
    """Console-script entry point."""
    # TensorFlow's C++ start-up chatter drowns the progress lines; TF_CPP_MIN_LOG_LEVEL=0 shows it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    remember_ctrl_c()
    _show_usage_in_help()
    try:
        app.run(main, flags_parser=_parse_flags)
    except SystemExit as stop:
        if stop.code == 1 and only_asks_for_help(sys.argv[1:]):
            sys.exit(0)  # absl exits 1 after printing the help it was asked for
        raise
    except BrokenPipeError:
        # `actsearch runs | head`: the reader left. No traceback; stdout goes to /dev/null so
        # the interpreter's final flush cannot raise again. 141 = 128 + SIGPIPE, what a shell
        # reports for a program the closed pipe ended.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + signal.SIGPIPE)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag reported as every other usage error is: one line,
    exit status 2 (absl prints "FATAL Flags parsing error" and exits 1, the status of a failed
    run)."""
    try:
        return FLAGS(argv)
    except flags.Error as error:
        command = next((a for a in argv[1:] if a in COMMANDS), None)
        prefix = f"actsearch {command}" if command else "actsearch"
        print(f"{prefix}: error: {error} (`actsearch --help` lists every flag)", file=sys.stderr)
        sys.exit(2)


HELP_FLAGS = ("--help", "-?", "--helpshort", "--helpfull")


def only_asks_for_help(arguments: list[str]) -> bool:
    """True for `actsearch [command] --help`: nothing on the line but help flags and command
    names, so the help printed was the whole answer (not a usage error)."""
    return any(a in HELP_FLAGS for a in arguments) and all(a in HELP_FLAGS or a in COMMANDS for a in arguments)


def _show_usage_in_help() -> None:
    """Make absl's `--help` print this module's usage and flags under the console script.

    absl prints the docstring of `__main__` and the flags that module declares; for the
    `actsearch` script `__main__` is a generated wrapper that has neither.
    """
    main_module = sys.modules["__main__"]
    if main_module.__doc__ is None:
        main_module.__doc__ = __doc__
    for flag in FLAGS.get_key_flags_for_module(__name__):
        FLAGS.register_key_flag_for_module(sys.argv[0], flag)


if __name__ == "__main__":
    run_main()
