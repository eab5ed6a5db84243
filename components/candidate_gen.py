"""CandidateGen: the initial candidate functions of a search.

Seed functions (the usual baselines, trained first) plus functions sampled from the search space,
each sanity-checked with `activations.check` and de-duplicated by `activations.fingerprint`, so
no compute goes to a function that cannot train or that another candidate already covers.

Artifact layout: `<uri>/candidates.jsonl`, one line per function:
`{"expression": ..., "fingerprint": ..., "origin": "seed:relu" | "sample"}`, plus
`<uri>/rejected.jsonl` with the reason for every function left out.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

from components.base import Artifact, BaseExecutor, Component, ComponentSpec, OutputSpec, Parameter


class CandidateGenSpec(ComponentSpec):
    OUTPUTS = {"candidates": OutputSpec("Candidates")}
    PARAMETERS = {
        "space": Parameter(str, default="pangaea", choices=("pangaea", "swish")),
        "seed_functions": Parameter(list, default=["relu", "swish", "gelu", "elu", "softplus", "tanh"]),
        "num_sampled": Parameter(int, default=8),
        "seed": Parameter(int, default=0),
    }


def generate_candidates(space_name: str, seed_functions: list[str], num_sampled: int, seed: int):
    """(accepted, rejected) candidate records; deterministic for a seed."""
    import activations
    from activations.named import expression_for

    space = activations.space.get_space(space_name)
    rng = random.Random(seed)
    accepted: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    seen: dict[str, str] = {}

    def offer(expr, origin: str) -> bool:
        reason = activations.check(expr)
        fingerprint = activations.fingerprint(expr)
        if reason is None and fingerprint in seen:
            reason = f"duplicate of {seen[fingerprint]}"
        record = {"expression": str(expr), "fingerprint": fingerprint, "origin": origin}
        if reason is not None:
            rejected.append({**record, "reason": reason})
            return False
        seen[fingerprint] = str(expr)
        accepted.append(record)
        return True

    for name in seed_functions:
        offer(expression_for(name), f"seed:{name}")
    attempts = 0
    sampled = 0
    while sampled < num_sampled and attempts < 50 * max(1, num_sampled):
        attempts += 1
        sampled += offer(space.sample(rng), "sample")
    return accepted, rejected


class CandidateGenExecutor(BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:  # noqa: N802
        out = output_dict["candidates"][0]
        p = exec_properties
        accepted, rejected = generate_candidates(p["space"], p["seed_functions"], p["num_sampled"], p["seed"])
        _write_jsonl(out.path("candidates.jsonl"), accepted)
        _write_jsonl(out.path("rejected.jsonl"), rejected)
        out.properties.update({"num_candidates": len(accepted), "num_rejected": len(rejected), "space": p["space"]})
        self.context.progress(f"{len(accepted)} candidate{'' if len(accepted) == 1 else 's'}, {len(rejected)} rejected")
        for record in rejected:  # the user chose these: say why one is left out
            if record["origin"].startswith("seed:"):
                self.context.progress(f"seed function {record['origin'][len('seed:'):]!r} "
                                      f"({record['expression']}) is left out: {record['reason']}")


class CandidateGen(Component):
    SPEC_CLASS = CandidateGenSpec
    EXECUTOR_CLASS = CandidateGenExecutor


def _write_jsonl(path: str, records: list[dict[str, Any]]) -> None:
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def read_candidates(candidates: Artifact | str) -> list[dict[str, Any]]:
    uri = candidates.uri if isinstance(candidates, Artifact) else candidates
    with open(os.path.join(uri, "candidates.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
