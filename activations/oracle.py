"""Evolutionary search of activation functions as a KerasTuner oracle.

`EvolutionaryOracle` is a `keras_tuner.Oracle`, so one search runs unchanged under
`keras_tuner.Tuner.search()`, under KerasTuner's distributed mode (a chief and workers talking
gRPC) and under a batch executor that calls `create_trial` / `update_trial` / `end_trial` itself.

Each trial's genome is the canonical expression text in the hyper-parameter ``activation``; its
lineage travels as plain values too (``evolution/parents``: comma-joined trial ids,
``evolution/generation``: int, ``evolution/operator``: "seed", "sample", "exhaustive",
"controller", a mutation kind such as "insert", or "crossover[+kind]"). Only bool, int, float and str cross the gRPC
boundary, so the genome is text, never an object.

Four strategies share the bookkeeping:

* ``"evolution"`` (default): regularized ("aging") evolution as in PANGAEA's search -- the seed
  functions first, random functions until the population is full, then offspring of tournament
  winners, the oldest member leaving when a new one arrives (``selection="elitist"`` removes the
  worst instead).
* ``"exhaustive"``: every distinct function of one or two core units of "Searching for
  Activation Functions" over a chosen operator subset (space "swish"), then STOPPED. The order is
  a permutation the seed fixes, so a `max_trials` below the space's size trains a sample spread
  over all of it (`exhaustive_coverage_note` says so when it is).
* ``"random"``: independent samples from the space's own sampler, the one that fills evolution's
  first population (PANGAEA: `unary(unary(x))` and `binary(unary(x), unary(x))`); the baseline
  evolution has to beat.
* ``"rl"``: the paper's reinforcement-learning search: a controller
  (`activations.controller.CoreUnitController`) samples one or two core units, and every result
  trains it by REINFORCE; a function `check` rejects teaches it the worst reward so far, a
  duplicate nothing (its result was counted once, when its trial ended).

Decisions:

* No function is trained twice: a candidate whose `activations.fingerprint` was already proposed
  (evaluated, failed or in flight) is a *duplicate*; one `activations.check` refuses is
  *rejected*. Neither is proposed; both are counted per generation (`history()`). An offspring
  identical in function to its parent (an identity-preserving insertion) is mutated again rather
  than discarded, so neutral mutations still move the search.
* When no new function can be bred (every offspring of `max_attempts` a duplicate or rejected)
  a random sample of the space is proposed instead, so evolution does not end below its budget;
  STOPPED then means the space itself has nothing new left.
* A failed trial (exception, NaN or infinite score) stays in the population with the worst fitness and ages
  out; the search goes on. `max_consecutive_failed_trials` defaults to 10 rather than
  KerasTuner's 3 because failing candidates are a normal outcome of a search over functions.
* At most `population_size` trials are in flight. When all of them are (nothing can be bred
  without results) the oracle answers IDLE and sleeps `idle_sleep` seconds, because KerasTuner's
  search loop re-asks at once. The same barrier makes a batch executor's "create trials until
  IDLE" return exactly one generation. STOPPED is only answered when no trial is in flight, so
  workers stay until the last result is in (retries can still be served; KerasTuner's chief
  would otherwise wait 20 s polls for them).
* All state is plain JSON (`get_state` / `set_state`, RNG state included) and every file the
  oracle writes is written atomically and durably (temporary file synced, renamed, directory
  synced), the oracle's state keeping its last good version as ``oracle.json.previous``. A file
  found unreadable on resume anyway (empty or cut short: a damaged disk, a file system without
  these guarantees) is named, never a bare json error: the oracle's state falls back to the
  previous save (safe: see `_read_own_state`); a trial's ``trial.json`` is rebuilt from the
  oracle's record of the trial (its result kept, or, when the oracle had not recorded one, the
  trial runs again); what cannot be recovered fails saying what to do. `reload()` repairs the windows in
  which a process can die between two writes: a trial file written but never recorded is dropped
  (its proposal is made again from the saved RNG state), and a trial that ended on disk but not in
  the oracle state is finished rather than re-run. A Tuner killed before it first wrote its own
  ``<tuner_id>.json`` does not reload; the oracle then resumes itself on its first
  `create_trial`. A search killed at any point and restarted with ``overwrite=False`` therefore
  continues exactly; with one worker it proposes the same sequence as an uninterrupted run.
* A trial sent back for a retry (INVALID) forgets the failed attempt's metrics: KerasTuner
  would otherwise keep them and ignore the retry's result.
* Generations are counted in proposals: generation g is the proposals g*N .. (g+1)*N-1 for
  population size N (one batch in batch mode, N evaluations in steady state).
* Ranking offspring with a nearest-neighbour surrogate (``offspring_candidates > 1``) is
  available but off by default: on bench/search_efficiency.py it made the search greedier and
  worse than plain regularized evolution; so did elitist selection and a crossover rate of 0.5.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import itertools
import json
import math
import os
import random
import shutil
import statistics
import time
import warnings
from typing import Any, Iterable, Mapping, Sequence

import keras
import keras_tuner
import numpy as np
from keras_tuner.engine.trial import Trial, TrialStatus
from keras_tuner.src.backend import io as backend_io
from keras_tuner.src.engine import metrics_tracking
from keras_tuner.src.engine.objective import MultiObjective

from activations import space as space_module
from activations.controller import CoreUnitController
from activations.equivalence import check, fingerprint
from activations.expression import Expression, ExpressionError, is_finite_number, parse
from activations.interrupts import CtrlC
from activations.stopping import QuantileStopping

GENOME = "activation"
PARENTS = "evolution/parents"
GENERATION = "evolution/generation"
OPERATOR = "evolution/operator"
RESERVED_NAMES = (GENOME, PARENTS, GENERATION, OPERATOR)
EPOCH_METRIC = "actsearch/epoch"
"""Marks an `update_trial` call as one epoch's objective, for the stopping rule only: how a
worker of KerasTuner's distributed mode asks the chief's oracle whether to stop a trial."""
LAST_EPOCH_METRIC = "actsearch/last_epoch"
"""With `EPOCH_METRIC`: 1.0 when the epoch is the trial's last, which is recorded but never stops
it (the trial ends anyway; it was not cut short)."""

DEFAULT_SEEDS = (
    "relu(x)",
    "swish(x)",
    "gelu(x)",
    "elu(x)",
    "selu(x)",
    "softplus(x)",
    "tanh(x)",
    "sigmoid(x)",
    "softsign(x)",
)
"""Baselines trained first (AQuaSurF's list plus GELU)."""

STRATEGIES = ("evolution", "exhaustive", "random", "rl")
SELECTIONS = ("aging", "elitist")
STATE_VERSION = 1
_MAX_NEUTRAL_STEPS = 3

_RUNNING, _COMPLETED, _FAILED = "running", "completed", "failed"


class _Wait:
    """Sentinel: nothing can be proposed until a result arrives."""


_WAIT = _Wait()


def exhaustive_coverage_note(core_units: int, unary_forms: Sequence[str] | None, binary_forms: Sequence[str] | None,
                             max_trials: int | None) -> str | None:
    """What an exhaustive search over these core units will leave out, or None when its budget
    covers the space (`max_trials` None: every function, which is only sensible for small spaces)."""
    unary, binary = space_module.checked_forms(core_units, unary_forms, binary_forms)
    count = space_module.core_unit_count(core_units, unary, binary)
    space = (f"the exhaustive space of {core_units} core unit{'s' if core_units > 1 else ''} over {len(unary)} unary "
             f"and {len(binary)} binary forms holds {count:,} functions (before duplicates are removed)")
    smaller = "fewer unary_forms / binary_forms " + ("(or core_units=1) " if core_units > 1 else "") + \
        "give a space a search can cover"
    if max_trials is None:
        return None if count <= _UNBOUNDED_ENUMERATION else f"{space}, and max_trials=None trains every one; {smaller}"
    if max_trials >= count:
        return None
    return (f"{space}; max_trials={max_trials} trains at most {max_trials} of them, a sample in an order the seed "
            f"shuffles; {smaller}")


ENUMERATION_ORDER = "keyed-v1"
"""The exhaustive order a saved state's `enumeration_cursor` counts in (`keyed_permutation` of the
seed); states without the key counted in the fixed order, and resume in it."""

_UNBOUNDED_ENUMERATION = 10_000
"""Functions an exhaustive search without `max_trials` may enumerate before a warning says so."""


def _check_int(name: str, value, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        allowed = f"an integer >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _check_rate(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


def _stopping_rule(stopping) -> QuantileStopping | None:
    if stopping is None or isinstance(stopping, QuantileStopping):
        return stopping
    if isinstance(stopping, bool) or not isinstance(stopping, (int, float)):
        raise ValueError(f"stopping must be a QuantileStopping, a quantile in (0, 1) or None, got {stopping!r}")
    return QuantileStopping(quantile=float(stopping))


def _finite_or_none(value) -> float | None:
    return float(value) if is_finite_number(value) else None


def _rng_state_to_json(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_state_from_json(data) -> tuple:
    version, internal, gauss = data
    return (version, tuple(internal), gauss)


PREVIOUS_SUFFIX = ".previous"
"""`<project>/oracle.json.previous`: the oracle's state as it was before its last save."""


class StateFileError(RuntimeError):
    """A saved-state file that cannot be used to resume: empty, cut short, not JSON, or missing.

    The message names the file (json's own error does not) and, where raised to the user, says
    what to do; `path` is the file.
    """

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path


def _read_json(path: str) -> dict:
    """The JSON object in `path`, or `StateFileError` naming the file and why it is unusable.

    A crash at power loss after an un-synced write, or a full disk, leaves a file empty or cut
    short, and json's own error ("Expecting value: line 1 column 1") names no file. Errors of
    the file system itself (permissions, I/O) are not caught: they already name the file, and
    the file is not lost.
    """
    remote = "://" in path
    if not (backend_io.exists(path) if remote else os.path.exists(path)):
        raise StateFileError(path, f"{path} is missing")
    with (backend_io.File(path, "r") if remote else open(path)) as handle:
        try:
            text = handle.read()
        except UnicodeDecodeError:
            raise StateFileError(path, f"{path} is not text (damaged)") from None
    if not text.strip():
        raise StateFileError(path, f"{path} is empty ({len(text)} bytes), as a write lost at a crash or on a full "
                                   "disk leaves it")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as error:
        raise StateFileError(path, f"{path} is not complete JSON ({error}; {len(text)} bytes), as a write cut short "
                                   "by a crash or a full disk leaves it") from None
    if not isinstance(obj, dict):
        raise StateFileError(path, f"{path} holds a JSON {type(obj).__name__}, not the object a saved state is")
    return obj


def _write_json_atomic(path: str, obj, keep_previous: bool = False, known_good: bool = False) -> None:
    """Write JSON so a reader sees the old or the new content, never a torn file, even after a
    power loss: the data is synced before the rename and the directory after it (a rename alone
    can reach the disk before the data, leaving an empty file under the new name).

    `keep_previous` first keeps the current file, when it is readable, as ``path.previous``:
    the fallback `EvolutionaryOracle.reload` uses if the file is ever found unreadable anyway
    (a file system without these guarantees, a damaged disk, a file an older version wrote).
    `known_good`: the caller wrote the current file itself, so it is not read back to check.
    """
    text = json.dumps(obj)
    if "://" in path:  # remote file systems: KerasTuner's own writer
        from keras_tuner.src import utils

        utils.save_json(path, obj)
        return
    if keep_previous:
        _keep_previous(path, known_good)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)  # a full disk: leave no partial file behind
        raise
    _fsync_directory(os.path.dirname(path))


def _keep_previous(path: str, known_good: bool = False) -> None:
    """Keep `path` as ``path.previous`` (a hard link: no copy, and the data was synced when it
    was written). An unreadable or missing `path` is not kept: the older good copy stays. Unless
    `known_good`, the file is parsed first to tell."""
    if known_good and not os.path.exists(path):
        return
    if not known_good:
        try:
            _read_json(path)
        except StateFileError:
            return
    previous = path + PREVIOUS_SUFFIX
    tmp = f"{previous}.tmp{os.getpid()}"
    _remove_quietly(tmp)
    try:
        try:
            os.link(path, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(path, tmp)
        os.replace(tmp, previous)
    except BaseException:
        _remove_quietly(tmp)
        raise


def _read_trial(path: str) -> Trial:
    """KerasTuner's `Trial.load`, with an unreadable file a `StateFileError` naming it."""
    try:
        return Trial.from_state(_read_json(path))
    except KeyError as error:
        raise StateFileError(path, f"{path} lacks {error} and is not a trial's state") from None


def _fsync_directory(directory: str) -> None:
    """Make a rename in `directory` durable (POSIX; skipped where directories cannot be opened)."""
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


class EvolutionaryOracle(keras_tuner.Oracle):
    """A KerasTuner oracle that evolves activation functions (or enumerates / samples them).

    Args:
        objective: as for any KerasTuner oracle (name, `keras_tuner.Objective` or a list).
        max_trials: trials to run at most (None: until the strategy is exhausted).
        space: "pangaea", "swish" or an `activations.space.SearchSpace`.
        strategy: "evolution", "exhaustive", "random" or "rl" (the Swish paper's controller over
            core units; needs space "swish").
        population_size: N, the population of the evolution and the most trials in flight.
        tournament_size: candidates drawn at random from the population per parent selection
            (default: 4, or the population size when smaller).
        selection: "aging" (regularized evolution: the oldest leaves) or "elitist" (the worst leaves).
        mutation_rate: probability that a crossover child is also mutated (a child that is not
            crossed over is always mutated).
        crossover_rate: probability that a child comes from crossing two tournament winners.
        seed_functions: expression texts trained first; None means `DEFAULT_SEEDS` for
            "evolution", "random" and "rl" and none for "exhaustive".
        core_units, unary_forms, binary_forms: the core-unit space of ``strategy="exhaustive"``
            and ``"rl"`` (both need space "swish"): 1 or 2 core units (at most, for "rl"), and
            non-empty lists from `activations.space.SWISH_UNARY_FORMS` / `SWISH_BINARY_FORMS`;
            None: every form, 1 unit for "exhaustive" and 2 for "rl". An exhaustive space larger
            than `max_trials` gets a warning (`exhaustive_coverage_note`).
        offspring_candidates: with K > 1, K novel valid offspring are bred per proposal and the
            one a nearest-neighbour surrogate (distance between the functions' outputs on the
            fingerprint probe points, as in AQuaSurF) ranks best is proposed.
        max_attempts: offspring tried per proposal before the oracle gives up for now.
        idle_sleep: seconds to sleep when answering IDLE (KerasTuner's loop does not sleep).
        stopping: a `QuantileStopping` rule (or a quantile, for the rule with its defaults) that
            stops hopeless trials after an epoch (`observe`, `EvolutionaryTuner`; a batch driver
            hands `stopping_thresholds()` to its trainings); None: every trial runs in full.
        seed: random seed; same seed and same results give the same proposals.
        hyperparameters, allow_new_entries, tune_new_entries, max_retries_per_trial,
        max_consecutive_failed_trials: as for `keras_tuner.Oracle`. Other hyper-parameters a
            hypermodel declares keep their default values: this oracle searches the activation.
    """

    def __init__(
        self,
        objective=None,
        max_trials: int | None = 100,
        space: str | space_module.SearchSpace = "pangaea",
        strategy: str = "evolution",
        population_size: int = 16,
        tournament_size: int | None = None,
        selection: str = "aging",
        mutation_rate: float = 1.0,
        crossover_rate: float = 0.2,
        seed_functions: Iterable[str | Expression] | None = None,
        core_units: int | None = None,
        unary_forms: Sequence[str] | None = None,
        binary_forms: Sequence[str] | None = None,
        offspring_candidates: int = 1,
        max_attempts: int = 50,
        idle_sleep: float = 0.1,
        stopping: QuantileStopping | float | None = None,
        seed: int | None = None,
        hyperparameters=None,
        allow_new_entries: bool = True,
        tune_new_entries: bool = True,
        max_retries_per_trial: int = 0,
        max_consecutive_failed_trials: int = 10,
    ):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; allowed: {list(STRATEGIES)}")
        if selection not in SELECTIONS:
            raise ValueError(f"unknown selection {selection!r}; allowed: {list(SELECTIONS)}")
        _check_int("max_trials", max_trials, 1, allow_none=True)
        _check_int("population_size", population_size, 1)
        if tournament_size is None:
            tournament_size = min(4, population_size)
        _check_int("tournament_size", tournament_size, 1)
        if tournament_size > population_size:
            raise ValueError(
                f"tournament_size ({tournament_size}) cannot exceed population_size ({population_size})"
            )
        _check_rate("mutation_rate", mutation_rate)
        _check_rate("crossover_rate", crossover_rate)
        _check_int("offspring_candidates", offspring_candidates, 1)
        _check_int("max_attempts", max_attempts, 1)
        _check_int("seed", seed, 0, allow_none=True)
        seed = None if seed is None else int(seed)  # a NumPy integer too: random.Random takes int only
        if isinstance(idle_sleep, bool) or not isinstance(idle_sleep, (int, float)) or idle_sleep < 0:
            raise ValueError(f"idle_sleep must be a number of seconds >= 0, got {idle_sleep!r}")
        exhaustive_options = {"core_units": core_units, "unary_forms": unary_forms, "binary_forms": binary_forms}
        if strategy not in ("exhaustive", "rl"):
            given = [name for name, value in exhaustive_options.items() if value is not None]
            if given:
                raise ValueError(f"{', '.join(given)} only apply to strategy='exhaustive' or 'rl', not {strategy!r}")
        _check_reserved_names(hyperparameters)
        super().__init__(
            objective=objective,
            max_trials=max_trials,
            hyperparameters=hyperparameters,
            allow_new_entries=allow_new_entries,
            tune_new_entries=tune_new_entries,
            seed=seed,
            max_retries_per_trial=max_retries_per_trial,
            max_consecutive_failed_trials=max_consecutive_failed_trials,
        )
        if seed is not None:
            self.seed = seed  # the base class treats 0 as "no seed"
        self._given_seed = seed  # set_state replaces self.seed by the saved one
        self.space = space_module.get_space(space)
        self.strategy = strategy
        self.population_size = int(population_size)
        self.tournament_size = int(tournament_size)
        self.selection = selection
        self.mutation_rate = float(mutation_rate)
        self.crossover_rate = float(crossover_rate)
        self.offspring_candidates = int(offspring_candidates)
        self.max_attempts = int(max_attempts)
        self.idle_sleep = float(idle_sleep)
        self.stopping = _stopping_rule(stopping)
        if seed_functions is None:
            seed_functions = () if strategy == "exhaustive" else DEFAULT_SEEDS
        if isinstance(seed_functions, (str, Expression)):
            raise ValueError("seed_functions must be a list of expression texts, not a single one")
        self.seed_functions = tuple(self._parse_seed(i, text) for i, text in enumerate(seed_functions))
        seed_fingerprints, seed_checks = _screen_seeds(self.seed_functions)
        if strategy in ("exhaustive", "rl"):
            if self.space.name != "swish":
                raise ValueError(f"strategy={strategy!r} proposes the Swish paper's core units: use space='swish', "
                                 f"not {self.space.name!r}")
            self.core_units = (1 if strategy == "exhaustive" else 2) if core_units is None else core_units
            unary, binary = space_module.checked_forms(self.core_units, unary_forms, binary_forms)
            self.unary_forms, self.binary_forms = tuple(unary), tuple(binary)
            note = exhaustive_coverage_note(self.core_units, unary, binary, max_trials) if strategy == "exhaustive" else None
            if note:
                warnings.warn(note, stacklevel=2)
        else:
            self.core_units, self.unary_forms, self.binary_forms = None, (), ()
        self._controller = (CoreUnitController(self.unary_forms, self.binary_forms, self.core_units)
                            if strategy == "rl" else None)
        self._pending_tokens: dict[str, list[int]] = {}  # fingerprint -> tokens, until proposed

        # The genome and lineage are declared, so `hp.get("activation")` works while a
        # hypermodel is first built and every trial carries the same four values.
        self.hyperparameters.Fixed(GENOME, str(self.seed_functions[0]) if self.seed_functions else "relu(x)")
        self.hyperparameters.Fixed(PARENTS, "")
        self.hyperparameters.Fixed(GENERATION, 0)
        self.hyperparameters.Fixed(OPERATOR, "seed")

        self._rng = random.Random(self.seed)
        self._individuals: dict[str, dict] = {}  # trial id -> genome, lineage, status, fitness
        self._population: list[str] = []  # trial ids, oldest first
        self._fingerprints: dict[str, str] = {}  # fingerprint -> trial id of every proposal
        self._ingested: list[str] = []  # trial ids in the order their results arrived
        self._generations: list[dict] = []  # per generation: duplicates, rejected counts
        self._proposals = 0
        self._seed_cursor = 0
        self._enum_cursor = 0
        self._enum_iterator = None
        self._enumeration_order = ENUMERATION_ORDER
        # Speed only: expression text -> fingerprint, and fingerprint -> `check`'s verdict.
        self._fingerprint_cache: dict[str, str] = seed_fingerprints
        self._check_cache: dict[str, str | None] = seed_checks
        self._features: dict[str, np.ndarray] = {}
        self._synced = False
        self._wrote_state: str | None = None  # the state file this process last wrote (`save`)
        self._saved_retries = 0  # retries the loaded state held (`_queue_unfinished_in_start_order`)
        self._stopped = False

    # --- configuration helpers -------------------------------------------------------------------

    @staticmethod
    def _parse_seed(index: int, text) -> Expression:
        try:
            return parse(text)
        except ExpressionError as error:
            raise ExpressionError(f"seed_functions[{index}] = {text!r} is not a valid expression: {error}") from None

    def _enumeration(self):
        # In an order the seed shuffles: a budget below the space's size samples all of it.
        order_seed = None if self._enumeration_order == "fixed" else self.seed
        return space_module.enumerate_core_units(self.core_units, self.unary_forms, self.binary_forms,
                                                 order_seed=order_seed)

    def set_project_dir(self, directory: str, project_name: str = "evolution", overwrite: bool = False) -> None:
        """Persist to ``<directory>/<project_name>`` when driving the oracle without a Tuner.

        An existing project is resumed (as a Tuner does with ``overwrite=False``) unless
        `overwrite` is true, which deletes it first.
        """
        self._set_project_dir(directory, project_name)
        path = os.path.join(str(directory), project_name)
        if overwrite and os.path.exists(path):
            shutil.rmtree(path)
        self._synced = False
        self._maybe_resume()

    def _has_project_dir(self) -> bool:
        return getattr(self, "_directory", None) is not None

    # --- the KerasTuner contract -----------------------------------------------------------------

    def create_trial(self, tuner_id):
        """KerasTuner's `create_trial`, plus the lazy resume and the IDLE throttle."""
        trial = self._create_trial(tuner_id)
        if trial.status == TrialStatus.IDLE and self.idle_sleep:
            time.sleep(self.idle_sleep)  # outside the lock: results can arrive meanwhile
        return trial

    @keras_tuner.synchronized
    def _create_trial(self, tuner_id):
        self._maybe_resume()
        if (
            tuner_id not in self.ongoing_trials
            and not self._retry_queue
            and self.max_trials
            and len(self.trials) >= self.max_trials
            and self.ongoing_trials
        ):
            # Budget spent but results pending: keep the worker (a result may need a retry).
            self.tuner_ids.add(tuner_id)
            return Trial(self.get_space(), status=TrialStatus.IDLE)
        return super().create_trial(tuner_id)

    def populate_space(self, trial_id):
        if self._running_count() >= self.population_size:
            return {"status": TrialStatus.IDLE, "values": None}
        proposal = self._propose()
        if proposal is None or proposal is _WAIT:
            if proposal is None:  # attempts consumed randomness and counters: keep them
                self.save()
            status = TrialStatus.IDLE if (proposal is _WAIT or self.ongoing_trials) else TrialStatus.STOPPED
            self._stopped = status == TrialStatus.STOPPED
            return {"status": status, "values": None}
        expr, fp, operator, parents = proposal
        generation = self._proposals // self.population_size
        self._proposals += 1
        self._fingerprints[fp] = trial_id
        self._individuals[trial_id] = {
            "expression": str(expr),
            "fingerprint": fp,
            "operator": operator,
            "parents": list(parents),
            "generation": generation,
            "status": _RUNNING,
            "fitness": None,
        }
        if fp in self._pending_tokens:
            self._individuals[trial_id]["tokens"] = self._pending_tokens.pop(fp)
        self._generation_counts(generation)["proposed"] += 1
        values = self._default_values()
        values.update(
            {GENOME: str(expr), PARENTS: ",".join(parents), GENERATION: generation, OPERATOR: operator}
        )
        return {"status": TrialStatus.RUNNING, "values": values}

    @keras_tuner.synchronized
    def update_trial(self, trial_id, metrics, step=0):
        """KerasTuner's report of a trial's metrics; with `EPOCH_METRIC` among them, one epoch's
        objective from a worker of KerasTuner's distributed mode instead (see
        `EvolutionaryTuner.on_epoch_end`): observed for the stopping rule (`observe`), not
        recorded as a result, and answered with a copy of the trial whose status is STOPPED when
        the rule stops it. Only this call crosses KerasTuner's gRPC with per-epoch values."""
        if EPOCH_METRIC not in metrics:
            return super().update_trial(trial_id, metrics, step)
        values = dict(metrics)
        epoch = int(values.pop(EPOCH_METRIC))
        last = bool(values.pop(LAST_EPOCH_METRIC, 0.0))
        reply = copy.copy(self.trials[trial_id])
        if self.observe(trial_id, epoch, values.get(self.objective.name), may_stop=not last):
            reply.status = TrialStatus.STOPPED
        return reply

    def score_trial(self, trial):
        """KerasTuner's score, with an infinite one made NaN: an infinite objective is a broken
        run as a NaN one is (KerasTuner only catches NaN), so both are INVALID, retried, then
        FAILED; otherwise `get_best_trials` would rank an infinite score first while the
        population counts the trial as failed."""
        super().score_trial(trial)
        if trial.score is not None and math.isinf(trial.score):
            trial.score = math.nan

    @keras_tuner.synchronized
    def end_trial(self, trial):
        super().end_trial(trial)
        ended = self.trials[trial.trial_id]
        if ended.status == TrialStatus.INVALID:
            # Queued for a retry: forget the failed attempt's metrics, otherwise KerasTuner takes
            # them for the retry's (it skips reporting when the objective already exists).
            ended.metrics = metrics_tracking.MetricsTracker()
            ended.score = None
            self._save_trial(ended)
        if ended.status in (TrialStatus.COMPLETED, TrialStatus.FAILED):
            self._ingest(ended)
            self.save()

    def get_state(self):
        state = super().get_state()
        state["evolution"] = {
            "version": STATE_VERSION,
            "strategy": self.strategy,
            "space": self.space.name,
            "rng": _rng_state_to_json(self._rng.getstate()),
            "individuals": self._individuals,
            "population": self._population,
            "fingerprints": self._fingerprints,
            "ingested": self._ingested,
            "generations": self._generations,
            "proposals": self._proposals,
            "seed_cursor": self._seed_cursor,
            "enumeration_cursor": self._enum_cursor,
            "enumeration_order": self._enumeration_order,
            "controller": self._controller.to_json() if self._controller else None,
            "settings": self._settings(),
        }
        return state

    def _settings(self) -> dict:
        """The settings that shape the search, which a resumed search must share (max_trials,
        stopping and the waiting options may change between runs). The objective is among
        them: the saved fitness values were measured on it."""
        return {
            "objective": str(self.objective),
            "population_size": self.population_size,
            "tournament_size": self.tournament_size,
            "selection": self.selection,
            "mutation_rate": self.mutation_rate,
            "crossover_rate": self.crossover_rate,
            "offspring_candidates": self.offspring_candidates,
            "seed_functions": [str(expr) for expr in self.seed_functions],
            "core_units": self.core_units,
            "unary_forms": list(self.unary_forms),
            "binary_forms": list(self.binary_forms),
            "seed": self.seed,
        }

    def _check_same_settings(self, evolution: dict) -> None:
        saved = dict(evolution.get("settings") or {})  # states written before settings were saved: not checked
        current = {**self._settings(), "seed": self._given_seed}
        if self._given_seed is None:
            saved.pop("seed", None)  # no seed given: the base class drew one; the saved generator goes on
        saved.update(strategy=evolution["strategy"], space=evolution["space"])
        current.update(strategy=self.strategy, space=self.space.name)
        changed = [key for key in saved if key in current and saved[key] != current[key]]
        if changed:
            listing = "; ".join(f"{key}={saved[key]!r} but this oracle has {key}={current[key]!r}" for key in changed)
            raise ValueError(
                f"the saved search used {listing}; resume with the same settings or start a new project "
                "(overwrite=True)"
            )

    def set_state(self, state):
        super().set_state(state)
        self._saved_retries = len(self._retry_queue)  # see `_queue_unfinished_in_start_order`
        evolution = state.get("evolution")
        if evolution is None:
            raise ValueError("the saved oracle state has no 'evolution' section: it was not written by EvolutionaryOracle")
        if evolution.get("version") != STATE_VERSION:
            raise ValueError(f"saved oracle state version {evolution.get('version')!r}, expected {STATE_VERSION}")
        self._check_same_settings(evolution)
        self._rng.setstate(_rng_state_from_json(evolution["rng"]))
        self._individuals = {tid: dict(info) for tid, info in evolution["individuals"].items()}
        self._population = list(evolution["population"])
        self._fingerprints = dict(evolution["fingerprints"])
        self._ingested = list(evolution["ingested"])
        self._generations = [dict(counts) for counts in evolution["generations"]]
        self._proposals = int(evolution["proposals"])
        self._seed_cursor = int(evolution["seed_cursor"])
        self._enum_cursor = int(evolution["enumeration_cursor"])
        # A state saved before the order was keyed counted its cursor in the fixed order.
        self._enumeration_order = evolution.get("enumeration_order", "fixed")
        self._enum_iterator = None
        if self._controller is not None:
            self._controller = CoreUnitController.from_json(evolution["controller"])
        self._stopped = False

    # --- persistence -----------------------------------------------------------------------------

    def save(self):
        """Write the state, keeping the last good one as ``oracle.json.previous`` (`reload`)."""
        self._synced = True
        if self._has_project_dir():
            # After this process's first save the file on disk is its own last write: no need to
            # parse it again (2-3 saves a trial) to know it is good.
            path = self._get_oracle_fname()
            _write_json_atomic(path, self.get_state(), keep_previous=True, known_good=self._wrote_state == path)
            self._wrote_state = path

    def _save_trial(self, trial):
        if self._has_project_dir():
            path = os.path.join(self._get_trial_dir(trial.trial_id), "trial.json")
            _write_json_atomic(path, trial.get_state())

    def reload(self):
        """KerasTuner's reload (the trial files, then the oracle's state; the trials that were
        running are queued to run again), done here so that an unreadable file is named and,
        where that is safe, worked around (`_read_own_state`, `_load_trials`) rather than
        failing every rerun with json's bare error; then the repairs of `_reconcile`."""
        state = self._read_own_state()
        rerun = self._load_trials(state)
        try:
            self.set_state(state)
        except KeyError as error:  # as KerasTuner's reload
            raise RuntimeError(
                f"{self._get_oracle_fname()} lacks {error} and is not an oracle's state: pass overwrite=True or "
                f"another project_name to start a new search instead of reloading {self._project_dir}"
            ) from error
        for trial in self.ongoing_trials.values():
            self._retry_queue.append(trial.trial_id)
        self.ongoing_trials = {}
        self._run_again(rerun)
        self._queue_unfinished_in_start_order()
        self._synced = True
        self._reconcile()
        self.save()

    def _read_own_state(self) -> dict:
        """The oracle's saved state, or the one before it when the file is unreadable.

        Falling back one save is safe because the trial files are the record of what ran, and
        each is written before the oracle's state that refers to it: one save back, either a
        trial that ended on disk is not yet in the population (`_reconcile` ingests it from its
        file, once: it is ingested only while its record still says running), or the last
        proposal is not yet recorded (its file is dropped and the proposal made again from the
        saved random state, as after a kill at that point). No finished trial is lost or counted twice;
        a retried trial may get one extra attempt.
        """
        path = self._get_oracle_fname()
        try:
            return _read_json(path)
        except StateFileError as error:
            current = error
        previous = path + PREVIOUS_SUFFIX
        try:
            state = _read_json(previous)
        except StateFileError as error:
            raise StateFileError(
                path, f"cannot resume the search: {current}, and so is its previous copy ({error}). Restore one of "
                "them from a backup, or start a new search (overwrite=True or another project name); the finished "
                "trials' results are in the trial_*/trial.json files next to them") from None
        warnings.warn(f"{current}; resuming from the previous save, {previous}: the last save (at most one trial's "
                      "bookkeeping) is redone from the trial files", RuntimeWarning, stacklevel=3)
        return state

    def _load_trials(self, state: dict) -> list[str]:
        """Read every ``trial_*/trial.json`` as KerasTuner does; rebuild a recorded trial whose
        file is unreadable or missing from the oracle's record of it (`_trial_from_record`).
        Returns the ids of those rebuilt trials whose result is lost, which must run again.

        An unreadable file of a trial the state never recorded is skipped: `_reconcile` would
        drop that trial anyway, and its proposal, made again, writes the file afresh."""
        unreadable = {}
        for path in backend_io.glob(os.path.join(self._project_dir, "trial_*", "trial.json")):
            try:
                trial = _read_trial(path)
            except StateFileError as error:
                unreadable[os.path.basename(os.path.dirname(path))[len("trial_"):]] = error
                continue
            self.trials[trial.trial_id] = trial
        rerun = []
        for trial_id in state.get("start_order") or []:
            if trial_id in self.trials:
                continue
            path = os.path.join(self._get_trial_dir(trial_id), "trial.json")
            error = unreadable.get(trial_id) or StateFileError(path, f"{path} is missing")
            trial, result_known = self._trial_from_record(trial_id, state, error)
            self.trials[trial_id] = trial
            self._save_trial(trial)  # a readable file again: the next resume has nothing to repair
            if not result_known:
                rerun.append(trial_id)
        return rerun

    def _trial_from_record(self, trial_id: str, state: dict, error: StateFileError) -> tuple[Trial, bool]:
        """A KerasTuner trial rebuilt from the oracle's record of it (function, lineage, status,
        fitness), and whether its result was recorded. A finished trial keeps its result (its
        score; other metrics and the message of a failure are lost with the file); one the
        oracle had not seen end gets no result and runs again (`_run_again`)."""
        info = ((state.get("evolution") or {}).get("individuals") or {}).get(trial_id)
        if info is None:
            raise StateFileError(
                error.path, f"{error}, and the oracle's state has no record of trial {trial_id} to rebuild it from: "
                f"restore the file from a backup, or start a new search (overwrite=True or another project name)")
        config = state.get("hyperparameters") or self.hyperparameters.get_config()
        space = keras_tuner.HyperParameters.from_config(config)
        values = self._default_values(space)
        values.update({GENOME: info["expression"], PARENTS: ",".join(info["parents"]),
                       GENERATION: info["generation"], OPERATOR: info["operator"]})
        space.values = values
        statuses = {_COMPLETED: TrialStatus.COMPLETED, _FAILED: TrialStatus.FAILED}
        status = statuses.get(info["status"], TrialStatus.RUNNING)
        trial = Trial(space, trial_id=trial_id, status=status)
        if status == TrialStatus.COMPLETED:
            trial.score, trial.best_step = info["fitness"], 0
            if not isinstance(self.objective, MultiObjective):
                trial.metrics.register(self.objective.name, direction=self.objective.direction)
                trial.metrics.update(self.objective.name, info["fitness"], step=0)
            outcome = (f"rebuilt trial {trial_id} from the oracle's record, with its fitness {info['fitness']!r} "
                       "(its other metrics are lost)")
        elif status == TrialStatus.FAILED:
            trial.message = f"failed; its error message was lost with its unreadable trial.json ({error})"
            outcome = f"rebuilt trial {trial_id} from the oracle's record, as failed (its error message is lost)"
        else:
            outcome = f"the oracle had not recorded trial {trial_id}'s result ({info['expression']}): it runs again"
        warnings.warn(f"{error}; {outcome}", RuntimeWarning, stacklevel=4)
        return trial, status != TrialStatus.RUNNING

    def _run_again(self, trial_ids: Sequence[str]) -> None:
        """Queue rebuilt trials whose result was lost to run again; one that had ended on disk
        is taken off the ended trials, and its run is not counted against its retries."""
        for trial_id in trial_ids:
            if trial_id in self.end_order:
                self.end_order.remove(trial_id)
                self._run_times[trial_id] = max(0, self._run_times[trial_id] - 1)
            if trial_id not in self._retry_queue:
                self._retry_queue.append(trial_id)

    def _queue_unfinished_in_start_order(self) -> None:
        """KerasTuner's reload appends the trials that were running to the retry queue, which
        it pops from the end: a stopped batch would come back last trial first, its results
        would be reported in that order, and the population would age differently from a run
        that was never stopped. Ordered here so that they pop in the order they first started
        (before the retries the saved queue already held, as in an uninterrupted run)."""
        saved = self._saved_retries
        order = {trial_id: index for index, trial_id in enumerate(self.start_order)}
        unfinished = sorted(self._retry_queue[saved:], key=lambda trial_id: order.get(trial_id, -1), reverse=True)
        self._retry_queue[saved:] = unfinished

    @keras_tuner.synchronized
    def _maybe_resume(self):
        """Reload a project nobody reloaded: a Tuner killed before it first saved its own file
        (so it does not reload), or a batch executor that set a project directory."""
        if self._synced:
            return
        self._synced = True
        fname = self._get_oracle_fname() if self._has_project_dir() else None
        if fname and not self.trials and (os.path.exists(fname) or os.path.exists(fname + PREVIOUS_SUFFIX)):
            self.reload()

    def _reconcile(self) -> None:
        """Repair what a process killed between two file writes left behind (see module doc)."""
        recorded = set(self.start_order)
        for trial_id in [tid for tid in self.trials if tid not in recorded]:
            del self.trials[trial_id]  # written by create_trial, never recorded: proposed again
        for trial_id in list(self._retry_queue):
            trial = self.trials[trial_id]
            if trial.status in (TrialStatus.COMPLETED, TrialStatus.FAILED):
                self._retry_queue.remove(trial_id)  # ended on disk: finish, do not re-run
                if trial_id not in self.end_order:
                    self._run_times[trial_id] += 1
                    self.end_order.append(trial_id)
        for trial_id in self.end_order:
            info = self._individuals.get(trial_id)
            if info is not None and info["status"] == _RUNNING:
                self._ingest(self.trials[trial_id])

    # --- proposals -------------------------------------------------------------------------------

    def _running_count(self) -> int:
        return sum(1 for info in self._individuals.values() if info["status"] == _RUNNING)

    def _note_controller(self, generation: int) -> None:
        """The controller's state after an update, kept with the generation (`history()`)."""
        counts = self._generation_counts(generation)
        counts["controller_baseline"] = self._controller.baseline
        counts["controller_certainty"] = self._controller.certainty()
        counts["controller_updates"] = self._controller.updates

    def _generation_counts(self, generation: int) -> dict:
        while len(self._generations) <= generation:
            self._generations.append({"proposed": 0, "duplicates": 0, "rejected": 0})
        return self._generations[generation]

    def _default_values(self, space: keras_tuner.HyperParameters | None = None) -> dict:
        """Default values of the other (active) hyper-parameters a hypermodel declared (in
        `space`, the oracle's own by default)."""
        hps = keras_tuner.HyperParameters()
        for hp in (space or self.hyperparameters).space:
            hps.merge([hp])
            if hps.is_active(hp):
                hps.values[hp.name] = hp.default
        return dict(hps.values)

    def _screen(self, expr: Expression, parents_fingerprints: Sequence[str] = ()) -> str | None:
        """The fingerprint of a candidate worth proposing, or None (duplicate or rejected; counted).

        Returns the sentinel "neutral" when the candidate computes its parent's function.
        """
        counts = self._generation_counts(self._proposals // self.population_size)
        text = str(expr)
        fp = self._fingerprint_cache.get(text)
        if fp is None:
            try:
                fp = fingerprint(expr)
            except Exception:  # noqa: BLE001 - an expression that cannot even be evaluated
                counts["rejected"] += 1
                return None
            if len(self._fingerprint_cache) > 100_000:
                self._fingerprint_cache.clear()
            self._fingerprint_cache[text] = fp
        if fp in parents_fingerprints:
            return "neutral"
        if fp in self._fingerprints:
            counts["duplicates"] += 1
            return None
        if fp not in self._check_cache:
            if len(self._check_cache) > 100_000:
                self._check_cache.clear()
            try:
                self._check_cache[fp] = check(expr)
            except Exception as error:  # noqa: BLE001
                self._check_cache[fp] = f"check failed: {error}"
        if self._check_cache[fp] is not None:
            counts["rejected"] += 1
            return None
        return fp

    def _propose(self):
        """(expression, fingerprint, operator, parent ids), _WAIT, or None when nothing is left."""
        while self._seed_cursor < len(self.seed_functions):
            expr = self.seed_functions[self._seed_cursor]
            self._seed_cursor += 1
            fp = self._screen(expr)
            if fp not in (None, "neutral"):
                return expr, fp, "seed", []
        if self.strategy == "exhaustive":
            return self._next_enumerated()
        if self.strategy == "random":
            return self._sample()
        if self.strategy == "rl":
            return self._controller_proposal()
        if self._proposals < self.population_size:
            sampled = self._sample()
            if sampled is not None or not self._evaluated_population():
                return sampled
        child = self._breed()
        # Nothing new could be bred (every offspring a duplicate or rejected): a random immigrant
        # from the space keeps the search going instead of ending it below its budget.
        return self._sample() if child is None else child

    def _sample(self):
        for _ in range(self.max_attempts):
            expr = self.space.sample(self._rng)
            fp = self._screen(expr)
            if fp not in (None, "neutral"):
                return expr, fp, "sample", []
        return None

    def _next_enumerated(self):
        if self._enum_iterator is None:
            self._enum_iterator = itertools.islice(self._enumeration(), self._enum_cursor, None)
        for expr in self._enum_iterator:
            self._enum_cursor += 1
            fp = self._screen(expr)
            if fp not in (None, "neutral"):
                return expr, fp, "exhaustive", []
        return None

    # --- the controller ("rl") --------------------------------------------------------------------

    def _controller_proposal(self):
        """A new function the controller samples; a random one if it only repeats itself."""
        for _ in range(self.max_attempts):
            tokens = self._controller.sample(self._rng)
            expr = self._controller.expression(tokens)
            fp = self._screen(expr)
            if fp not in (None, "neutral"):
                self._pending_tokens = {fp: tokens}
                return expr, fp, "controller", []
            reward = self._rejection_reward(str(expr))
            if reward is not None:
                self._controller.update(tokens, reward)
                self._note_controller(self._proposals // self.population_size)
        return self._sample()

    def _rejection_reward(self, text: str) -> float | None:
        """What a function the controller sampled but the oracle did not propose teaches it: the
        worst reward so far when `check` rejected it, nothing when it is a duplicate (its trial's
        result teaches the controller once; counting it at every re-sampling collapsed the
        policy onto known functions in bench runs, and the search then fell back to random)."""
        fp = self._fingerprint_cache.get(text)
        return None if fp in self._fingerprints else self._worst_reward()

    def _worst_reward(self) -> float | None:
        ranks = [self._rank(tid) for tid in self._ingested if self._individuals[tid]["status"] == _COMPLETED]
        return min(ranks) if ranks else None

    # --- evolution -------------------------------------------------------------------------------

    def _rank(self, trial_id: str) -> float:
        """Larger is better; failed (or not yet evaluated) individuals rank last."""
        fitness = self._individuals[trial_id]["fitness"]
        if fitness is None:
            return -math.inf
        return fitness if self.objective.direction == "max" else -fitness

    def _evaluated_population(self) -> list[str]:
        return [tid for tid in self._population if self._individuals[tid]["status"] != _RUNNING]

    def _tournament(self, members: list[str]) -> str:
        contestants = self._rng.sample(members, min(self.tournament_size, len(members)))
        return max(contestants, key=self._rank)  # ties: the first drawn

    def _offspring(self, members: list[str]):
        """One child (expression, operator, parent ids), not yet screened."""
        first = self._tournament(members)
        if len(members) >= 2 and self._rng.random() < self.crossover_rate:
            second = self._tournament([tid for tid in members if tid != first])
            child = self.space.crossover(
                self._individuals[first]["expression"], self._individuals[second]["expression"], self._rng
            )
            operator, parents = "crossover", [first, second]
            if self._rng.random() < self.mutation_rate:
                child, kind = self.space.propose_mutation(child, self._rng)
                operator += "+" + kind
            return child, operator, parents
        child, kind = self.space.propose_mutation(self._individuals[first]["expression"], self._rng)
        return child, kind, [first]

    def _breed(self):
        members = self._evaluated_population()
        if not members:
            return _WAIT
        found = []
        for _ in range(self.max_attempts):
            child, operator, parents = self._offspring(members)
            parent_fps = [self._individuals[tid]["fingerprint"] for tid in parents]
            fp = self._screen(child, parent_fps)
            for _ in range(_MAX_NEUTRAL_STEPS):
                if fp != "neutral":
                    break
                child, kind = self.space.propose_mutation(child, self._rng)
                operator += "+" + kind
                fp = self._screen(child, parent_fps)
            if fp in (None, "neutral"):
                if fp == "neutral":
                    self._generation_counts(self._proposals // self.population_size)["duplicates"] += 1
                continue
            if any(fp == candidate[1] for candidate in found):
                continue  # the same function bred twice in this round
            found.append((child, fp, operator, parents))
            if len(found) >= self.offspring_candidates:
                break
        if not found:
            return None
        if len(found) == 1:
            return found[0]
        return max(found, key=lambda candidate: self._surrogate(candidate[0]))

    def _function_features(self, expr: Expression | str) -> np.ndarray:
        """The function's outputs on 200 fingerprint probe points (clipped), for the surrogate."""
        from activations.equivalence import _PROBES, evaluate_numpy

        key = str(expr)
        if key not in self._features:
            with np.errstate(all="ignore"):
                values = evaluate_numpy(key, _PROBES[:200])
            self._features[key] = np.clip(np.nan_to_num(values, nan=0.0, posinf=1e4, neginf=-1e4), -1e4, 1e4)
        return self._features[key]

    def _surrogate(self, expr: Expression) -> float:
        """Predicted quality of an unevaluated function: the mean quantile (0 worst, 1 best) of
        its 3 nearest evaluated functions, distance being the RMS difference of their outputs on
        the probe points. Quantiles make the prediction independent of the objective's scale."""
        evaluated = list(self._ingested)
        if not evaluated:
            return 0.0
        ranks = np.array([self._rank(tid) for tid in evaluated])
        order = np.argsort(np.argsort(ranks, kind="stable"), kind="stable")
        quantiles = order / max(1, len(evaluated) - 1)
        others = np.stack([self._function_features(self._individuals[tid]["expression"]) for tid in evaluated])
        distances = np.sqrt(np.mean((others - self._function_features(expr)) ** 2, axis=1))
        nearest = np.argsort(distances, kind="stable")[:3]
        return float(np.mean(quantiles[nearest]))

    def _ingest(self, trial) -> None:
        """Add a finished trial to the population (failed ones with the worst fitness)."""
        info = self._individuals.get(trial.trial_id)
        if info is None or info["status"] != _RUNNING:
            return
        score = trial.score
        if trial.status == TrialStatus.COMPLETED and score is not None and math.isfinite(score):
            info["status"], info["fitness"] = _COMPLETED, float(score)
        else:
            info["status"], info["fitness"] = _FAILED, None
        self._ingested.append(trial.trial_id)
        if self._controller is not None and info.get("tokens"):
            reward = self._rank(trial.trial_id) if info["status"] == _COMPLETED else self._worst_reward()
            if reward is not None:
                self._controller.update(info["tokens"], reward)
                self._note_controller(info["generation"])
        self._population.append(trial.trial_id)
        while len(self._population) > self.population_size:
            if self.selection == "aging":
                self._population.pop(0)
            else:
                worst = min(range(len(self._population)), key=lambda i: (self._rank(self._population[i]), i))
                self._population.pop(worst)

    # --- batch API -------------------------------------------------------------------------------

    def propose_batch(self, n: int | None = None, tuner_id_prefix: str = "batch") -> list[Trial]:
        """Up to `n` new trials (all that can run now when None): one generation in batch mode.

        Fewer come back at the generation barrier, at the end of the search, or when the
        budget is spent; an empty list with `is_finished()` true means the search is over. A
        batch with trials to retry holds only those, in the order they first started.
        Each trial is created through `create_trial` under its own tuner id.
        """
        _check_int("n", n, 1, allow_none=True)
        self._maybe_resume()
        # A batch that retries trials (failed ones, or those a stopped run left unfinished) holds
        # only those: new proposals wait for their results, so a resumed search breeds from the
        # same population as one that never stopped.
        retrying = bool(self._retry_queue)
        trials = []
        index = 0
        while (n is None or len(trials) < n) and not (retrying and not self._retry_queue):
            while f"{tuner_id_prefix}{index}" in self.ongoing_trials:
                index += 1
            trial = self._create_trial(f"{tuner_id_prefix}{index}")  # no IDLE sleep here
            if trial.status != TrialStatus.RUNNING:
                break
            trials.append(trial)
        return trials

    def report(self, trial_id: str, value: float | Mapping[str, float] | None = None, error: str | None = None,
               *, curve: Sequence[float | None] | None = None, stopped_at: int | None = None):
        """Finish a trial from a batch executor: its objective value (or metrics dict), or an
        `error` message. An error or a NaN or infinite value makes the trial INVALID, so KerasTuner's
        retries (`max_retries_per_trial`) apply before it is FAILED with the worst fitness.

        `curve` (the objective after each epoch) feeds the stopping rule's thresholds for later
        trials; `stopped_at` is the epoch (from 1) after which the rule stopped this trial.
        """
        if trial_id not in self.trials:
            raise KeyError(f"unknown trial id {trial_id!r}")
        trial = self.trials[trial_id]
        if error is None and value is None:
            raise ValueError("report() needs a value or an error message")
        if trial.status != TrialStatus.RUNNING:
            raise ValueError(
                f"trial {trial_id!r} is {trial.status}, not RUNNING: report each trial once, after "
                "create_trial / propose_batch handed it out"
            )
        if stopped_at is not None:
            _check_int("stopped_at", stopped_at, 1)
        info = self._individuals.get(trial_id)
        if info is not None:
            if curve is not None:
                info["curve"] = [_finite_or_none(v) for v in curve]
            info["stopped_at"] = stopped_at
        if error is None:
            metrics = dict(value) if isinstance(value, Mapping) else {self.objective.name: float(value)}
            self.update_trial(trial_id, metrics)
            trial.status = TrialStatus.COMPLETED
        else:
            trial.status = TrialStatus.INVALID
            trial.message = str(error)
        self.end_trial(trial)
        return self.trials[trial_id]

    # --- early stopping ------------------------------------------------------------------------

    def stopping_thresholds(self) -> list[float | None]:
        """Per epoch index i (after epoch i + 1): the objective value a running trial's best so
        far must reach to go on, from the curves of the trials that have ended (None: no bar
        there). Empty without a stopping rule. A batch driver hands this to its trainings."""
        if self.stopping is None:
            return []
        ended = [self._individuals[tid] for tid in self._ingested if self._individuals[tid].get("curve")]
        return self.stopping.thresholds([info["curve"] for info in ended], self.objective.direction,
                                        [info.get("stopped_at") is not None for info in ended])

    def observe(self, trial_id: str, epoch: int, value: float | None, may_stop: bool = True) -> bool:
        """Record a running trial's objective after `epoch` (from 0); True when the stopping rule
        says to stop it now (the trial then ends with its best value so far). `may_stop=False`
        (the trial's last epoch) only records: a trial that ran its whole budget was not stopped."""
        info = self._individuals.get(trial_id)
        if info is None or info["status"] != _RUNNING:
            return False
        curve = info.setdefault("curve", [])
        del curve[epoch:]  # a trial started again (a retry) records its curve afresh
        curve.extend([None] * (epoch - len(curve)) + [_finite_or_none(value)])
        info["stopped_at"] = None
        if not may_stop or self.stopping is None or not self.stopping.should_stop(
                curve, self.stopping_thresholds(), self.objective.direction):
            return False
        info["stopped_at"] = epoch + 1
        return True

    def is_finished(self) -> bool:
        """True when nothing is in flight and the budget is spent or the strategy has nothing
        left (known once `create_trial` / `propose_batch` answered STOPPED)."""
        if self.ongoing_trials or self._retry_queue or self._running_count():
            return False
        return bool(self.max_trials and len(self.trials) >= self.max_trials) or self._stopped

    # --- reporting -------------------------------------------------------------------------------

    @property
    def population(self) -> list[dict]:
        """The current population, oldest first: trial id, expression, fitness (None = failed)."""
        return [
            {"trial_id": tid, "expression": self._individuals[tid]["expression"], "fitness": self._individuals[tid]["fitness"]}
            for tid in self._population
        ]

    def lineage(self, trial_id: str) -> dict:
        """Expression, operator, parents and generation of one trial."""
        return dict(self._individuals[trial_id])

    def counts(self) -> dict:
        """Totals: proposed, duplicates and rejected offspring, completed and failed trials."""
        totals = {"proposed": 0, "duplicates": 0, "rejected": 0}
        for counts in self._generations:
            for key in totals:
                totals[key] += counts[key]
        statuses = [info["status"] for info in self._individuals.values()]
        totals["completed"] = statuses.count(_COMPLETED)
        totals["failed"] = statuses.count(_FAILED)
        totals["running"] = statuses.count(_RUNNING)
        totals["stopped_early"] = sum(1 for info in self._individuals.values() if info.get("stopped_at"))
        return totals

    def history(self) -> list[dict]:
        """Per generation: best, median and best-so-far fitness of its evaluated trials, the
        number of distinct functions proposed so far, its duplicate and rejected offspring, and
        its trials the stopping rule cut short; for "rl", the controller after its last update in
        the generation (`controller_baseline`, `controller_certainty`, `controller_updates`).
        A generation is a population's worth of proposals, whatever the strategy."""
        better = max if self.objective.direction == "max" else min
        rows, best_so_far, distinct = [], None, 0
        for generation, counts in enumerate(self._generations):
            members = [info for info in self._individuals.values() if info["generation"] == generation]
            scores = [info["fitness"] for info in members if info["status"] == _COMPLETED]
            distinct += len(members)
            best = better(scores) if scores else None
            if best is not None:
                best_so_far = best if best_so_far is None else better(best_so_far, best)
            rows.append(
                {
                    "generation": generation,
                    "proposed": counts["proposed"],
                    "completed": len(scores),
                    "failed": sum(1 for info in members if info["status"] == _FAILED),
                    "running": sum(1 for info in members if info["status"] == _RUNNING),
                    "stopped_early": sum(1 for info in members if info.get("stopped_at")),
                    "best": best,
                    "median": statistics.median(scores) if scores else None,
                    "best_so_far": best_so_far,
                    "distinct_fingerprints": distinct,
                    "duplicates": counts["duplicates"],
                    "rejected": counts["rejected"],
                    **{key: value for key, value in counts.items() if key.startswith("controller_")},
                }
            )
        return rows


# --- Tuner conveniences --------------------------------------------------------------------------


def _screen_seeds(seed_functions: Sequence[Expression]) -> tuple[dict[str, str], dict[str, str | None]]:
    """Say now which of the user's seed functions the search will skip, and why: rejected by
    `check`, or computing the same function as an earlier one. Returns what `_screen` would
    compute again when the seeds are proposed: {expression text: fingerprint} and
    {fingerprint: `check`'s verdict}."""
    first_with: dict[str, Expression] = {}
    fingerprints: dict[str, str] = {}
    checks: dict[str, str | None] = {}
    for expr in seed_functions:
        fp = None
        try:
            fp = fingerprints[str(expr)] = fingerprint(expr)
            reason = checks[fp] = check(expr) if fp not in checks else checks[fp]
        except Exception as error:  # noqa: BLE001 - _screen rejects it the same way
            reason = f"it cannot be evaluated: {error}"
        if reason is None and fp in first_with:
            reason = f"it computes the same function as {first_with[fp]}"
        if reason is not None:
            warnings.warn(f"seed function {expr} will not be proposed: {reason}", stacklevel=3)
        elif fp is not None:
            first_with[fp] = expr
    return fingerprints, checks


def activation_from_hp(hp, **layer_kwargs):
    """A new Keras activation layer for the trial's genome: `activations.get(hp.get("activation"))`.

    `layer_kwargs` go to `activations.get` (e.g. ``sharing="channel"``).
    """
    from activations.named import get

    return get(hp.get(GENOME), **layer_kwargs)


_ORACLE_ARGUMENTS = frozenset(inspect.signature(EvolutionaryOracle.__init__).parameters) - {"self"}


def _tuner_arguments() -> frozenset[str]:
    names = set()
    for init in (keras_tuner.Tuner.__init__, keras_tuner.engine.base_tuner.BaseTuner.__init__):
        names |= {p.name for p in inspect.signature(init).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD}
    return frozenset(names - {"self", "oracle"})


def _check_tuner_arguments(kwargs: Mapping[str, Any]) -> None:
    """A misspelt argument named with the closest of the oracle's and the tuner's own (KerasTuner
    alone says only "Unrecognized arguments ... for BaseTuner.__init__()", without a hint that
    the oracle's arguments go here too)."""
    tuner_arguments = _tuner_arguments()
    allowed = _ORACLE_ARGUMENTS | tuner_arguments
    unknown = sorted(set(kwargs) - allowed)
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, sorted(allowed), n=1, cutoff=0.6)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ValueError(f"EvolutionaryTuner got unknown argument(s) {', '.join(hints)}; it takes the arguments of "
                     f"EvolutionaryOracle ({', '.join(sorted(_ORACLE_ARGUMENTS))}) and of keras_tuner.Tuner "
                     f"({', '.join(sorted(tuner_arguments))})")


def _check_reserved_names(hyperparameters) -> None:
    """The oracle owns the hyper-parameters `GENOME` ("activation") and the lineage names; one
    the user declared would be silently overwritten, and a hypermodel reading it for Keras'
    `activation=` argument would get an expression text Keras cannot read."""
    if hyperparameters is None:
        return
    taken = [hp.name for hp in hyperparameters.space if hp.name in RESERVED_NAMES]
    if taken:
        raise ValueError(
            f"hyper-parameter name(s) {taken} belong to the oracle: {GENOME!r} holds the searched expression "
            "(build the layer with activations.oracle.activation_from_hp(hp)) and the others its lineage; give your "
            "own hyper-parameters other names")


class EvolutionaryTuner(keras_tuner.Tuner):
    """`keras_tuner.Tuner` with an `EvolutionaryOracle`, like `keras_tuner.RandomSearch`.

    Keyword arguments of `EvolutionaryOracle` go to the oracle, the rest to `keras_tuner.Tuner`
    (directory, project_name, overwrite, ...). Build the model with `activation_from_hp(hp)`.
    """

    def __init__(self, hypermodel=None, **kwargs):
        _check_tuner_arguments(kwargs)
        oracle_kwargs = {key: kwargs.pop(key) for key in list(kwargs) if key in _ORACLE_ARGUMENTS}
        super().__init__(oracle=EvolutionaryOracle(**oracle_kwargs), hypermodel=hypermodel, **kwargs)
        self._fit_epochs: int | None = None  # of the running trial's `fit`, once it starts (`_FitEpochs`)
        self._ctrl_c = CtrlC()

    def save(self):
        """KerasTuner's save, with the tuner's own ``<tuner_id>.json`` written atomically too
        (KerasTuner writes it in place, so a crash can leave it empty)."""
        if not self._is_worker():
            self.oracle.save()
        _write_json_atomic(self._get_tuner_fname(), self.get_state())

    def reload(self):
        """KerasTuner's reload, where an unreadable ``<tuner_id>.json`` is named and then
        ignored: KerasTuner's Tuner keeps nothing in it (its state is ``{}``), so nothing is lost."""
        if not self._is_worker():
            self.oracle.reload()
        try:
            state = _read_json(self._get_tuner_fname())
        except StateFileError as error:
            if type(self).get_state is not EvolutionaryTuner.get_state:  # a subclass that keeps state there
                raise StateFileError(error.path, f"{error}: restore it from a backup, or delete it to resume "
                                                 f"without {type(self).__name__}'s own state") from None
            warnings.warn(f"{error}; it holds no search state, so the search resumes without it",
                          RuntimeWarning, stacklevel=2)
            state = {}
        self.set_state(state)

    def search(self, *fit_args, **fit_kwargs):
        """KerasTuner's search, which Ctrl-C stops even when the KeyboardInterrupt lands in a
        finaliser or a garbage-collector callback inside TensorFlow, where Python only prints
        it and goes on (`activations.interrupts`): it is delivered again a moment later, and
        at the latest the search stops at the end of the running epoch. The stopped trial runs
        again when the search is resumed."""
        with self._ctrl_c:
            return super().search(*fit_args, **fit_kwargs)

    def pre_create_trial(self):
        self._ctrl_c.raise_if_seen("the search")
        super().pre_create_trial()

    def run_trial(self, trial, *args, **kwargs):
        """KerasTuner's trial, with Ctrl-C kept as Ctrl-C: TensorFlow hands one that lands in a
        Python callback back as a `SystemError` caused by the KeyboardInterrupt, which KerasTuner
        would take for a failed trial and search on. It stops the search instead; the trial runs
        again when the search is resumed."""
        self._fit_epochs = None  # the last epoch never stops a trial
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), _FitEpochs(self)]
        try:
            return super().run_trial(trial, *args, **kwargs)
        except SystemError as error:
            if isinstance(error.__cause__, KeyboardInterrupt):
                raise KeyboardInterrupt(f"trial {trial.trial_id} was stopped") from error
            raise

    def on_epoch_end(self, trial, model, epoch, logs=None):
        """With a stopping rule, stops a hopeless trial's `fit` after this epoch; never after the
        last epoch of `fit` (`_FitEpochs`), which is only recorded: a trial that ran its whole
        budget was not stopped early, and the report would count it so.

        Applies when the oracle has one objective. A worker of KerasTuner's distributed mode
        asks the chief's oracle, which holds the rule and the other trials' curves, through
        `update_trial` (marked with `EPOCH_METRIC`), the one call that reaches it with values.
        """
        super().on_epoch_end(trial, model, epoch, logs)
        self._ctrl_c.raise_if_seen(f"trial {trial.trial_id}")
        oracle = self.oracle
        name = getattr(getattr(oracle, "objective", None), "name", None)
        if not logs or name not in logs:
            return
        last = epoch + 1 >= (self._fit_epochs or math.inf)
        if _is_remote(oracle):
            reply = oracle.update_trial(trial.trial_id, {name: float(logs[name]), EPOCH_METRIC: float(epoch),
                                                         LAST_EPOCH_METRIC: float(last)}, step=epoch)
            stop = getattr(reply, "status", None) == TrialStatus.STOPPED
        else:
            stop = getattr(oracle, "stopping", None) is not None and oracle.observe(
                trial.trial_id, epoch, float(logs[name]), may_stop=not last)
        if stop:
            model.stop_training = True


class _FitEpochs(keras.callbacks.Callback):
    """Tells the tuner how many epochs `fit` runs, from the parameters Keras gives callbacks: a
    hypermodel may set them itself instead of taking `search`'s."""

    def __init__(self, tuner):
        super().__init__()
        self.tuner = tuner

    def __deepcopy__(self, memo):  # KerasTuner copies the callbacks for each execution of a trial
        return self

    def on_train_begin(self, logs=None):
        self.tuner._fit_epochs = self.params.get("epochs")


def _is_remote(oracle) -> bool:
    """Whether `oracle` is a worker's gRPC client of the chief's oracle (distributed mode)."""
    from keras_tuner.src.distribute.oracle_client import OracleClient

    return isinstance(oracle, OracleClient)
