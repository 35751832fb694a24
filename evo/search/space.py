"""Search spaces: a YAML file → a validated `SearchSpace`, sampled define-by-run by Optuna.

A parameter range is written as a scalar (fixed), a list (categorical choices), or a mapping
`{low, high, log}` (a numeric range; ints stay ints). Every error names the key, what it must be and
what it got, so the file can be fixed without reading code.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evo.checks import check_int
from evo.errors import ConfigError, EvoError

SCENARIOS = ("class_incremental", "data_incremental", "mixed", "domain_incremental")
OBJECTIVES = ("accuracy", "params")
BUDGET_KINDS = ("fraction_of_joint", "flops", "seconds")
POLICIES = ("search", "random", "fast_path")  # the search, and the two baselines it must beat
TIES = ("best", "grow", "lossless", "loss")  # which candidate wins when validation cannot tell them apart (`best_trial`)
VALIDATION = ("learn", "hold_out")  # whether the committed version learns the held-out images after the choice


class SpaceError(ConfigError):
    """A search-space file is malformed; the message names the key."""


@dataclass(frozen=True)
class Range:
    """One searchable value: fixed, a categorical choice, or a numeric interval."""

    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    @classmethod
    def parse(cls, key: str, spec: Any) -> Range:
        if isinstance(spec, dict):
            unknown = set(spec) - {"low", "high", "log"}
            if unknown or not {"low", "high"} <= set(spec):
                raise SpaceError(f"{key}: a range is {{low: L, high: H, log: false}}; got keys {sorted(spec)}")
            lo, hi = spec["low"], spec["high"]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)) or lo > hi:
                raise SpaceError(f"{key}: low and high must be numbers with low <= high; got {lo!r}, {hi!r}")
            log = spec.get("log", False)
            if log not in (True, False):  # 0 and 1 too, as earlier versions accepted (runs keep their space)
                raise SpaceError(f"{key}: log must be true or false; got {log!r}")
            log = bool(log)
            if log and lo <= 0:
                raise SpaceError(f"{key}: a log range needs low > 0; got {lo!r}")
            return cls(low=lo, high=hi, log=log, integer=isinstance(lo, int) and isinstance(hi, int))
        if isinstance(spec, list):
            if not spec:
                raise SpaceError(f"{key}: an empty list of choices; give at least one value")
            return cls(choices=tuple(spec))
        return cls(choices=(spec,))

    def admits(self, value: Any) -> bool:
        """Whether `value` is one this range can take (a choice, or inside the interval)."""
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (self.integer and not isinstance(value, int)):
            return False
        return self.low <= value <= self.high

    def values(self) -> tuple[Any, ...]:
        """Every value a trial can take (the interval's ends for a numeric range)."""
        return self.choices if self.choices is not None else (self.low, self.high)

    def trial_values(self) -> list[Any]:
        """`values()` as a trial receives them: ints for an integer range."""
        return [int(v) if self.integer else v for v in self.values()]

    def suggest(self, trial, name: str) -> Any:
        if self.choices is not None:
            return self.choices[0] if len(self.choices) == 1 else trial.suggest_categorical(name, list(self.choices))
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log)


@dataclass(frozen=True)
class SearchSpace:
    """A validated space. `policy` picks how a round chooses: 'search' (Optuna, with the no-growth fast
    path always tried), 'random' (one random growth, committed unjudged) or 'fast_path' (never grow);
    the last two are the baselines the search is measured against. Candidates are ranked on
    `validation_per_class` images per class held out of each increment's training data, never on the
    test split; with `validation: learn` (the default; 'hold_out' where closed-form and gradient strategies
    meet, see `_leaky_strategies`) the committed version then learns them too
    (`evo.search.absorb`), and later rounds take them out of their candidates' statistics again. `min_ops: 1` spends every sampled trial on growth: the round's no-growth candidates are the
    enqueued ones, so Optuna's draws go to architectures rather than to training variants of the parent."""

    name: str
    scenario: dict[str, Any]
    model: dict[str, Any]
    memory: int
    operators: dict[str, dict[str, Range]]
    max_ops: int
    training: dict[str, Range]
    budget: tuple[str, float]
    trials: int
    concurrency: int
    objective: tuple[str, ...]
    policy: str = "search"
    min_ops: int = 0  # every sampled candidate grows at least this much (the enqueued no-growth ones still run)
    validation_per_class: int = 100
    validation: str = "learn"  # 'learn': the committed version learns the held-out images after the choice
    ties: str = "best"  # 'grow': within noise of the best, the largest wins; 'lossless': an exact head;
    # 'loss': within noise of the best, the lowest validation log-loss
    latents: Any = None  # evo.learn.latent.StoreConfig, or None (`latents: none`: today's behaviour)
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return self.raw


_MODEL_KEYS = {"name", "input_size", "pretrained", "options"}
_TOP_KEYS = {"name", "scenario", "model", "memory", "operators", "max_ops", "min_ops", "training", "budget", "trials",
             "concurrency", "objective", "description", "policy", "validation_per_class", "latents",
             "ties", "validation"}


def load_space(path: str | Path) -> SearchSpace:
    p = Path(path)
    if not p.is_file():
        raise SpaceError(f"search space {p} not found; the shipped ones are in search_spaces/")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SpaceError(f"{p} is not a UTF-8 text file; a search space is YAML (see search_spaces/)") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise SpaceError(f"{p} is not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    _check_size(doc, p)
    return parse_space(doc, source=str(p))


MAX_SPACE_VALUES = 100_000  # a search space is a page of settings; far more values is an expansion bomb


def _check_size(doc: Any, path: Path) -> None:
    """Refuse a document that expands to more than MAX_SPACE_VALUES values (YAML aliases of aliases
    grow tenfold per level and would be written out in full to the run's config.json), counted
    without expanding it."""
    stack, seen = [doc], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_SPACE_VALUES:
            raise SpaceError(f"{path} expands to more than {MAX_SPACE_VALUES:,} values (YAML aliases of aliases?); "
                             "a search space is a page of settings: write the values out")
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def parse_space(doc: Any, source: str = "search space") -> SearchSpace:
    from evo.ops import get_op, list_ops

    if not isinstance(doc, dict):
        raise SpaceError(f"{source}: the top level must be a mapping of keys ({', '.join(sorted(_TOP_KEYS))})")
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise SpaceError(f"{source}: unknown key(s) {unknown}; allowed keys: {', '.join(sorted(_TOP_KEYS))}")
    for key in ("scenario", "model", "budget"):
        if not isinstance(doc.get(key), dict):
            raise SpaceError(f"{source}: '{key}' is required and must be a mapping")

    scenario = dict(doc["scenario"])
    kind = scenario.get("kind", "class_incremental")
    if kind not in SCENARIOS:
        raise SpaceError(f"scenario.kind must be one of {', '.join(SCENARIOS)}; got {kind!r}")
    scenario["kind"] = kind
    src = scenario.get("source")
    names = src if isinstance(src, list) and kind == "domain_incremental" else [src]
    if not names or not all(isinstance(n, str) and n for n in names):
        raise SpaceError("scenario.source is required and is a name or a path (e.g. fashion-mnist, digits, a folder "
                         f"or a CSV path; a list of them for domain_incremental); got {src!r}")
    model = dict(doc["model"])
    if not isinstance(model.get("name"), str):
        raise SpaceError("model.name is required: a zoo model (e.g. efficientnet_lite0) or a saved model folder")
    bad = sorted(set(model) - _MODEL_KEYS)
    if bad:
        raise SpaceError(f"model: unknown key(s) {bad}; allowed: {', '.join(sorted(_MODEL_KEYS))} (a zoo model's own "
                         "options, such as small_cnn's width, go under model.options)")
    if not isinstance(model.get("options", {}), dict):
        raise SpaceError(f"model.options must map a zoo model's option names to values; got {model['options']!r}")
    if not isinstance(model.get("pretrained", True), bool):
        raise SpaceError(f"model.pretrained must be true or false; got {model['pretrained']!r}")
    if "per_class_test" in scenario and scenario["per_class_test"] is not None:
        check_int("scenario.per_class_test (test images per class: each round is scored on them)",
                  scenario["per_class_test"], 1, error=SpaceError)
    if doc.get("description") is not None and not isinstance(doc["description"], str):
        raise SpaceError(f"{source}: description must be text; got {doc['description']!r:.80}")

    ops_doc = doc.get("operators") or {}
    if not isinstance(ops_doc, dict):
        raise SpaceError("operators must map operator names to their parameter ranges")
    operators: dict[str, dict[str, Range]] = {}
    for op_name, params in ops_doc.items():
        if op_name == "add_classes":
            raise SpaceError("operators: add_classes is applied automatically when new classes arrive; remove it")
        if op_name not in list_ops():
            raise SpaceError(f"operators: unknown operator {op_name!r}; valid operators: {', '.join(list_ops())}")
        params = params or {}
        if not isinstance(params, dict):
            raise SpaceError(f"operators.{op_name} must map parameter names to ranges")
        allowed = set(get_op(op_name).defaults)
        bad = sorted(set(params) - allowed)
        if bad:
            raise SpaceError(f"operators.{op_name}: unknown parameter(s) {bad}; allowed: {', '.join(sorted(allowed))}")
        operators[op_name] = {k: Range.parse(f"operators.{op_name}.{k}", v) for k, v in params.items()}
        for k, r in operators[op_name].items():  # let the operator itself judge each value
            for v in r.trial_values():
                try:
                    get_op(op_name).check_params({k: v})
                except ConfigError as e:
                    raise SpaceError(f"operators.{op_name}.{k}: {e}") from None

    training = _training(doc.get("training") or {})

    budget_doc = doc["budget"]
    kinds = [k for k in BUDGET_KINDS if k in budget_doc]
    if len(kinds) != 1 or set(budget_doc) - set(BUDGET_KINDS) - {"joint_epochs"}:
        raise SpaceError(f"budget must have exactly one of {', '.join(BUDGET_KINDS)} (plus optional joint_epochs); "
                         f"got {sorted(budget_doc)}")
    amount = budget_doc[kinds[0]]
    if not isinstance(amount, (int, float)) or isinstance(amount, bool) or not math.isfinite(amount) or amount <= 0:
        raise SpaceError(f"budget.{kinds[0]} must be a positive number; got {amount!r}")
    je = budget_doc.get("joint_epochs", 1)  # absent: pricing's default (evo.search.pricing.DEFAULT_JOINT_EPOCHS)
    if isinstance(je, bool) or not isinstance(je, (int, float)) or not 0 < je < math.inf:
        raise SpaceError("budget.joint_epochs (the epochs joint retraining, the budget's yardstick, is priced at) "
                         f"must be a positive number; got {je!r}")

    objective = doc.get("objective", "accuracy")
    objective = tuple(objective) if isinstance(objective, list) else (objective,)
    if not objective or objective[0] != "accuracy" or any(o not in OBJECTIVES for o in objective) \
            or len(set(objective)) != len(objective):
        raise SpaceError(f"objective must be 'accuracy' or [accuracy, params]; got {doc.get('objective')!r}")

    policy = doc.get("policy", "search")
    if policy not in POLICIES:
        raise SpaceError(f"policy must be one of {', '.join(POLICIES)}; got {policy!r}")

    ties = doc.get("ties", "best")
    if ties not in TIES:
        raise SpaceError(f"ties must be one of {', '.join(TIES)}; got {ties!r}")
    if ties == "grow" and "params" in objective:
        raise SpaceError("ties: grow prefers the larger of two tied candidates and objective [accuracy, params] the "
                         "smaller; drop one of them")

    leaky = _leaky_strategies(training)
    validation = doc.get("validation", "hold_out" if leaky else "learn")
    if validation not in VALIDATION:
        raise SpaceError(f"validation must be one of {', '.join(VALIDATION)}; got {validation!r} ('learn': the "
                         "committed version learns the round's held-out images after the choice; 'hold_out': never)")
    if validation == "learn" and leaky:
        raise SpaceError("validation: learn with gradient strategies beside the closed-form ones: a gradient "
                         "candidate starts from a head that learned the held-out images and cannot take them out "
                         f"again, so they would flatter its score; use validation: hold_out, or drop {', '.join(leaky)}")

    latents = _latents(doc.get("latents"), training)
    max_ops, min_ops = _positive_int(doc, "max_ops", 1, minimum=0), _positive_int(doc, "min_ops", 0, minimum=0)
    if min_ops > max_ops:
        raise SpaceError(f"min_ops ({min_ops}) must not exceed max_ops ({max_ops})")
    if min_ops and not operators:
        raise SpaceError(f"min_ops {min_ops} asks every sampled candidate to grow, but the space has no operators")

    return SearchSpace(
        name=str(doc.get("name") or Path(source).stem),
        scenario=scenario, model=model,
        memory=_positive_int(doc, "memory", 500),
        operators=operators,
        max_ops=max_ops,
        min_ops=min_ops,
        training=training,
        budget=(kinds[0], float(amount)),
        trials=_positive_int(doc, "trials", 8),
        concurrency=_positive_int(doc, "concurrency", 2),
        objective=objective,
        policy=policy,
        validation_per_class=_positive_int(doc, "validation_per_class", 100),
        ties=ties,
        validation=validation,
        latents=latents,
        raw=doc,
    )


FIXED_KNOBS = ("expand",)  # training knobs that shape the head's features for the whole run


def _training(training_doc: Any) -> dict[str, Range]:
    """The training ranges, checked against the options of the strategies the space can pick: a key
    none of them has is an error naming it, and each strategy judges its keys' values together
    (`check_training`)."""
    from evo.learn.strategies import list_strategies, option_defaults

    if not isinstance(training_doc, dict):
        raise SpaceError("training must map option names (strategy, epochs, lr, ...) to ranges")
    training = {k: Range.parse(f"training.{k}", v) for k, v in training_doc.items()}
    names = list(training["strategy"].values()) if "strategy" in training else ["evo"]
    for name in names:
        if not isinstance(name, str) or name not in list_strategies():
            raise SpaceError(f"training.strategy: unknown strategy {name!r}; valid: {', '.join(list_strategies())}")
    for key in training:
        if key == "strategy":
            continue
        takers = [name for name in names if key in option_defaults(name)]
        if not takers:
            accepted = sorted({k for name in names for k in option_defaults(name)})
            raise SpaceError(f"training.{key}: no strategy of this space ({', '.join(names)}) has an option "
                             f"{key!r}; their options: {', '.join(accepted)}")
        if key in FIXED_KNOBS and (training[key].choices is None or len(training[key].values()) != 1):
            raise SpaceError(f"training.{key} is fixed when the first increment taps the graph, so every candidate "
                             f"of a run shares it; give one value (e.g. `{key}: 2000`)")
    for name in names:
        check_training(name, {k: r for k, r in training.items() if k in option_defaults(name)})
    return training


def check_training(name: str, ranges: dict[str, Range], build: Callable[..., Any] | None = None) -> None:
    """Options that are valid alone can still clash (evo_latent's `train_taps: deepest` needs `head_init:
    fresh`), so they are judged together: each value of each key is built beside each value of every
    other key, the remaining keys at their first value (pairwise: about (keys × values)² / 2 builds, each
    cheap; numeric ranges at their ends), with `build(**options)` (default: the strategy `name`;
    `check_space` passes a Learner on the model). A bad value or a two-option clash is thus named before
    a run starts rather than failing trials; a clash of three options or more still fails its trials by
    name. The culprit is a value no build accepted whose build passes once it is swapped back (for an
    accepted value of its key, else the strategy's default): named by its key when it fails on its own
    too, else with the combination it clashes in; with no culprit, the first failing combination."""
    if build is None:
        from evo.learn.strategies import make_strategy

        build = functools.partial(make_strategy, name)

    keys = sorted(ranges)
    values = {k: ranges[k].trial_values() for k in keys}
    base = {k: vs[0] for k, vs in values.items()}
    combos = [base, *({**base, k: v} for k in keys for v in values[k][1:]),
              *({**base, a: va, b: vb} for a, b in itertools.combinations(keys, 2)
                for va in values[a][1:] for vb in values[b][1:])]
    accepted: dict[str, dict[str, Any]] = {k: {} for k in keys}  # key → repr(value) → value (values may be lists)
    failed: list[tuple[dict[str, Any], EvoError]] = []
    for options in combos:
        try:
            build(**options)
        except EvoError as e:
            failed.append((options, e))
            continue
        for k, v in options.items():
            accepted[k].setdefault(repr(v), v)
    if not failed:
        return
    key, options, e = _culprit(failed, accepted, build)
    if key is not None:
        raise SpaceError(f"training.{key}: {e}")
    drawn = ", ".join(f"{k}: {v}" for k, v in options.items())
    raise SpaceError(f"training: {e} (a combination this space can draw for {name}: {drawn}; "
                     "narrow the ranges so every combination is valid)")


def _culprit(failed: list[tuple[dict[str, Any], EvoError]], accepted: dict[str, dict[str, Any]],
             build: Callable[..., Any]) -> tuple[str | None, dict[str, Any], EvoError]:
    """(key, options, error) of the first value to blame (see `check_training`); key None for a clash."""
    for options, e in failed:
        for k, v in options.items():
            if repr(v) in accepted[k]:
                continue
            swapped = ({**options, k: next(iter(accepted[k].values()))} if accepted[k]
                       else {o: x for o, x in options.items() if o != k})
            try:
                build(**swapped)
            except EvoError:
                continue
            try:
                build(**{k: v})
            except EvoError:
                return k, options, e  # wrong on its own
            return None, options, e  # wrong only beside the others' values
    return None, *failed[0]


def _leaky_strategies(training: dict[str, Range]) -> list[str]:
    """The gradient strategies of a space that also has closed-form ones (else none): a gradient candidate
    starts from a parent whose head learned the held-out images and cannot take them out again, so with
    `validation: learn` it would be scored on images it has seen. The default is then 'hold_out'."""
    from evo.search.absorb import learns_heldout

    names = training["strategy"].values() if "strategy" in training else ("evo",)
    gradient = [n for n in names if not learns_heldout({"strategy": n})]
    return gradient if len(gradient) < len(names) else []


def _latents(doc: Any, training: dict[str, Range]) -> Any:
    """The latent store's config (`latents: {cut, codec, budget_mb}`), or None for `latents: none`."""
    from evo.learn.latent import StoreConfig

    try:
        config = StoreConfig.parse(doc)
    except ConfigError as e:
        raise SpaceError(str(e)) from None
    names = training["strategy"].values() if "strategy" in training else ("evo",)
    if config is None and "evo_latent" in names:
        raise SpaceError("training.strategy evo_latent trains on stored latents; add `latents: {cut: 8, codec: fp16}` "
                         "to the space or drop evo_latent")
    return config


def _positive_int(doc: dict[str, Any], key: str, default: int, minimum: int = 1) -> int:
    return check_int(key, doc.get(key, default), minimum, error=SpaceError)
