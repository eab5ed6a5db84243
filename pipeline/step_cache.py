"""A Kubeflow step's cross-run cache: a finished step's outputs, found again by its cache key.

kfp.local caches nothing, and a cluster's own cache does not see a step whose earlier run it
did not record (another pipeline version, a cache that was cleared). Without a cache of ours, a
pipeline run again after a failure or Ctrl-C would repeat every finished step, the whole search
among them. So a step that succeeds leaves a small record in its resume root (see
`pipeline.kfp_entry`)::

    <resume_root>/<component_id>/.step-cache/<cache_key>.json

naming the directory of each output it wrote, with the output's properties and a summary of its
files (their relative paths and sizes), and the run results, relative to the outputs that hold
them. A later step with the same key (the local runner's key: component, executor code,
parameters, input fingerprints) fills its own output directories from those (hard links where
the file system allows, copies elsewhere) instead of running the executor, provided they are
still there with the same files; otherwise it runs. After a hit the record names the new copy,
so the cache follows the latest run and older run directories can be deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Mapping

from components.base import Artifact

CACHE_DIR = ".step-cache"
_VERSION = 1


def entry_path(resume_root: str, component_id: str, key: str) -> str:
    """Where the step with cache key `key` records its finished outputs."""
    return os.path.join(resume_root, component_id, CACHE_DIR, f"{key}.json")


def remember(path: str, outputs: Mapping[str, Artifact], results: Mapping[str, str]) -> bool:
    """Records `outputs` (written and final) and the step's run `results` under `path`.

    Best effort: a record that cannot be written (a full disk, a read-only resume root) costs
    later runs a cache hit, not this step its result; returns whether it was written.
    """
    record = {
        "version": _VERSION,
        "outputs": {name: {"uri": os.path.abspath(art.uri), "properties": art.properties,
                           "files": _files(art.uri)} for name, art in outputs.items()},
        "results": {rname: _relative(p, outputs) for rname, p in results.items()},
    }
    return _save(path, record)


def _save(path: str, record: Mapping[str, Any]) -> bool:
    """Writes `record` atomically (readers see the old record or the new one, never half of
    one); a failure is reported, not raised."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
        with os.fdopen(handle, "w") as f:
            json.dump(record, f, sort_keys=True)
        os.replace(tmp, path)
    except OSError as error:
        print(f"warning: the step's outputs are not recorded for later runs ({path}): {error}",
              flush=True)
        return False
    return True


def restore(path: str, outputs: Mapping[str, Artifact]) -> tuple[dict[str, str], str] | None:
    """Fills `outputs` (empty directories) from the record at `path` and sets their properties.

    Returns (the run results, now pointing into `outputs`; what was reused, for the log), or None
    when there is no usable record: none, another set of outputs, or an output directory that
    is gone or whose files changed. A copy that fails half-way leaves `outputs` empty again.
    """
    record = _read(path)
    if record is None or set(record["outputs"]) != set(outputs):
        return None
    sources = record["outputs"]
    for name, source in sources.items():
        if os.path.abspath(outputs[name].uri) == source["uri"] or \
                _files(source["uri"]) != source["files"]:
            return None
    try:
        for name, art in outputs.items():
            shutil.copytree(sources[name]["uri"], art.uri, dirs_exist_ok=True,
                            copy_function=_link_or_copy)
    except OSError:
        for art in outputs.values():
            shutil.rmtree(art.uri, ignore_errors=True)
            os.makedirs(art.uri, exist_ok=True)
        return None
    for name, art in outputs.items():
        art.properties = dict(sources[name]["properties"])
    results = {rname: _absolute(where, outputs) for rname, where in record["results"].items()}
    reused = ", ".join(sorted({os.path.dirname(s["uri"]) for s in sources.values()}))
    for name, art in outputs.items():      # the same files and results, in the new copy
        sources[name]["uri"] = os.path.abspath(art.uri)
    _save(path, record)
    return results, reused


def _read(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("version") != _VERSION:
        return None
    return record


def _files(directory: str) -> dict[str, int] | None:
    """{relative path: size} of every file under `directory`; None when it is not a directory."""
    if not os.path.isdir(directory):
        return None
    sizes = {}
    for here, _, names in os.walk(directory):
        for name in names:
            full = os.path.join(here, name)
            sizes[os.path.relpath(full, directory)] = os.path.getsize(full)
    return sizes


def _relative(path: str, outputs: Mapping[str, Artifact]) -> list[str | None]:
    """[output name, path relative to it] for a result inside an output, else [None, path]."""
    path = os.path.abspath(path)
    for name, art in outputs.items():
        rest = os.path.relpath(path, os.path.abspath(art.uri))
        if rest != os.pardir and not rest.startswith(os.pardir + os.sep):
            return [name, rest]
    return [None, path]


def _absolute(where: list[str | None], outputs: Mapping[str, Artifact]) -> str:
    name, rest = where
    if name is None:
        return rest
    return os.path.normpath(os.path.join(os.path.abspath(outputs[name].uri), rest))


def _link_or_copy(source: str, destination: str) -> str:
    """Hard link (free, and the copy survives deletion of the old run); a copy across devices."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)
    return destination
