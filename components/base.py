"""The component model: artifacts, specs, executors and component instances.

A component is declared in two halves, as in TFX:

* a `ComponentSpec` subclass *declares* typed inputs, typed outputs and execution parameters;
* a `BaseExecutor` subclass *does* the work in `Do(input_dict, output_dict, exec_properties)`.

A `Component` binds the two with concrete inputs (channels from upstream components' outputs),
parameter values and an id. Executors talk to the world only through artifact URIs (directories)
and JSON-serialisable execution properties, so the same executor runs in-process under the local
runner or wrapped as one Kubeflow component per step.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import re
import sys
import tempfile
import time
from typing import Any, Callable, Mapping

from absl import logging

# --------------------------------------------------------------------------------------------
# Artifact types and artifacts
# --------------------------------------------------------------------------------------------

#: Declared artifact type names and what an artifact of that type holds (its URI is a directory).
ARTIFACT_TYPES: dict[str, str] = {
    "Examples": "TFRecord shards per split plus a schema/statistics summary.",
    "ExampleStatistics": "Counts per class and split, input shape.",
    "Candidates": "Initial activation functions, one per line: expression, fingerprint, origin.",
    "SearchResults": "Every search trial, the oracle history and the top-k functions.",
    "TrainedModels": "Models trained at the full budget, several seeds per function.",
    "Evaluation": "Comparison of discovered functions with the baselines, with a blessing.",
    "ExportedActivation": "The chosen activation function in a loadable form.",
    "Report": "Human-readable report (HTML/Markdown) with plots.",
    "TensorBoardLogs": "TensorBoard event files (scalars, HParams dashboard).",
}

_ID_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ComponentDefinitionError(ValueError):
    """A spec, a component's wiring or its parameters are invalid."""


class ParameterError(ComponentDefinitionError):
    """An execution parameter is unknown, missing, of the wrong type or not an allowed value."""


def register_artifact_type(name: str, description: str) -> None:
    """Declares an artifact type name so specs may use it (idempotent for the same name)."""
    if not _NAME_PATTERN.match(name):
        raise ComponentDefinitionError(f"artifact type name {name!r} must be an identifier")
    ARTIFACT_TYPES.setdefault(name, description)


def _check_json(value: Any, what: str, error: type[Exception] = ComponentDefinitionError) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise error(f"{what} must be JSON-serialisable (str, int, float, bool, None, "
                    f"list, dict with str keys): {e}") from None


@dataclasses.dataclass
class Artifact:
    """A typed piece of data living in a directory `uri`, with JSON-able `properties`.

    `id` is assigned by the metadata store when the artifact is published; `fingerprint`
    identifies its content for caching (set by the orchestrator).
    """

    type_name: str
    uri: str
    properties: dict[str, Any] = dataclasses.field(default_factory=dict)
    id: int | None = None
    fingerprint: str | None = None

    def path(self, *parts: str) -> str:
        """A path inside the artifact's directory."""
        return os.path.join(self.uri, *parts)

    def to_dict(self) -> dict[str, Any]:
        _check_json(self.properties, f"properties of artifact {self.uri!r}")
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Artifact":
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Artifact":
        return cls.from_dict(json.loads(text))


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------

class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
_PARAM_TYPES = (str, int, float, bool, list, dict)


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """A typed input; `optional` inputs may be left unwired."""

    type_name: str
    optional: bool = False
    doc: str = ""


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    """A typed output. `publish_as` names a run result (in run.json) pointing at its URI."""

    type_name: str
    publish_as: str | None = None
    doc: str = ""


@dataclasses.dataclass(frozen=True)
class Parameter:
    """An execution parameter: JSON type, default (REQUIRED if none), allowed values.

    A default of None makes None an accepted value. `in_cache_key=False` marks a parameter that
    says how the work runs, not what it computes (parallelism, runner options): changing it
    neither invalidates cached results nor restarts interrupted work from scratch.
    `in_resume_key=False` marks one that changes the result but not the work an interrupted
    execution has done so far (a search's `max_trials`, the final runs' `seeds`): a finished
    execution is not reused under a new value, but an unfinished one continues under it.
    """

    type: type
    default: Any = REQUIRED
    choices: tuple | None = None
    doc: str = ""
    in_cache_key: bool = True
    in_resume_key: bool = True

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def validate(self, name: str, value: Any, owner: str) -> Any:
        """Returns the value (ints widened to float for float parameters) or raises."""
        where = f"{owner}: parameter {name!r}"
        if value is None and self.default is None:
            return None
        ok = isinstance(value, self.type) and not (self.type is int and isinstance(value, bool))
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise ParameterError(f"{where} must be of type {self.type.__name__}, "
                                 f"got {type(value).__name__} {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ParameterError(f"{where} must be one of {list(self.choices)}, got {value!r}")
        _check_json(value, where, ParameterError)
        return value


class ComponentSpec:
    """Declares a component's interface. Subclasses set INPUTS, OUTPUTS and PARAMETERS."""

    INPUTS: dict[str, InputSpec] = {}
    OUTPUTS: dict[str, OutputSpec] = {}
    PARAMETERS: dict[str, Parameter] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        owner, seen = cls.__name__, set()
        for group, kind in ((cls.INPUTS, InputSpec), (cls.OUTPUTS, OutputSpec),
                            (cls.PARAMETERS, Parameter)):
            for name, entry in group.items():
                if not _NAME_PATTERN.match(name) or name == "component_id":
                    raise ComponentDefinitionError(
                        f"{owner}: {name!r} is not a valid name (identifier, not 'component_id')")
                if name in seen:
                    raise ComponentDefinitionError(f"{owner}: name {name!r} declared twice")
                seen.add(name)
                if not isinstance(entry, kind):
                    raise ComponentDefinitionError(
                        f"{owner}: {name!r} must be declared with {kind.__name__}")
                if kind is not Parameter and entry.type_name not in ARTIFACT_TYPES:
                    raise ComponentDefinitionError(
                        f"{owner}: {name!r} has unknown artifact type {entry.type_name!r}; "
                        f"declared types: {sorted(ARTIFACT_TYPES)}")
        for name, param in cls.PARAMETERS.items():
            if param.type not in _PARAM_TYPES:
                raise ComponentDefinitionError(
                    f"{owner}: parameter {name!r} has type {param.type!r}; allowed: "
                    f"{[t.__name__ for t in _PARAM_TYPES]}")
            if param.default is not REQUIRED:
                param.validate(name, param.default, owner)

    @classmethod
    def validate_parameters(cls, values: Mapping[str, Any], owner: str = "") -> dict[str, Any]:
        """Checks names, types and choices; fills defaults. Returns the full parameter dict."""
        owner = owner or cls.__name__
        unknown = sorted(set(values) - set(cls.PARAMETERS))
        if unknown:
            raise ParameterError(f"{owner}: unknown parameter(s) {unknown}; allowed: "
                                 f"{sorted(cls.PARAMETERS)}")
        result = {}
        for name, param in cls.PARAMETERS.items():
            if name in values:
                result[name] = param.validate(name, values[name], owner)
            elif param.required:
                raise ParameterError(f"{owner}: required parameter {name!r} "
                                     f"({param.type.__name__}) is missing")
            else:
                result[name] = copy.deepcopy(param.default)
        return result


# --------------------------------------------------------------------------------------------
# Executors
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ProgressEvent:
    """A progress report from a running component; `eta_s` is estimated from done/total."""

    component_id: str
    message: str
    done: int | None = None
    total: int | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None

    def __str__(self) -> str:
        text = f"[{self.component_id}] {self.message}"
        if self.total:
            text += f" ({self.done}/{self.total}"
            text += f", ~{self.eta_s:.0f} s left)" if self.eta_s is not None else ")"
        return text


class ExecutorContext:
    """What an orchestrator lends an executor besides its artifacts.

    * `resume_dir`: a directory that survives an interrupted or failed execution and is
      stable for the same cache key, so long work (e.g. a search) can continue where it stopped.
      It is removed once the execution succeeds.
    * `progress(message, done=, total=, already_done=)`: progress lines (with an ETA when
      done/total given; `already_done=True` says an earlier attempt finished `done` units, so the
      ETA follows this attempt's pace only).
    * `register_result(name, path)`: publishes a path as a run result (run.json "results").

    Constructed without arguments (an executor run by hand) it uses a temporary resume
    directory and logs progress with absl.
    """

    def __init__(self, *, component_id: str = "", run_id: str = "",
                 execution_id: int | None = None, resume_dir: str | None = None,
                 on_progress: Callable[[ProgressEvent], None] | None = None) -> None:
        self.component_id = component_id
        self.run_id = run_id
        self.execution_id = execution_id
        self._resume_dir = resume_dir
        self._on_progress = on_progress
        self._start = time.monotonic()
        self._done_before = 0  # units an earlier attempt finished (resume): not this attempt's pace
        self.results: dict[str, str] = {}

    @property
    def resume_dir(self) -> str:
        if self._resume_dir is None:
            self._resume_dir = tempfile.mkdtemp(prefix=f"resume-{self.component_id or 'x'}-")
        os.makedirs(self._resume_dir, exist_ok=True)
        return self._resume_dir

    def progress(self, message: str, *, done: int | None = None,
                 total: int | None = None, already_done: bool = False) -> None:
        elapsed = time.monotonic() - self._start
        eta = None
        if already_done:
            self._done_before = done or 0
        elif done and total and done > self._done_before:
            eta = elapsed * (total - done) / (done - self._done_before)
        event = ProgressEvent(self.component_id, message, done, total, elapsed, eta)
        if self._on_progress is not None:
            self._on_progress(event)
        else:
            logging.info("%s", event)

    def register_result(self, name: str, path: str) -> None:
        if not _NAME_PATTERN.match(name):
            raise ValueError(f"result name {name!r} must be an identifier (e.g. 'report')")
        self.results[name] = os.path.abspath(os.fspath(path))


class BaseExecutor:
    """Does a component's work. Subclasses implement `Do`.

    `VERSION`: bump it to invalidate cached results when behaviour changes; if None, the
    cache key uses a hash of the source of the executor's module and of every project module it
    imports (`project_modules`).
    """

    VERSION: str | None = None
    RUNS: tuple[str, ...] = ()
    """Modules the executor runs without importing them (jobs named by a "module:function"
    string for a fan-out): part of its code version like its imports."""

    def __init__(self, context: ExecutorContext | None = None) -> None:
        self.context = context or ExecutorContext()

    def Do(self, input_dict: dict[str, list[Artifact]], output_dict: dict[str, list[Artifact]],
           exec_properties: dict[str, Any]) -> None:  # noqa: N802 - TFX name
        """Reads inputs, writes each output into its (existing, empty) directory `uri`."""
        raise NotImplementedError

    @classmethod
    def external_fingerprint(cls, exec_properties: Mapping[str, Any]) -> str | None:
        """Fingerprint of data read from outside the pipeline (e.g. a source folder), so the
        cache notices when it changes. None: depends only on parameters and inputs."""
        return None

    @classmethod
    def code_version(cls) -> str:
        if cls.VERSION is not None:
            return f"version:{cls.VERSION}"
        roots = [klass.__module__ for klass in cls.__mro__ if klass not in (BaseExecutor, object)]
        modules = sorted({module for root in [*roots, *cls.RUNS] for module in project_modules(root)})
        digest = hashlib.sha256()
        for module in modules:
            digest.update(f"{module}\0{_module_source(module)}\0".encode())
        return "source:" + digest.hexdigest()


PROJECT_PACKAGES = ("activations", "trainer", "components", "pipeline")
"""Packages whose code decides what an executor computes: all of it is in the code version."""


@functools.lru_cache(maxsize=None)
def _module_source(module: str) -> str:
    path = _module_file(module)
    if path is None:
        return ""
    with open(path, encoding="utf-8") as f:
        return f.read()


def _module_file(module: str) -> str | None:
    """The source file of a project module, found without importing anything: `find_spec` of a
    submodule imports its package, and `activations` imports Keras and TensorFlow (5 s), which a
    step whose outputs come from the step cache otherwise never needs."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)  # of a top-level name: imports nothing
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    if not rest:
        return spec.origin if os.path.isfile(spec.origin) else None
    for directory in spec.submodule_search_locations or []:
        path = os.path.join(directory, *rest)
        for candidate in (path + ".py", os.path.join(path, "__init__.py")):
            if os.path.isfile(candidate):
                return candidate
    return None


@functools.lru_cache(maxsize=None)
def project_modules(module: str) -> frozenset[str]:
    """`module` and every module of `PROJECT_PACKAGES` it imports, directly or not (imports inside
    functions included). Hashing all their sources makes the cache notice a change anywhere in
    the code a step runs (a helper function, the statistics, the trainer), not only in the
    executor class."""
    seen, queue = set(), [module]
    while queue:
        name = queue.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            tree = ast.parse(_module_source(name))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                candidates = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for candidate in candidates:  # `from module import constant` names no file
                if candidate.split(".")[0] in PROJECT_PACKAGES and candidate not in seen and _module_file(candidate):
                    queue.append(candidate)
    return frozenset(seen)


# --------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class Channel:
    """A reference to one output of a producing component, used to wire a downstream input."""

    producer: "Component"
    output_name: str
    type_name: str

    @property
    def producer_id(self) -> str:
        return self.producer.id

    def __repr__(self) -> str:
        return f"Channel({self.producer.id}.{self.output_name}: {self.type_name})"


class _Outputs(Mapping[str, Channel]):
    def __init__(self, component: "Component") -> None:
        self._component = component
        self._channels = {name: Channel(component, name, spec.type_name)
                          for name, spec in component.SPEC_CLASS.OUTPUTS.items()}

    def __getitem__(self, name: str) -> Channel:
        if name not in self._channels:
            raise ComponentDefinitionError(
                f"component {self._component.id!r} has no output {name!r}; outputs: "
                f"{sorted(self._channels)}")
        return self._channels[name]

    def __iter__(self):
        return iter(self._channels)

    def __len__(self) -> int:
        return len(self._channels)


def _snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


class Component:
    """A spec + an executor, wired to upstream outputs and given parameter values.

    Subclasses set SPEC_CLASS and EXECUTOR_CLASS; keyword arguments are split by the spec into
    inputs (Channels, or lists of Channels to fan in) and parameters::

        trainer = Trainer(examples=example_gen.outputs["examples"], epochs=3)
    """

    SPEC_CLASS: type[ComponentSpec] = ComponentSpec
    EXECUTOR_CLASS: type[BaseExecutor] = BaseExecutor

    def __init__(self, *, component_id: str | None = None, **kwargs: Any) -> None:
        self.id = component_id or _snake_case(type(self).__name__)
        if not _ID_PATTERN.match(self.id):
            raise ComponentDefinitionError(
                f"component id {self.id!r} must start with a letter and contain only letters, "
                f"digits, '_', '-', '.'")
        spec = self.SPEC_CLASS
        unknown = sorted(set(kwargs) - set(spec.INPUTS) - set(spec.PARAMETERS))
        if unknown:
            raise ParameterError(
                f"component {self.id!r}: unknown argument(s) {unknown}; inputs: "
                f"{sorted(spec.INPUTS)}, parameters: {sorted(spec.PARAMETERS)}")
        self.inputs: dict[str, list[Channel]] = {}
        for name, value in kwargs.items():
            if name in spec.INPUTS:
                self.inputs[name] = list(value) if isinstance(value, (list, tuple)) else [value]
        params = {k: v for k, v in kwargs.items() if k in spec.PARAMETERS}
        self.exec_properties = spec.validate_parameters(params, f"component {self.id!r}")
        self.outputs: Mapping[str, Channel] = _Outputs(self)
        self.validate_inputs()

    def validate_inputs(self) -> None:
        """Checks that every input is a Channel of the declared type and required ones are set."""
        spec = self.SPEC_CLASS
        for name, channels in self.inputs.items():
            if name not in spec.INPUTS:
                raise ComponentDefinitionError(
                    f"component {self.id!r}: unknown input {name!r}; inputs: {sorted(spec.INPUTS)}")
            expected = spec.INPUTS[name].type_name
            for channel in channels:
                if not isinstance(channel, Channel):
                    raise ComponentDefinitionError(
                        f"component {self.id!r}: input {name!r} must be wired to an upstream "
                        f"output (e.g. other.outputs['...']), got {type(channel).__name__}")
                if channel.type_name != expected:
                    raise ComponentDefinitionError(
                        f"component {self.id!r}: input {name!r} expects {expected}, but "
                        f"{channel!r} is {channel.type_name}")
        for name, ispec in spec.INPUTS.items():
            if not ispec.optional and not self.inputs.get(name):
                raise ComponentDefinitionError(
                    f"component {self.id!r}: required input {name!r} ({ispec.type_name}) "
                    f"is not wired")

    @property
    def upstream_ids(self) -> list[str]:
        """Ids of the components this one reads from, in wiring order, without repeats."""
        return list(dict.fromkeys(c.producer_id for chans in self.inputs.values() for c in chans))

    @property
    def type_name(self) -> str:
        return f"{type(self).__module__}.{type(self).__qualname__}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r})"


def executor_path(executor_class: type[BaseExecutor]) -> str:
    """The importable dotted path of an executor class (used by runners and compilers)."""
    return f"{executor_class.__module__}.{executor_class.__qualname__}"


_CTRL_C = {"seen": False, "pending": False, "redelivered": 0, "terminated": False}
_REDELIVER_AFTER_S = 0.05  # long enough for the finaliser or gc callback that swallowed it to end
_MAX_REDELIVERIES = 20  # then `stop_if_interrupted` alone stops the run at its next job or step


class Terminated(KeyboardInterrupt):
    """SIGTERM (`docker stop`, a Kubernetes eviction, a batch system's time limit, `timeout`),
    raised as a KeyboardInterrupt so that everything that stops cleanly on Ctrl-C (records the
    run as interrupted, stops the workers, keeps the resume state) does so on SIGTERM too."""

    def __init__(self, message: str = "terminated (SIGTERM)") -> None:
        super().__init__(message)


def remember_ctrl_c() -> None:
    """Makes Ctrl-C raise KeyboardInterrupt as Python's own handler does, and SIGTERM raise
    `Terminated` (a KeyboardInterrupt) instead of ending the process on the spot; remembers
    either, and delivers it again when it was swallowed.

    Without a handler SIGTERM kills the process at once: a run stopped by `docker stop`, an
    eviction or a job's time limit stayed "running" in run.json and the metadata, without a word.
    A KeyboardInterrupt raised while Python runs a finaliser (`__del__`) or a garbage-collector
    callback, both common inside TensorFlow and JAX, cannot propagate: Python prints
    "Exception ignored in ..." with a traceback and carries on, so a run went on to exit 0 after
    Ctrl-C. The unraisable hook installed here keeps quiet about it and sends the signal again a
    moment later, when the main thread is back in ordinary code; `stop_if_interrupted` also stops
    the run at the next job or step whatever happens. Once SIGTERM came, every later interrupt
    is a `Terminated` (a redelivery may come as SIGINT, from `activations.interrupts`). For a
    program's main thread (the CLI); a library call never changes signal handlers.
    (`activations.interrupts` does the same for the library's tuner, without a handler; the CLI
    calls this before anything imports TensorFlow, which importing `activations` would.)
    """
    import signal
    import threading

    def handler(signum: int, frame: Any) -> None:
        _CTRL_C.update(seen=True, pending=False)
        if signum == signal.SIGTERM:
            _CTRL_C["terminated"] = True
        if _CTRL_C["terminated"]:
            raise Terminated()
        signal.default_int_handler(signum, frame)

    def redeliver() -> None:
        if _CTRL_C["pending"]:  # not once `stop_if_interrupted` has raised it meanwhile
            os.kill(os.getpid(), signal.SIGTERM if _CTRL_C["terminated"] else signal.SIGINT)

    previous_hook = getattr(sys.unraisablehook, "actsearch_previous", sys.unraisablehook)

    def unraisable_hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous_hook(unraisable)
        elif _CTRL_C["redelivered"] < _MAX_REDELIVERIES:
            # Not from here: the handler would raise inside this hook, which swallows it again.
            _CTRL_C.update(pending=True, redelivered=_CTRL_C["redelivered"] + 1)
            timer = threading.Timer(_REDELIVER_AFTER_S, redeliver)
            timer.daemon = True
            timer.start()

    unraisable_hook.actsearch_previous = previous_hook  # type: ignore[attr-defined]
    _CTRL_C.update(seen=False, pending=False, redelivered=0, terminated=False)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    sys.unraisablehook = unraisable_hook


def stop_if_interrupted(what: str) -> None:
    """Raises KeyboardInterrupt (`Terminated` after SIGTERM) when Ctrl-C was pressed or SIGTERM
    came (see `remember_ctrl_c`), even if the exception it raised was swallowed on the way."""
    if _CTRL_C["seen"]:
        _CTRL_C["pending"] = False
        if _CTRL_C["terminated"]:
            raise Terminated(f"{what} was stopped by SIGTERM")
        raise KeyboardInterrupt(f"{what} was stopped")


def stopped_by(error: BaseException | None = None) -> str:
    """What stopped the process, for messages: "SIGTERM" when a `Terminated` is in `error`'s
    chain or SIGTERM came (a wrapper may have re-raised it as a plain KeyboardInterrupt),
    otherwise "Ctrl-C"."""
    seen: set[int] = set()
    current = error
    while current is not None and id(current) not in seen:
        if isinstance(current, Terminated):
            return "SIGTERM"
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return "SIGTERM" if _CTRL_C["terminated"] else "Ctrl-C"


def interrupted_by_user(error: BaseException) -> bool:
    """True when `error` is a KeyboardInterrupt or was caused by one.

    Ctrl-C that lands in Python code TensorFlow calls back (a Keras callback inside `fit`, a
    `tf.data` function) comes out of TensorFlow as a `SystemError` ("... returned a result with
    an exception set") whose cause is the KeyboardInterrupt. Taken for an ordinary failure, it
    would record a trial as failed and let the run go on, instead of stopping it to resume later.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


__all__ = [
    "ARTIFACT_TYPES", "Artifact", "BaseExecutor", "Channel", "Component", "ComponentSpec",
    "ComponentDefinitionError", "ExecutorContext", "InputSpec", "OutputSpec", "Parameter",
    "ParameterError", "ProgressEvent", "REQUIRED", "executor_path", "interrupted_by_user",
    "Terminated", "register_artifact_type", "remember_ctrl_c", "stop_if_interrupted", "stopped_by",
]
