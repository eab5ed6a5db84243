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
* for ``Metrics`` outputs, the numeric properties again as plain entries, which the KFP UI
  shows as metrics.

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

from components.base import Artifact, BaseExecutor, ExecutorContext, ProgressEvent

TYPE_KEY = "actsearch_type"
PROPERTIES_KEY = "actsearch_properties"
RESULTS_KEY = "actsearch_results"

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


class StepError(RuntimeError):
    """A step could not load its executor, or the executor broke the artifact contract."""


def load_executor_class(path: str) -> type[BaseExecutor]:
    """Imports `module.Class` (as produced by `components.base.executor_path`)."""
    if not isinstance(path, str) or not _DOTTED.match(path):
        raise StepError(f"executor path {path!r} must be a dotted 'module.Class' path")
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
            raise StepError(f"executor {path!r}: module {module_name!r} has no "
                            f"{'.'.join(parts[split:])!r}") from None
        if not (isinstance(obj, type) and issubclass(obj, BaseExecutor)):
            raise StepError(f"executor {path!r} is not a BaseExecutor subclass")
        return obj
    raise StepError(f"executor {path!r}: no module of it can be imported (is the project on "
                    f"PYTHONPATH / installed in the image?)")


def execute(executor: str, component_id: str, input_dict: dict[str, list[Artifact]],
            output_dict: dict[str, list[Artifact]], exec_properties: dict[str, Any],
            publish: Mapping[str, str] | None = None) -> dict[str, str]:
    """Runs the executor on ready-made artifacts; returns the run results {name: path}.

    Output directories are created (empty) when missing. `publish` maps output names to
    result names (the specs' `publish_as`). The executor gets a context with a temporary
    resume directory (removed afterwards) whose progress lines go to stdout.
    """
    executor_class = load_executor_class(executor)
    for arts in output_dict.values():
        for art in arts:
            os.makedirs(art.uri, exist_ok=True)
    uris = {name: [a.uri for a in arts] for name, arts in output_dict.items()}
    resume_dir = tempfile.mkdtemp(prefix=f"resume-{component_id}-")
    context = ExecutorContext(component_id=component_id, resume_dir=resume_dir,
                              on_progress=_print_progress)
    try:
        executor_class(context=context).Do(input_dict, output_dict, exec_properties)
    finally:
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
    return results


def _print_progress(event: ProgressEvent) -> None:
    print(str(event), flush=True)


# ---- KFP side ---------------------------------------------------------------------------------

def run_step(plan_json: str, artifacts: Mapping[str, Any], exec_properties: str) -> None:
    """Body of every generated KFP component.

    `plan_json` is written by the compiler from the component's spec::

        {"component_id": "...", "executor": "module.Class",
         "inputs": {name: {"type_name": T, "args": [kfp_arg, ...]}},
         "outputs": {name: {"type_name": T, "arg": kfp_arg, "publish_as": str|None,
                            "kfp_type": "Dataset"|...}}}

    `artifacts` maps the KFP argument names to the KFP artifacts of the step.
    """
    plan = json.loads(plan_json)
    cid = plan["component_id"]
    try:
        properties = json.loads(exec_properties)
    except json.JSONDecodeError as e:
        raise StepError(f"component {cid!r}: exec_properties is not valid JSON: {e}") from None
    if not isinstance(properties, dict):
        raise StepError(f"component {cid!r}: exec_properties must be a JSON object")

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

    print(f"[{cid}] running {plan['executor']}", flush=True)
    results = execute(plan["executor"], cid, input_dict, output_dict, properties, publish)

    owned = _assign_results(results, {n: a[0].uri for n, a in output_dict.items()},
                            list(plan["outputs"]))
    for name, entry in plan["outputs"].items():
        kfp_art, ours = kfp_outputs[name], output_dict[name][0]
        kfp_art.metadata[TYPE_KEY] = entry["type_name"]
        kfp_art.metadata[PROPERTIES_KEY] = json.dumps(ours.properties, sort_keys=True)
        kfp_art.metadata[RESULTS_KEY] = json.dumps(
            {r: _to_uri(path, ours.uri, kfp_art.uri) for r, path in owned[name].items()},
            sort_keys=True)
        if entry.get("kfp_type") == "Metrics":
            for key, value in ours.properties.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) \
                        and key not in (TYPE_KEY, PROPERTIES_KEY, RESULTS_KEY):
                    kfp_art.metadata[key] = value
    if results and not plan["outputs"]:
        print(f"[{cid}] warning: results {sorted(results)} are not recorded (the component "
              f"has no output artifact to carry them)", flush=True)
    print(f"[{cid}] complete", flush=True)


def _from_kfp(type_name: str, kfp_artifact: Any) -> Artifact:
    meta = dict(getattr(kfp_artifact, "metadata", None) or {})
    raw = meta.get(PROPERTIES_KEY)
    properties = json.loads(raw) if isinstance(raw, str) else {}
    return Artifact(type_name, kfp_artifact.path, properties)


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
