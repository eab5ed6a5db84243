"""Runs one component's executor inside a Kubeflow Pipelines step.

The Kubeflow compiler (`pipeline.kubeflow`) generates, for every component of a pipeline, a
lightweight KFP component whose body only calls `run_step`: KFP hands the step its input and
output artifacts (objects with `.path`, `.uri` and `.metadata`) and the execution properties as
a JSON string; `run_step` turns them into our `Artifact`s, runs the executor's `Do` and writes
back what the next steps and the run record need into each output artifact's KFP metadata:

* ``actsearch_type``: our artifact type name;
* ``actsearch_properties``: the artifact's properties as a JSON *string* (a protobuf Struct
  would turn every int into a float; a string round-trips exactly);
* ``actsearch_results``: the run results (``publish_as`` outputs and paths the executor
  registered) that live in that output, as a JSON string of ``{name: uri}``;
* ``actsearch_fingerprint``: the output's fingerprint, derived from the step's cache key as the
  local runner derives it, so the next step can compute its own key;
* for ``Metrics`` outputs, the numeric properties again as plain entries, which the KFP UI
  shows as metrics.

Resume: given a resume root (a directory every attempt of the step sees: the pipeline root
under kfp.local, a shared volume or a ``/gcs/...`` path on a cluster), a step keeps its resume
state in ``<resume_root>/<component_id>/.resume/<cache_key[:16]>/``, the local runner's layout
and key (component, executor code version, parameters, input fingerprints): a retried or re-run
step with the same settings continues where it stopped, changed settings start afresh. The
directory is removed when the step succeeds. A step that starts afresh while an earlier
attempt's folder (another key) holds unfinished work says so (``[<id>] note: an unfinished
earlier attempt ...``, as the local runner does) and, like the local runner, leaves that folder:
it is the only copy of that work, and going back to the earlier settings continues it; delete
it by hand to free its space. Without a resume root (or when an input carries no
fingerprint, so the key cannot be known) the resume directory is temporary, as before.

Cache: with a resume root, a step compiled with caching on records its finished outputs under
the same key (`pipeline.step_cache`); a later run of the step with the same key copies them into
its own outputs instead of running the executor, and prints ``[<component_id>] cached: ...``.

This module imports neither KFP nor the compiler, so a step starts quickly. It can also be run
by hand (or from a container component) with our own artifact JSON::

    python -m pipeline.kfp_entry --executor=components.trainer.TrainerExecutor \\
        --component_id=trainer --inputs='{"examples": [{"type_name": "Examples", "uri": "..."}]}' \\
        --outputs='{"models": {"type_name": "TrainedModels", "uri": "..."}}' \\
        --exec_properties='{"epochs": 3}'
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import sys
import tempfile
from typing import Any, Mapping, Sequence

from components.base import Artifact, BaseExecutor, ComponentSpec, ExecutorContext, ProgressEvent
from pipeline import step_cache
from pipeline.local_runner import cache_key, output_fingerprint, resume_dir_for, unusable_attempt_note
from components.terminal import quiet_known_warnings

TYPE_KEY = "actsearch_type"
PROPERTIES_KEY = "actsearch_properties"
RESULTS_KEY = "actsearch_results"
FINGERPRINT_KEY = "actsearch_fingerprint"
CACHED_MARK = "cached:"
"""What a step prints after its name when it reused an earlier run's outputs (the kfp.local
runner records such a step as cached)."""

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


class StepError(RuntimeError):
    """A step could not load its executor, or the executor broke the artifact contract."""


def load_executor_class(path: str) -> type[BaseExecutor]:
    """Imports `module.Class` (as produced by `components.base.executor_path`)."""
    return _load_class(path, BaseExecutor, "executor")


def load_spec_class(path: str) -> type[ComponentSpec]:
    """Imports a component's spec class `module.Class` (its parameters say which enter the
    cache key)."""
    return _load_class(path, ComponentSpec, "spec")


def _load_class(path: str, base: type, what: str) -> Any:
    if not isinstance(path, str) or not _DOTTED.match(path):
        raise StepError(f"{what} path {path!r} must be a dotted 'module.Class' path")
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):      # longest importable module prefix
        module_name = ".".join(parts[:split])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
                continue                           # the prefix itself does not exist
            raise                                  # a module that exists failed to import
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            raise StepError(f"{what} {path!r}: module {module_name!r} has no "
                            f"{'.'.join(parts[split:])!r}") from None
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise StepError(f"{what} {path!r} is not a {base.__name__} subclass")
        return obj
    raise StepError(f"{what} {path!r}: no module of it can be imported (is the project on "
                    f"PYTHONPATH / installed in the image?)")


def execute(executor: str, component_id: str, input_dict: dict[str, list[Artifact]],
            output_dict: dict[str, list[Artifact]], exec_properties: dict[str, Any],
            publish: Mapping[str, str] | None = None,
            resume_dir: str | None = None) -> dict[str, str]:
    """Runs the executor on ready-made artifacts; returns the run results {name: path}.

    Output directories are created (empty) when missing. `publish` maps output names to
    result names (the specs' `publish_as`). `resume_dir`: where the executor keeps work that
    a later attempt with the same settings continues from; kept when the executor fails or is
    stopped, removed when it succeeds. None: a temporary directory, removed in any case.
    Progress lines go to stdout.
    """
    executor_class = load_executor_class(executor)
    for arts in output_dict.values():
        for art in arts:
            os.makedirs(art.uri, exist_ok=True)
    uris = {name: [a.uri for a in arts] for name, arts in output_dict.items()}
    stable = resume_dir is not None
    if not stable:
        resume_dir = tempfile.mkdtemp(prefix=f"resume-{component_id}-")
    elif os.path.isdir(resume_dir) and os.listdir(resume_dir):  # empty: nothing to continue
        print(f"[{component_id}] continuing from {resume_dir}", flush=True)
    else:
        note_unusable_attempts(component_id, resume_dir)
    context = ExecutorContext(component_id=component_id, resume_dir=resume_dir,
                              on_progress=_print_progress)
    try:
        executor_class(context=context).Do(input_dict, output_dict, exec_properties)
    finally:
        if not stable:
            shutil.rmtree(resume_dir, ignore_errors=True)
    for name, expected in uris.items():
        arts = output_dict.get(name)
        if not arts or [a.uri for a in arts] != expected:
            raise StepError(f"component {component_id!r}: executor changed output {name!r}; it "
                            f"must write into output_dict[{name!r}][0].uri and keep the artifact")
        for art in arts:
            try:
                json.dumps(art.properties, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise StepError(f"component {component_id!r}: properties of output {name!r} "
                                f"are not JSON-serialisable: {e}") from None
    results = dict(context.results)
    for name, result_name in (publish or {}).items():
        results[result_name] = os.path.abspath(output_dict[name][0].uri)
    if stable:                                      # done: the next run starts afresh
        shutil.rmtree(resume_dir, ignore_errors=True)
    return results


def note_unusable_attempts(component_id: str, resume_dir: str) -> str | None:
    """Prints (and returns) the local runner's note on an earlier attempt of this step that
    cannot be continued (`pipeline.local_runner.unusable_attempt_note`)."""
    note = unusable_attempt_note(resume_dir)
    if note:
        _print_progress(ProgressEvent(component_id, note))
    return note


def _print_progress(event: ProgressEvent) -> None:
    print(str(event), flush=True)


# ---- KFP side ---------------------------------------------------------------------------------

def run_step(plan_json: str, artifacts: Mapping[str, Any], exec_properties: str,
             resume_root: str = "") -> None:
    """Body of every generated KFP component.

    `plan_json` is written by the compiler from the component's spec::

        {"component_id": "...", "component_type": "module.Class", "executor": "module.Class",
         "spec": "module.Class", "cache": bool,
         "inputs": {name: {"type_name": T, "args": [kfp_arg, ...]}},
         "outputs": {name: {"type_name": T, "arg": kfp_arg, "publish_as": str|None,
                            "kfp_type": "Dataset"|...}}}

    `artifacts` maps the KFP argument names to the KFP artifacts of the step. `resume_root`:
    where resume state and, when the plan's ``cache`` is true, finished outputs survive the
    attempt ("" for none; see the module).
    """
    quiet_known_warnings()
    plan = json.loads(plan_json)
    cid = plan["component_id"]
    properties = _parse_properties(cid, exec_properties)
    input_dict = {}
    for name, entry in plan["inputs"].items():
        input_dict[name] = [_from_kfp(entry["type_name"], artifacts[arg]) for arg in entry["args"]]
    output_dict, kfp_outputs, publish = {}, {}, {}
    for name, entry in plan["outputs"].items():
        kfp_art = artifacts[entry["arg"]]
        kfp_outputs[name] = kfp_art
        output_dict[name] = [Artifact(entry["type_name"], kfp_art.path)]
        if entry.get("publish_as"):
            publish[name] = entry["publish_as"]
    # The key hashes the source of every project module the executor imports (importing
    # their packages): worth it only when there is a resume directory to name.
    key = step_cache_key(plan, input_dict, properties) if resume_root else None
    if key is not None:
        for name, arts in output_dict.items():
            arts[0].fingerprint = output_fingerprint(key, name)
    resume_dir = resume_dir_for(resume_root, cid, step_cache_key(plan, input_dict, properties, for_resume=True)) \
        if key else None
    cached = step_cache.entry_path(resume_root, cid, key) if key and plan.get("cache") else None

    reused = _reuse(cached, output_dict) if cached else None
    if reused is not None:
        results, source = reused
        print(f"[{cid}] {CACHED_MARK} reusing the outputs of an earlier run with the same "
              f"settings ({source})", flush=True)
    else:
        print(f"[{cid}] running {plan['executor']}", flush=True)
        results = execute(plan["executor"], cid, input_dict, output_dict, properties, publish,
                          resume_dir)
        if cached:
            step_cache.remember(cached, {n: a[0] for n, a in output_dict.items()}, results)
    _write_metadata(plan, kfp_outputs, output_dict, results)
    if results and not plan["outputs"]:
        print(f"[{cid}] warning: results {sorted(results)} are not recorded (the component "
              f"has no output artifact to carry them)", flush=True)
    print(f"[{cid}] complete", flush=True)


def _reuse(cached: str, output_dict: Mapping[str, list[Artifact]]
           ) -> tuple[dict[str, str], str] | None:
    """A finished earlier run's outputs copied into this step's (see `pipeline.step_cache`)."""
    outputs = {name: arts[0] for name, arts in output_dict.items()}
    for art in outputs.values():
        os.makedirs(art.uri, exist_ok=True)
    return step_cache.restore(cached, outputs)


def step_cache_key(plan: Mapping[str, Any], input_dict: Mapping[str, list[Artifact]],
                   exec_properties: Mapping[str, Any], *, for_resume: bool = False) -> str | None:
    """The local runner's cache key (`for_resume`: resume key) of this step, or None when an
    input carries no fingerprint (it was not made by one of these steps), so its key cannot be
    known."""
    if any(a.fingerprint is None for arts in input_dict.values() for a in arts):
        return None
    return cache_key(plan["component_id"], plan["component_type"],
                     load_spec_class(plan["spec"]), load_executor_class(plan["executor"]),
                     exec_properties, input_dict, for_resume=for_resume)


def _parse_properties(cid: str, exec_properties: str) -> dict[str, Any]:
    try:
        properties = json.loads(exec_properties)
    except json.JSONDecodeError as e:
        raise StepError(f"component {cid!r}: exec_properties is not valid JSON: {e}") from None
    if not isinstance(properties, dict):
        raise StepError(f"component {cid!r}: exec_properties must be a JSON object")
    return properties


def _write_metadata(plan: Mapping[str, Any], kfp_outputs: Mapping[str, Any],
                    output_dict: Mapping[str, list[Artifact]], results: dict[str, str]) -> None:
    """What the next steps and the run record read from each output's KFP metadata."""
    owned = _assign_results(results, {n: a[0].uri for n, a in output_dict.items()},
                            list(plan["outputs"]))
    for name, entry in plan["outputs"].items():
        kfp_art, ours = kfp_outputs[name], output_dict[name][0]
        kfp_art.metadata[TYPE_KEY] = entry["type_name"]
        kfp_art.metadata[PROPERTIES_KEY] = json.dumps(ours.properties, sort_keys=True)
        kfp_art.metadata[RESULTS_KEY] = json.dumps(
            {r: _to_uri(path, ours.uri, kfp_art.uri) for r, path in owned[name].items()},
            sort_keys=True)
        if ours.fingerprint is not None:
            kfp_art.metadata[FINGERPRINT_KEY] = ours.fingerprint
        if entry.get("kfp_type") == "Metrics":
            for key, value in ours.properties.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) \
                        and key not in (TYPE_KEY, PROPERTIES_KEY, RESULTS_KEY, FINGERPRINT_KEY):
                    kfp_art.metadata[key] = value


def _from_kfp(type_name: str, kfp_artifact: Any) -> Artifact:
    meta = dict(getattr(kfp_artifact, "metadata", None) or {})
    raw = meta.get(PROPERTIES_KEY)
    properties = json.loads(raw) if isinstance(raw, str) else {}
    fingerprint = meta.get(FINGERPRINT_KEY)
    return Artifact(type_name, kfp_artifact.path, properties,
                    fingerprint=fingerprint if isinstance(fingerprint, str) else None)


def _assign_results(results: dict[str, str], output_dirs: dict[str, str],
                    order: Sequence[str]) -> dict[str, dict[str, str]]:
    """Each result goes to the output whose directory contains it, else to the first output."""
    owned: dict[str, dict[str, str]] = {name: {} for name in order}
    for rname, path in results.items():
        home = next((n for n in order if _inside(path, output_dirs[n])), order[0] if order
                    else None)
        if home is not None:
            owned[home][rname] = path
    return owned


def _inside(path: str, directory: str) -> bool:
    path, directory = os.path.abspath(path), os.path.abspath(directory)
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _to_uri(path: str, local_dir: str, uri: str) -> str:
    """A path inside an output's local directory as a path under the artifact's URI (the same
    string when KFP runs locally; e.g. gs://bucket/... for /gcs/bucket/... in a cluster)."""
    if not _inside(path, local_dir):
        return path
    rest = os.path.relpath(os.path.abspath(path), os.path.abspath(local_dir))
    return uri if rest == "." else uri.rstrip("/") + "/" + rest.replace(os.sep, "/")


# ---- command line -------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.kfp_entry",
        description="Run one component executor on artifacts given as JSON; prints the "
                    "results and output artifacts as JSON.")
    parser.add_argument("--executor", required=True, help="dotted path module.Class")
    parser.add_argument("--component_id", default="step")
    parser.add_argument("--inputs", default="{}",
                        help='{"name": [{"type_name": T, "uri": dir, "properties": {}}]}')
    parser.add_argument("--outputs", default="{}",
                        help='{"name": {"type_name": T, "uri": dir}}')
    parser.add_argument("--exec_properties", default="{}", help="JSON object")
    parser.add_argument("--publish", default="{}", help='{"output_name": "result_name"}')
    args = parser.parse_args(argv)
    try:
        inputs = {n: [Artifact.from_dict(a) for a in arts]
                  for n, arts in json.loads(args.inputs).items()}
        outputs = {n: [Artifact.from_dict(a)] for n, a in json.loads(args.outputs).items()}
        properties = json.loads(args.exec_properties)
        publish = json.loads(args.publish)
    except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as e:
        parser.error(f"invalid JSON argument: {e}")
    results = execute(args.executor, args.component_id, inputs, outputs, properties, publish)
    json.dump({"results": results,
               "outputs": {n: a[0].to_dict() for n, a in outputs.items()}}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
