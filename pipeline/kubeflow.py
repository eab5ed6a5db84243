"""Kubeflow Pipelines target: compile a `Pipeline` to KFP v2 YAML, or run it with `kfp.local`.

Each of our components becomes one lightweight KFP Python component, generated from its spec:

* its wired inputs become typed ``Input[...]`` artifacts, its outputs typed ``Output[...]``
  artifacts (see `KFP_ARTIFACT_TYPES`), and its execution parameters one JSON string
  parameter ``exec_properties`` (passed as a constant by the pipeline);
* one more string parameter ``resume_root``, fed by the pipeline parameter of that name: a
  directory every attempt of a step sees (a shared volume, a ``/gcs/...`` path), where a step
  keeps its resume state keyed by its cache key, so a preempted or re-run step continues
  (see `pipeline.kfp_entry`); empty (the default) keeps it in a temporary directory;
* its body is a single call to `pipeline.kfp_entry.run_step`, which rebuilds our `Artifact`s
  from the KFP artifacts' paths, runs the executor's ``Do`` and records artifact properties
  and run results in the KFP artifact metadata.

`dsl.component` reads a function's signature *and its source text* (the source is what runs in
the step's container), so the function is generated as source text from the spec, compiled
with `exec` and registered in `linecache` for `inspect.getsource`. Only identifiers, type names
and an executor's dotted path (all checked against strict patterns) and JSON string literals
made with `repr` enter that text; parameter values never do: they reach the step as a task
argument.

The step image must contain this project with its dependencies (kfp included), so the
generated command installs nothing by default (``install_kfp_package=False``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import io
import itertools
import json
import keyword
import linecache
import os
import re
import secrets
import sys
import time
import warnings
from fractions import Fraction
from typing import IO, Any, Callable, Mapping

from absl import logging

from components.base import Artifact, Component, executor_path, stopped_by
from pipeline import kfp_entry
from pipeline import metadata as md
from pipeline.dag import Pipeline
from pipeline.local_runner import (PipelineError, compute_cache_key, locked_store,
                                   output_fingerprint)
from components.terminal import is_startup_noise

#: Our artifact type -> KFP artifact class name (any other type maps to ``Artifact``). Our
#: artifacts are directories, so `HTML`/`Markdown` (single files the UI renders) do not fit
#: the Report; the Evaluation's numeric properties are shown as metrics.
KFP_ARTIFACT_TYPES: dict[str, str] = {
    "Examples": "Dataset",
    "Candidates": "Dataset",
    "TrainedModels": "Model",
    "Evaluation": "Metrics",
}
_KFP_CLASSES = ("Artifact", "Dataset", "Model", "Metrics", "HTML", "Markdown")

#: Keys allowed in a per-component resource spec, with what they mean.
RESOURCE_KEYS: dict[str, str] = {
    "cpu": "CPU limit, e.g. '8' or '500m' (set_cpu_limit)",
    "memory": "memory limit, e.g. '32G' or '512Mi' (set_memory_limit)",
    "cpu_request": "CPU request, at most 'cpu' when both are set (set_cpu_request)",
    "memory_request": "memory request, at most 'memory' when both are set "
                      "(set_memory_request)",
    "accelerator": "accelerator type, e.g. 'NVIDIA_TESLA_T4' or 'nvidia.com/gpu' "
                   "(set_accelerator_type)",
    "accelerator_count": "number of accelerators, an int >= 1 with 'accelerator'; leave both "
                         "out for none (set_accelerator_limit)",
    "retries": "number of retries on failure, a non-negative int (set_retry)",
    "caching": "bool, caching of this step (set_caching_options)",
    "env": "dict of environment variables {NAME: value} (set_env_variable)",
}

EXEC_PROPERTIES_PARAM = "exec_properties"
RESUME_ROOT_PARAM = "resume_root"
KFP_LOG = "kfp-local.log"
"""Everything a kfp.local run printed, in its run directory (the terminal shows less)."""
_ENTRY_ALIAS = "_actsearch_entry"
_CPU = re.compile(r"^([0-9]*[.])?[0-9]+m?$")
_MEMORY = re.compile(r"^[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_generated = itertools.count()


class KubeflowError(ValueError):
    """The pipeline cannot be expressed as a Kubeflow pipeline, or an option is invalid."""


class ResourceSpecError(KubeflowError):
    """A `resources` entry names an unknown component or has an invalid key or value."""


def kfp_type_name(type_name: str) -> str:
    """The KFP artifact class name used for one of our artifact types."""
    return KFP_ARTIFACT_TYPES.get(type_name, "Artifact")


def kfp_name(component_id: str) -> str:
    """The Kubernetes-style name KFP gives the task/component of a component id."""
    return re.sub("-+", "-", re.sub("[^-0-9a-z]+", "-", component_id.lower())).strip("-")


# ---- compiling -----------------------------------------------------------------------------------

def compile_pipeline(pipeline: Pipeline, output_path: str, *, image: str = "actsearch:latest",
                     packages_to_install: list[str] | None = None,
                     resources: Mapping[str, Mapping[str, Any]] | None = None,
                     enable_caching: bool | None = None, install_kfp_package: bool = False,
                     kfp_pipeline_root: str | None = None, resume_root: str | None = None) -> str:
    """Writes a KFP v2 pipeline YAML for `pipeline` to `output_path`; returns its path.

    One KFP component per component, in the DAG's order, connected by typed artifacts.
    `image`: the step image (must contain this project). `packages_to_install`: pip packages
    each step installs at start. `resources`: ``{component_id: {key: value}}`` with keys from
    `RESOURCE_KEYS`, e.g. ``{"tuner": {"cpu": "8", "memory": "32G",
    "accelerator": "NVIDIA_TESLA_T4", "accelerator_count": 1}}``. `enable_caching`: KFP
    caching for every step (default: the pipeline's `enable_cache`). `kfp_pipeline_root`: the
    pipeline's default root in the cluster (e.g. ``gs://bucket/root``); our local
    `pipeline.pipeline_root` is not used there. `resume_root`: the default of the pipeline
    parameter ``resume_root``, an absolute path every step sees (e.g. a mounted volume or
    ``/gcs/bucket/resume``); a run can set it too. Unset, steps resume nothing.
    """
    from kfp import compiler

    pipeline_func = build_kfp_pipeline(
        pipeline, image=image, packages_to_install=packages_to_install, resources=resources,
        enable_caching=enable_caching, install_kfp_package=install_kfp_package,
        kfp_pipeline_root=kfp_pipeline_root, resume_root=resume_root)
    output_path = os.path.abspath(os.fspath(output_path))
    os.makedirs(os.path.dirname(output_path), exist_ok=True)
    compiler.Compiler().compile(pipeline_func, output_path)
    return output_path


def build_kfp_pipeline(pipeline: Pipeline, *, image: str = "actsearch:latest",
                       packages_to_install: list[str] | None = None,
                       resources: Mapping[str, Mapping[str, Any]] | None = None,
                       enable_caching: bool | None = None, install_kfp_package: bool = False,
                       kfp_pipeline_root: str | None = None, resume_root: str | None = None):
    """The KFP pipeline (a `GraphComponent`) for `pipeline`; see `compile_pipeline`."""
    from kfp import dsl

    if not isinstance(pipeline, Pipeline):
        raise KubeflowError(f"expected a pipeline.dag.Pipeline, got {type(pipeline).__name__}")
    if not isinstance(image, str) or not image or any(c.isspace() for c in image):
        raise KubeflowError(f"image must be a non-empty image name without spaces, "
                            f"got {image!r}")
    if packages_to_install is not None and (
            isinstance(packages_to_install, str)
            or not all(isinstance(p, str) and p.strip() for p in packages_to_install)):
        raise KubeflowError(f"packages_to_install must be a list of pip requirement strings, "
                            f"got {packages_to_install!r}")
    name = kfp_name(pipeline.name)
    if not re.match(r"^[a-z0-9][a-z0-9-]{0,127}$", name):
        raise KubeflowError(f"pipeline name {pipeline.name!r} gives the Kubeflow name {name!r}, "
                            f"which must match [a-z0-9][a-z0-9-]{{0,127}}")
    checked = validate_resources(pipeline, resources)
    default_resume_root = _check_resume_root(resume_root)
    caching = pipeline.enable_cache if enable_caching is None else bool(enable_caching)
    _check_names(pipeline)

    factories = {c.id: _make_kfp_component(c, image, packages_to_install, install_kfp_package,
                                           checked.get(c.id, {}).get("caching", caching))
                 for c in pipeline.components}

    def build(resume_root=default_resume_root):
        tasks: dict[str, Any] = {}
        for component in pipeline.components:
            args: dict[str, Any] = {EXEC_PROPERTIES_PARAM: json.dumps(
                component.exec_properties, sort_keys=True), RESUME_ROOT_PARAM: resume_root}
            for arg, channel in _input_args(component):
                args[arg] = tasks[channel.producer_id].outputs[channel.output_name]
            task = factories[component.id](**args)
            task.set_display_name(component.id)
            _apply_resources(task, component.id, checked.get(component.id, {}), caching)
            tasks[component.id] = task

    # KFP reads the signature's annotations; this module's are postponed (strings).
    build.__annotations__ = {RESUME_ROOT_PARAM: str}
    build.__name__ = name.replace("-", "_")
    build.__doc__ = (f"actsearch pipeline {pipeline.name!r}: "
                     f"{' -> '.join(c.id for c in pipeline.components)}.")
    return dsl.pipeline(name=name, pipeline_root=kfp_pipeline_root)(build)


def _check_resume_root(resume_root: str | None) -> str:
    """A resume root is a path inside the step's container, the same for every attempt."""
    if resume_root is None or resume_root == "":
        return ""
    if not isinstance(resume_root, str) or not resume_root.startswith("/") \
            or "://" in resume_root:
        raise KubeflowError(f"resume_root must be an absolute path every step sees (a mounted "
                            f"volume, or /gcs/<bucket>/... for gs://<bucket>/...), got "
                            f"{resume_root!r}")
    return resume_root


def _check_names(pipeline: Pipeline) -> None:
    seen: dict[str, str] = {}
    for c in pipeline.components:
        k = kfp_name(c.id)
        if not k:
            raise KubeflowError(f"component id {c.id!r} gives an empty Kubeflow name")
        if k in seen:
            raise KubeflowError(f"component ids {seen[k]!r} and {c.id!r} both give the Kubeflow "
                                f"name {k!r} (lower case, '-' for '_' and '.'); rename one")
        seen[k] = c.id


def _input_args(component: Component) -> list[tuple[str, Any]]:
    """(KFP argument name, channel) for every wired input channel: ``name`` for a single
    channel, ``name_0``, ``name_1``, ... when several channels fan in."""
    pairs = []
    for name, channels in component.inputs.items():
        if len(channels) == 1:
            pairs.append((name, channels[0]))
        else:
            pairs.extend((f"{name}_{i}", ch) for i, ch in enumerate(channels))
    return pairs


def _make_kfp_component(component: Component, image: str, packages: list[str] | None,
                        install_kfp_package: bool, caching: bool) -> Callable[..., Any]:
    """Generates the lightweight KFP component of one of our components; `caching` also turns
    the step's own cache on or off (`pipeline.step_cache`)."""
    from kfp import dsl

    cid, spec = component.id, component.SPEC_CLASS
    executor = executor_path(component.EXECUTOR_CLASS)
    if not _DOTTED.match(executor) or "<locals>" in executor:
        raise KubeflowError(f"component {cid!r}: executor {executor!r} is not importable by "
                            f"path; define executor classes at module level")
    spec_path = f"{spec.__module__}.{spec.__qualname__}"
    if not _DOTTED.match(spec_path) or "<locals>" in spec_path:
        raise KubeflowError(f"component {cid!r}: spec {spec_path!r} is not importable by path; "
                            f"define spec classes at module level")
    function_name = re.sub(r"[^0-9A-Za-z_]", "_", cid)
    if keyword.iskeyword(function_name) or function_name in (_ENTRY_ALIAS, "Input", "Output"):
        function_name += "_"

    params, artifact_args = [], []
    plan: dict[str, Any] = {"component_id": cid, "component_type": component.type_name,
                            "executor": executor, "spec": spec_path, "inputs": {},
                            "outputs": {}, "cache": bool(caching)}
    for arg, channel in _input_args(component):
        params.append(f"{arg}: Input[{kfp_type_name(channel.type_name)}]")
        artifact_args.append(arg)
    for name, channels in component.inputs.items():
        args = [name] if len(channels) == 1 else [f"{name}_{i}" for i in range(len(channels))]
        plan["inputs"][name] = {"type_name": spec.INPUTS[name].type_name, "args": args}
    for name, ospec in spec.OUTPUTS.items():
        kfp_type = kfp_type_name(ospec.type_name)
        params.append(f"{name}: Output[{kfp_type}]")
        artifact_args.append(name)
        plan["outputs"][name] = {"type_name": ospec.type_name, "arg": name, "kfp_type": kfp_type,
                                 "publish_as": ospec.publish_as}
    names = artifact_args + [EXEC_PROPERTIES_PARAM, RESUME_ROOT_PARAM]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise KubeflowError(f"component {cid!r}: Kubeflow argument name(s) {duplicates} are used "
                            f"twice (inputs fanning in get _0, _1, ...; {EXEC_PROPERTIES_PARAM!r}"
                            f" and {RESUME_ROOT_PARAM!r} are reserved)")
    for n in names:
        if not _IDENT.match(n) or keyword.iskeyword(n) or n == _ENTRY_ALIAS:
            raise KubeflowError(f"component {cid!r}: {n!r} cannot be a Kubeflow argument name")
    for t in {kfp_type_name(t) for t in
              [i.type_name for i in spec.INPUTS.values()] +
              [o.type_name for o in spec.OUTPUTS.values()]}:
        if t not in _KFP_CLASSES:
            raise KubeflowError(f"KFP_ARTIFACT_TYPES maps to {t!r}; allowed: {_KFP_CLASSES}")
    params.extend([f"{EXEC_PROPERTIES_PARAM}: str", f"{RESUME_ROOT_PARAM}: str"])

    artifact_map = ", ".join(f"{a!r}: {a}" for a in artifact_args)
    source = (
        f"def {function_name}({', '.join(params)}):\n"
        f"    {repr(f'Runs component {cid} of the actsearch pipeline with {executor}.')}\n"
        f"    import pipeline.kfp_entry as {_ENTRY_ALIAS}\n"
        f"    {_ENTRY_ALIAS}.run_step({json.dumps(plan, sort_keys=True)!r}, {{{artifact_map}}}, "
        f"{EXEC_PROPERTIES_PARAM}, {RESUME_ROOT_PARAM})\n")
    filename = f"<actsearch-kfp-{next(_generated)}-{function_name}>"
    namespace = {"__name__": "actsearch_kfp_generated", "Input": dsl.Input,
                 "Output": dsl.Output, **{t: getattr(dsl, t) for t in _KFP_CLASSES}}
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    try:
        # dont_inherit: real annotation objects, not this module's postponed (string) ones.
        exec(compile(source, filename, "exec", dont_inherit=True), namespace)  # noqa: S102
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)   # KFP's default-image notice
            return dsl.component(namespace[function_name], base_image=image,
                                 packages_to_install=list(packages) if packages else None,
                                 install_kfp_package=install_kfp_package)
    finally:
        linecache.cache.pop(filename, None)


# ---- resources ---------------------------------------------------------------------------------

def validate_resources(pipeline: Pipeline, resources: Mapping[str, Mapping[str, Any]] | None
                       ) -> dict[str, dict[str, Any]]:
    """Checks a ``{component_id: {key: value}}`` resource spec; returns it normalised
    (cpu/memory as strings, accelerator_count as int).

    Everything Kubernetes or KFP would refuse later (after an image build and an upload) is
    refused here, naming the step, the key and what is allowed."""
    if resources is None:
        return {}
    if not isinstance(resources, Mapping):
        raise ResourceSpecError(f"resources must be a dict {{component_id: {{key: value}}}}, "
                                f"got {type(resources).__name__}")
    ids = [c.id for c in pipeline.components]
    result = {}
    for cid, spec in resources.items():
        if cid not in ids:
            raise ResourceSpecError(f"resources: unknown component {cid!r}; components: {ids}")
        result[cid] = _validate_step_resources(cid, spec)
    return result


def _validate_step_resources(cid: str, spec: Any) -> dict[str, Any]:
    """One step's resource spec, each value checked and then the values against each other."""
    if not isinstance(spec, Mapping):
        raise ResourceSpecError(f"resources[{cid!r}] must be a dict, got "
                                f"{type(spec).__name__}")
    unknown = sorted(set(spec) - set(RESOURCE_KEYS))
    if unknown:
        raise ResourceSpecError(f"resources[{cid!r}]: unknown key(s) {unknown}; allowed: "
                                f"{sorted(RESOURCE_KEYS)}")
    out = {key: _resource_value(f"resources[{cid!r}][{key!r}]", key, value)
           for key, value in spec.items()}
    _check_accelerator(cid, out)
    _check_requests_within_limits(cid, out)
    return out


def _resource_value(where: str, key: str, value: Any) -> Any:
    """One checked, normalised value of a resource key (`where` names it in errors)."""
    if key in ("cpu", "cpu_request"):
        return _cpu_text(where, value)
    if key in ("memory", "memory_request"):
        return _memory_text(where, value)
    if key == "accelerator":
        if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
            raise ResourceSpecError(f"{where} = {value!r}: expected an accelerator type, "
                                    f"e.g. 'NVIDIA_TESLA_T4' or 'nvidia.com/gpu'")
        return value
    if key in ("accelerator_count", "retries"):
        return _count(where, value)
    if key == "caching":
        if not isinstance(value, bool):
            raise ResourceSpecError(f"{where} = {value!r}: expected true or false")
        return value
    if not isinstance(value, Mapping) or not all(          # key == "env"
            isinstance(k, str) and _ENV_NAME.match(k) and isinstance(v, str)
            for k, v in value.items()):
        raise ResourceSpecError(f"{where}: expected a dict of environment variable "
                                f"names to string values, got {value!r}")
    return dict(value)


def _cpu_text(where: str, value: Any) -> str:
    """A CPU quantity as the string KFP wants; numbers are accepted as a convenience."""
    text = str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else value
    if not isinstance(text, str) or not _CPU.match(text):
        raise ResourceSpecError(f"{where} = {value!r}: expected a number of CPUs, "
                                f"e.g. '8', '0.5' or '500m'")
    return text


def _memory_text(where: str, value: Any) -> str:
    """A memory quantity as the string KFP wants; an int is a number of bytes."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _MEMORY.match(text):
        raise ResourceSpecError(f"{where} = {value!r}: expected an amount of memory, "
                                f"e.g. '32G', '512Mi' or '1000000' (an integer with "
                                f"an optional E/P/T/G/M/K suffix, or Ei..Ki)")
    return text


def _count(where: str, value: Any) -> int:
    """A non-negative int, and only an int: a digit string like '3' is refused like 2.5 and
    true are, so that one rule holds for every count (and a quoted number in a config, often
    a sign of a templating slip, is caught rather than guessed at)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ResourceSpecError(f"{where} = {value!r}: expected a non-negative integer "
                                f"(a JSON number such as 2, not a string, float or bool)")
    return value


def _check_accelerator(cid: str, out: Mapping[str, Any]) -> None:
    """A count needs a type; a type with ``accelerator_count: 0`` is refused, not dropped.

    Why refuse: the spec names an accelerator and asks for none of it, so one of the two is a
    mistake and nothing says which. Passing the 0 on (KFP would emit ``resourceCount: '0'``)
    leaves the meaning to the backend; silently dropping the type would turn a mistyped count
    on a GPU step into a training job that runs on CPU for days. A CPU-only step leaves both keys out: over a preset's
    requests, ``--resources='{"<step>": {"accelerator": null, "accelerator_count": null}}'``.
    """
    if "accelerator_count" in out and "accelerator" not in out:
        raise ResourceSpecError(f"resources[{cid!r}]: 'accelerator_count' needs "
                                f"'accelerator' (the accelerator type) as well")
    if out.get("accelerator_count") == 0 and "accelerator" in out:
        raise ResourceSpecError(
            f"resources[{cid!r}]: 'accelerator' is {out['accelerator']!r} but "
            f"'accelerator_count' is 0; give a count of 1 or more, or remove both keys for a "
            f"step without accelerators (as a --resources patch: "
            f"{{\"{cid}\": {{\"accelerator\": null, \"accelerator_count\": null}}}})")


def _check_requests_within_limits(cid: str, out: Mapping[str, Any]) -> None:
    """Kubernetes refuses a pod whose request exceeds its limit, but only when the step is
    scheduled, long after compiling: refuse it now, both values shown in one unit."""
    for request, limit, parse, unit in (("cpu_request", "cpu", cpu_quantity, "CPU"),
                                        ("memory_request", "memory", memory_quantity, "bytes")):
        if request in out and limit in out and parse(out[request]) > parse(out[limit]):
            raise ResourceSpecError(
                f"resources[{cid!r}]: {request} {out[request]!r} "
                f"({_plain(parse(out[request]))} {unit}) is above the {limit} limit "
                f"{out[limit]!r} ({_plain(parse(out[limit]))} {unit}); Kubernetes allows a "
                f"request up to its limit: lower {request!r} or raise {limit!r}")


_DECIMAL_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
                   "E": 10**18}
_BINARY_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def cpu_quantity(text: str) -> Fraction:
    """CPUs in a Kubernetes CPU quantity ('500m' -> 1/2, '2' -> 2, '1.5' -> 3/2), exact."""
    if not _CPU.match(text):
        raise ResourceSpecError(f"{text!r} is not a CPU quantity; expected e.g. '8', '0.5' or "
                                f"'500m'")
    if text.endswith("m"):
        return Fraction(text[:-1]) / 1000
    return Fraction(text)


def memory_quantity(text: str) -> int:
    """Bytes in a Kubernetes memory quantity ('512Mi', '4G', '1Gi', '1000000')."""
    match = re.match(r"^([0-9]+)([A-Za-z]*)$", text) if _MEMORY.match(text) else None
    if match is None:
        raise ResourceSpecError(f"{text!r} is not a memory quantity; expected e.g. '32G', "
                                f"'512Mi' or '1000000' (bytes)")
    number, suffix = match.groups()
    return int(number) * {**_DECIMAL_SUFFIX, **_BINARY_SUFFIX}[suffix]


def _plain(quantity: Fraction | int) -> str:
    """A quantity as a plain number for an error message: 4000000000, 2, 0.5."""
    if isinstance(quantity, int) or quantity.denominator == 1:
        return str(int(quantity))
    return format(float(quantity), "g")


def _apply_resources(task: Any, cid: str, spec: dict[str, Any], caching: bool) -> None:
    setters = (("cpu", task.set_cpu_limit), ("memory", task.set_memory_limit),
               ("cpu_request", task.set_cpu_request), ("memory_request", task.set_memory_request),
               ("accelerator", task.set_accelerator_type),
               ("accelerator_count", task.set_accelerator_limit))
    try:
        for key, setter in setters:
            if key in spec:
                setter(spec[key])
        if spec.get("retries"):
            task.set_retry(spec["retries"])
        for name, value in spec.get("env", {}).items():
            task.set_env_variable(name, value)
    except ValueError as e:                       # KFP's own checks, should ours miss one
        raise ResourceSpecError(f"resources[{cid!r}]: {e}") from None
    task.set_caching_options(spec.get("caching", caching))


# ---- running with kfp.local ----------------------------------------------------------------------

@dataclasses.dataclass
class KfpLocalRunResult:
    """What a `run_kfp_local` run produced.

    `components[cid][output_name]` is the output `Artifact` (uri = local path, properties as
    the executor set them); `results` the run results (publish_as outputs and registered paths);
    `kfp_root` the directory kfp.local wrote under; `pipeline_yaml` the compiled pipeline that ran.
    """

    run_id: str
    status: str
    pipeline_root: str
    run_json: str | None
    kfp_root: str
    pipeline_yaml: str
    components: dict[str, dict[str, Artifact]]
    results: dict[str, str]

    def output(self, component_id: str, name: str) -> Artifact:
        return self.components[component_id][name]

    @property
    def output_paths(self) -> dict[str, dict[str, str]]:
        """{component_id: {output_name: local path}}."""
        return {cid: {n: a.uri for n, a in outs.items()} for cid, outs in self.components.items()}


def run_kfp_local(pipeline: Pipeline, *, pipeline_root: str | None = None,
                  run_id: str | None = None, image: str = "actsearch:latest",
                  resources: Mapping[str, Mapping[str, Any]] | None = None,
                  write_run_json: bool = True,
                  on_complete: Callable[[KfpLocalRunResult], None] | None = None
                  ) -> KfpLocalRunResult:
    """Compiles `pipeline` and runs the compiled YAML with `kfp.local`'s SubprocessRunner
    (each step a subprocess of this Python, no container, nothing installed).

    Like the local runner, it holds the pipeline root's run lock for the whole run (a second
    run on the root fails with the same "another run is using pipeline_root" error) and
    records the run in ``<pipeline_root>/metadata.sqlite`` (runner "kfp-local"): its status
    and one execution per step kfp.local started, with times, state and output artifacts.
    Everything else goes under ``<pipeline_root>/kfp-local/<run_id>/``: ``pipeline.yaml``,
    kfp.local's ``<pipeline-name>-<timestamp>/<task>/<output>`` directories and ``KFP_LOG``,
    all the run printed (the terminal shows the steps' own lines, not kfp.local's bookkeeping).
    ``<pipeline_root>/run.json`` records the run like the local runner's (``runner:
    "kfp-local"``) unless `write_run_json` is False. The steps see this process's import path
    (PYTHONPATH). kfp.local has no cache, so the steps keep their own under the pipeline root
    (`pipeline.step_cache`, unless the pipeline's caching is off): a step whose settings and
    inputs a finished earlier run had copies that run's outputs (recorded CACHED), and a step
    that was stopped or failed continues from its resume directory when run again with the
    same settings. A failed step raises `PipelineError` naming the component;
    Ctrl-C is recorded as INTERRUPTED and propagates. `on_complete` runs after a successful
    run while the root is still locked (the CLI publishes the deliverables there).
    """
    root = os.path.abspath(os.fspath(pipeline_root or pipeline.pipeline_root))
    run_id = run_id or time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
    if not _RUN_ID.match(run_id):
        raise PipelineError(f"run id {run_id!r} may contain only letters, digits, '_', '-', '.'",
                            run_id=run_id)
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:
        raise PipelineError(f"cannot create pipeline_root {root!r}: {e.strerror}",
                            run_id=run_id) from None
    with locked_store(root) as store:
        result = _KfpLocalRun(pipeline, root, run_id, store, write_run_json).execute(
            image, resources)
        if on_complete is not None:   # still holding the root: no other run can interleave
            on_complete(result)
        return result


class _KfpLocalRun:
    """One kfp.local run: its directory, its run.json and its record in the metadata store."""

    def __init__(self, pipeline: Pipeline, root: str, run_id: str, store: md.MetadataStore,
                 write_run_json: bool) -> None:
        self.pipeline, self.root, self.run_id, self.store = pipeline, root, run_id, store
        self.kfp_root = os.path.join(root, "kfp-local", run_id)
        self.run_json = os.path.join(root, "run.json") if write_run_json else None

    def execute(self, image: str, resources: Mapping[str, Mapping[str, Any]] | None
                ) -> KfpLocalRunResult:
        yaml_path = self._prepare(image, resources)
        task_of = _task_directories(yaml_path)
        recorder = _Recorder(self.store, self.run_id, self.pipeline, self.kfp_root, task_of)
        doc: dict[str, Any] = {
            "run_id": self.run_id, "pipeline": self.pipeline.name, "pipeline_root": self.root,
            "runner": "kfp-local", "kfp_root": self.kfp_root, "pipeline_yaml": yaml_path,
            "metadata": self.store.path, "status": "running", "start_time": _now(),
            "end_time": None, "error": None,
            "components": {c.id: {"state": "pending"} for c in self.pipeline.components},
            "results": {},
        }
        _write_json(self.run_json, doc)
        log_path = os.path.join(self.kfp_root, KFP_LOG)
        with open(log_path, "a", encoding="utf-8") as log:
            # kfp.local prints the steps' output; the terminal gets the part worth reading
            tail = _Tail(sys.stdout, on_line=recorder.line, log=log, show=_KfpOutputFilter())
            return self._run(yaml_path, task_of, recorder, doc, tail)

    def _run(self, yaml_path: str, task_of: dict[str, str], recorder: "_Recorder",
             doc: dict[str, Any], tail: "_Tail") -> KfpLocalRunResult:
        try:
            error = _run_compiled(yaml_path, self.kfp_root, self.root, tail)
        except BaseException as e:              # Ctrl-C (recorded, resumable) or kfp.local broke
            interrupted = not isinstance(e, Exception)
            self._record(doc, recorder, task_of, md.INTERRUPTED if interrupted else md.FAILED,
                         f"interrupted: the run was stopped by {stopped_by(e)} before it finished" if interrupted
                         else f"kfp.local run failed: {type(e).__name__}: {e}", None)
            raise
        if error is None:
            outputs, results = self._record(doc, recorder, task_of, md.COMPLETE, None, None)
            return KfpLocalRunResult(self.run_id, md.COMPLETE, self.root, self.run_json,
                                     self.kfp_root, yaml_path, outputs, results)
        failed = _failed_component(self.pipeline, error, task_of, recorder)
        reason = tail.last_exception()
        text = (f"component {failed!r} failed under kfp.local: "
                f"{reason or 'see its log above, all of it in ' + os.path.join(self.kfp_root, KFP_LOG)}"
                if failed else f"kfp.local run failed: {_ANSI.sub('', str(error))}")
        self._record(doc, recorder, task_of, md.FAILED, text, failed)
        raise PipelineError(f"{text} (run {self.run_id}; outputs under {self.kfp_root})",
                            component_id=failed, run_id=self.run_id) from error

    def _prepare(self, image: str, resources: Mapping[str, Mapping[str, Any]] | None) -> str:
        """Creates the run's directory and metadata record; returns the compiled YAML."""
        if self.store.get_run(self.run_id) is not None or os.path.exists(self.kfp_root):
            raise PipelineError(f"run {self.run_id!r} already exists under {self.root}; "
                                f"choose another run id or let the runner generate one",
                                run_id=self.run_id)
        os.makedirs(self.kfp_root)
        yaml_path = compile_pipeline(self.pipeline, os.path.join(self.kfp_root, "pipeline.yaml"),
                                     image=image, resources=resources)
        self.store.create_run(self.run_id, self.pipeline.name, self.root, runner="kfp-local")
        return yaml_path

    def _record(self, doc: dict[str, Any], recorder: "_Recorder", task_of: dict[str, str],
                status: str, error: str | None, failed: str | None
                ) -> tuple[dict[str, dict[str, Artifact]], dict[str, str]]:
        """Writes the end of the run to run.json and the metadata store."""
        outputs, results, states = _collect(self.pipeline, self.kfp_root, task_of)
        unfinished = [*recorder.running] + ([failed] if failed else [])
        states.update({cid: "cached" for cid in recorder.cached if states[cid] == "complete"})
        states.update(dict.fromkeys(unfinished,
                                    "interrupted" if status == md.INTERRUPTED else "failed"))
        for c in self.pipeline.components:
            entry: dict[str, Any] = {"state": states[c.id], "kfp_task": task_of[c.id],
                                     **recorder.summary(c.id)}
            if c.id in outputs:
                entry["outputs"] = {n: [a.uri] for n, a in outputs[c.id].items()}
            doc["components"][c.id] = entry
        doc.update(status=status.lower(), error=error, results=results, end_time=_now())
        _write_json(self.run_json, doc)
        recorder.finish(error or "the run ended before this step finished", interrupted=status == md.INTERRUPTED)
        self.store.finish_run(self.run_id, status, error, results)
        return outputs, results


def _run_compiled(yaml_path: str, kfp_root: str, resume_root: str, tail: "_Tail"
                  ) -> RuntimeError | None:
    """Runs the compiled pipeline with kfp.local; returns its error if a step failed.
    kfp.local's global configuration is restored afterwards."""
    from kfp import components as kfp_components
    from kfp import local
    from kfp.local import config as local_config

    previous = local_config.LocalExecutionConfig.instance
    try:
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=kfp_root,
                   raise_on_error=True)
        compiled = kfp_components.load_component_from_file(yaml_path)
        with _import_path_for_steps(), warnings.catch_warnings(), \
                contextlib.redirect_stdout(tail):
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            compiled(**{RESUME_ROOT_PARAM: resume_root})
    except RuntimeError as e:
        return e
    finally:
        local_config.LocalExecutionConfig.instance = previous
    return None


def _failed_component(pipeline: Pipeline, error: Exception, task_of: dict[str, str],
                      recorder: "_Recorder") -> str | None:
    """The component whose step failed, from kfp.local's error or the step still running."""
    message = _ANSI.sub("", str(error))
    match = re.search(r"Inner task failed: '([^']+)'", message) or re.search(
        r"Task '([^']+)' finished with status FAILURE", message)
    by_task = {t: cid for cid, t in task_of.items()}
    if match and match.group(1) in by_task:
        return by_task[match.group(1)]
    return next(iter(recorder.running), None)


def _cache_keys(pipeline: Pipeline) -> dict[str, str]:
    """Each component's cache key as its step computes it from its inputs' fingerprints (and
    as the local runner would): it names the step's resume directory."""
    keys: dict[str, str] = {}
    for c in pipeline.components:
        inputs = {name: [Artifact(ch.type_name, "", fingerprint=output_fingerprint(
            keys[ch.producer_id], ch.output_name)) for ch in channels]
            for name, channels in c.inputs.items()}
        keys[c.id] = compute_cache_key(c, inputs)
    return keys


class _Recorder:
    """Records a kfp.local run's steps in the metadata store as they run, from what kfp.local
    itself logs ("Executing task 'x'" when a step starts, "Task 'x' finished with status
    SUCCESS" when it succeeded): one execution per step, with its start and end times, state,
    inputs and output artifacts (so lineage works as for local runs). A step that reused an
    earlier run's outputs (it says so: ``[<component_id>] cached: ...``) is recorded CACHED,
    from the latest COMPLETE execution with its key. Cache keys are stored as
    ``kfp-local:<key>`` so that the local runner's cache lookups never match them: its outputs
    live elsewhere."""

    _START = re.compile(r"^[0-9:.]+ - INFO - Executing task '([^']+)'$")
    _SUCCESS = re.compile(r"^[0-9:.]+ - INFO - Task '([^']+)' finished with status SUCCESS$")
    _CACHED = re.compile(r"^\s*\[([^\]]+)\] " + re.escape(kfp_entry.CACHED_MARK) + " ")

    def __init__(self, store: md.MetadataStore, run_id: str, pipeline: Pipeline,
                 kfp_root: str, task_of: dict[str, str]) -> None:
        self.store, self.run_id, self.pipeline, self.kfp_root = store, run_id, pipeline, kfp_root
        self.component_of = {task: cid for cid, task in task_of.items()}
        self.task_of, self.keys = task_of, _cache_keys(pipeline)
        self.running: dict[str, int] = {}              # component id -> execution id
        self.cached: set[str] = set()                  # steps that reused an earlier run
        self.executions: dict[str, int] = {}
        self.durations: dict[str, float] = {}
        self._started: dict[str, float] = {}
        self.produced: dict[tuple[str, str], list[Artifact]] = {}

    def line(self, text: str) -> None:
        """Called with every line kfp.local prints (step output is indented, so only a step's
        own cache notice matches it)."""
        text = _ANSI.sub("", text).rstrip()
        cached = self._CACHED.match(text)
        if cached and cached.group(1) in self.running:
            self.cached.add(cached.group(1))
        for pattern, action in ((self._START, self._start), (self._SUCCESS, self._complete)):
            match = pattern.match(text)
            if match and match.group(1) in self.component_of:
                action(self.component_of[match.group(1)])

    def summary(self, cid: str) -> dict[str, Any]:
        """run.json fields of a step: its execution id and duration, when it started."""
        out: dict[str, Any] = {}
        if cid in self.executions:
            out["execution_id"] = self.executions[cid]
        if cid in self.durations:
            out["duration_s"] = round(self.durations[cid], 3)
        return out

    def finish(self, error: str, interrupted: bool = False) -> None:
        """Steps still running when the run ended failed, or were stopped (`interrupted`: Ctrl-C
        or SIGTERM, recorded as such and not as failures)."""
        end = self.store.interrupt_execution if interrupted else self.store.fail_execution
        for cid, eid in self.running.items():
            self.durations[cid] = time.monotonic() - self._started[cid]
            end(eid, error)
        self.running.clear()

    def _start(self, cid: str) -> None:
        component = self.pipeline.component(cid)
        inputs = {name: [a for ch in channels
                         for a in self.produced.get((ch.producer_id, ch.output_name), [])]
                  for name, channels in component.inputs.items()}
        eid = self.store.start_execution(self.run_id, cid, component.type_name,
                                         "kfp-local:" + self.keys[cid],
                                         component.exec_properties, inputs)
        self.running[cid] = self.executions[cid] = eid
        self._started[cid] = time.monotonic()

    def _complete(self, cid: str) -> None:
        eid = self.running.pop(cid, None)
        read = _read_outputs(self.pipeline.component(cid), _task_root(self.kfp_root,
                                                                      self.task_of[cid]))
        if eid is None or read is None:
            return
        outputs, results = read
        listed = {name: [a] for name, a in outputs.items()}
        reused = cid in self.cached
        source = next(iter(self.store.find_complete("kfp-local:" + self.keys[cid])), None) \
            if reused else None
        self.store.complete_execution(eid, listed, results, reused=reused,
                                      cached_from=source.id if source else None)
        self.durations[cid] = time.monotonic() - self._started[cid]
        for name, arts in listed.items():
            self.produced[(cid, name)] = arts


def _task_directories(yaml_path: str) -> dict[str, str]:
    """{component_id: directory kfp.local gives its task} from the compiled pipeline: the
    task's display name is our id; the directory is its component's name without 'comp-'."""
    import yaml

    with open(yaml_path) as f:
        tasks = yaml.safe_load(f)["root"]["dag"]["tasks"]
    return {t["taskInfo"]["name"]: t["componentRef"]["name"][len("comp-"):]
            for t in tasks.values()}


def _task_root(kfp_root: str, task: str) -> str | None:
    """The directory of a task in the (only) pipeline run kfp.local made under `kfp_root`."""
    runs = [os.path.join(kfp_root, d) for d in sorted(os.listdir(kfp_root))
            if os.path.isdir(os.path.join(kfp_root, d))]
    return os.path.join(runs[-1], task) if runs else None


def _read_outputs(component: Component, task_root: str | None
                  ) -> tuple[dict[str, Artifact], dict[str, str]] | None:
    """A finished task's output artifacts (properties and fingerprints as the step wrote
    them) and the run results they carry, from its executor_output.json; None if unfinished."""
    executor_output = os.path.join(task_root, "executor_output.json") if task_root else ""
    if not os.path.isfile(executor_output):
        return None
    with open(executor_output) as f:
        written = json.load(f).get("artifacts", {})
    outputs, results = {}, {}
    for name, ospec in component.SPEC_CLASS.OUTPUTS.items():
        kfp_art = written[name]["artifacts"][0]
        meta = kfp_art.get("metadata", {})
        outputs[name] = Artifact(meta.get(kfp_entry.TYPE_KEY, ospec.type_name), kfp_art["uri"],
                                 json.loads(meta.get(kfp_entry.PROPERTIES_KEY, "{}")),
                                 fingerprint=meta.get(kfp_entry.FINGERPRINT_KEY))
        results.update(json.loads(meta.get(kfp_entry.RESULTS_KEY, "{}")))
    return outputs, results


def _collect(pipeline: Pipeline, kfp_root: str, task_of: dict[str, str]
             ) -> tuple[dict[str, dict[str, Artifact]], dict[str, str], dict[str, str]]:
    """Every task's outputs, the run results and each component's state (complete, started:
    its directory exists but it did not finish, not run)."""
    outputs: dict[str, dict[str, Artifact]] = {}
    results: dict[str, str] = {}
    states: dict[str, str] = {}
    for c in pipeline.components:
        task_root = _task_root(kfp_root, task_of[c.id])
        read = _read_outputs(c, task_root)
        if read is None:
            states[c.id] = "started" if task_root and os.path.isdir(task_root) else "not run"
            continue
        outputs[c.id], produced = read
        for rname, path in produced.items():
            if rname in results and results[rname] != path:
                logging.warning("result %r from %r replaces %s", rname, c.id, results[rname])
            results[rname] = path
        states[c.id] = "complete"
    return outputs, results, states


class _Tail(io.TextIOBase):
    """Relays kfp.local's output to `stream`, remembers the last lines (to name a step's error)
    and hands each line to `on_line`.

    With a `log` file every character goes there too, and only the lines `keep` accepts (whole
    lines) reach `stream`: the terminal is spared kfp.local's bookkeeping, the file keeps all.
    """

    _EXCEPTION = re.compile(r"^\s*([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)(: .*)?)$")

    def __init__(self, stream: Any, keep: int = 200,
                 on_line: Callable[[str], None] | None = None,
                 log: IO[str] | None = None, show: Callable[[str], bool] | None = None) -> None:
        self.stream, self.lines, self._partial = stream, collections.deque(maxlen=keep), ""
        self.on_line, self.log, self.show = on_line, log, show

    def write(self, text: str) -> int:
        if self.show is None:
            self.stream.write(text)
        if self.log is not None:
            self.log.write(text)
        self._partial += text
        *done, self._partial = self._partial.split("\n")
        self.lines.extend(done)
        for line in done:
            if self.on_line is not None:
                self.on_line(line)
            if self.show is not None and self.show(line):
                self.stream.write((line if self._colours() else _ANSI.sub("", line)) + "\n")
        return len(text)

    def _colours(self) -> bool:
        """kfp.local colours its task lines; a file or pipe gets them plain."""
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def flush(self) -> None:
        self.stream.flush()
        if self.log is not None:
            self.log.flush()

    def last_exception(self) -> str | None:
        """The last 'SomeError: message' line printed, if any."""
        for line in reversed([*self.lines, self._partial]):
            match = self._EXCEPTION.match(_ANSI.sub("", line))
            if match:
                return match.group(1)
        return None


class _KfpOutputFilter:
    """Which lines of a kfp.local run the terminal shows: the steps' own output, kfp.local's task
    start and end lines and every warning or error; not the executor's INFO log (each step's
    whole input as JSON, module loading, Beam's type-hint notes), the outputs kfp.local lists
    after each task (the run record has them), or TensorFlow's native start-up notes."""

    _EXECUTOR_INFO = re.compile(r"^\s*\[KFP Executor [^\]]*\b(INFO|DEBUG)\]:")
    _TASK_OUTPUTS = re.compile(r" - INFO - Task '[^']*' outputs:\s*$")

    def __init__(self) -> None:
        self._block_end: str | None = None   # the line that closes a skipped JSON block
        self._in_outputs = False

    def __call__(self, line: str) -> bool:
        plain = _ANSI.sub("", line).rstrip()
        if self._block_end is not None:
            if plain == self._block_end:
                self._block_end = None
            return False
        if self._in_outputs:
            if plain[:1].isspace():
                return False
            self._in_outputs = False
        if plain.endswith("Got executor_input:"):
            self._block_end = plain[:len(plain) - len(plain.lstrip())] + "}"
            return False
        if self._TASK_OUTPUTS.search(plain):
            self._in_outputs = True
            return False
        return not (self._EXECUTOR_INFO.match(plain) or "apitools not found" in plain
                    or is_startup_noise(plain))


class _import_path_for_steps:
    """Puts this process's own import directories (project, tests, cwd) on PYTHONPATH, so
    step subprocesses import the same executor modules; restores it afterwards."""

    def __enter__(self) -> None:
        self._saved = os.environ.get("PYTHONPATH")
        prefixes = {os.path.abspath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
        project = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        paths = [project]
        for p in sys.path:
            p = os.path.abspath(p or os.getcwd())
            if os.path.isdir(p) and not any(p == q or p.startswith(q + os.sep)
                                            for q in prefixes):
                paths.append(p)
        if self._saved:
            paths.extend(self._saved.split(os.pathsep))
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))

    def __exit__(self, *exc: Any) -> None:
        if self._saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = self._saved


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _write_json(path: str | None, doc: dict[str, Any]) -> None:
    if path is None:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
    os.replace(tmp, path)


__all__ = [
    "KFP_ARTIFACT_TYPES", "KfpLocalRunResult", "KubeflowError", "RESOURCE_KEYS",
    "ResourceSpecError", "build_kfp_pipeline", "compile_pipeline", "cpu_quantity", "kfp_name",
    "kfp_type_name", "memory_quantity", "run_kfp_local", "validate_resources",
]
