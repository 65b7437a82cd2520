"""Fuzz targets for the config layer (issue 10): any input gives a valid value or a lowbit error.

Each target feeds random or mutated input to a parser and passes when the parser returns a
value that is valid (it round-trips) or raises a :class:`lowbit.errors.LowbitError`. Any other
exception (a builtins ``TypeError``/``ValueError``/``KeyError``/``RecursionError`` leaking out)
fails the test and hypothesis shrinks it to a minimal input.

Bounded: ``max_examples`` per target, no deadline; the file runs in ~10-15 s on two cores.
Examples per run (``pytest --hypothesis-show-statistics``): 300 for each of the 12 targets
(QuantConfig.from_dict on random and on mutated dicts, QuantScheme.from_dict, from_json,
from_yaml, get_preset, get_format, Granularity.parse, the format/granularity constructors,
PTQOptions, parse_algorithms, TensorQuantSpec): 3600 in all, 0.1-12% accepted per target. Run
by hand with LOWBIT_FUZZ_EXAMPLES=3000 (36 000 examples): no failure. Found and fixed so far:
the builtins errors listed in issue 10, json.loads' RecursionError on deep nesting, and PyYAML's
OverflowError on ``"\\U80001000"``.
"""

from __future__ import annotations

import copy
import json
import math
import os

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lowbit.config import QuantConfig, QuantMode, QuantScheme, TensorQuantSpec
from lowbit.errors import LowbitError
from lowbit.formats import CodebookFormat, FloatFormat, GridFormat, IntFormat, get_format
from lowbit.granularity import Granularity
from lowbit.presets import PRESETS, get_preset
from lowbit.ptq.options import ALGORITHMS, PTQOptions, parse_algorithms

# LOWBIT_FUZZ_EXAMPLES=20000 fuzzes deeper by hand; the suite keeps the bounded default.
FUZZ = settings(
    max_examples=int(os.environ.get("LOWBIT_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- inputs -----------------------------------------------------------------------------------
# Values that sit on validation edges: wrong types, bools posing as ints, NaN, huge numbers.
EDGE = [
    None, True, False, 0, 1, -1, 2, 8, 2.5, 1e30, 10**30, float("nan"), float("inf"), "",
    "int8", "INT4", "int9x", "fp8", "nf4", "kmeans16", "kmeans1", "binary", "bf16",
    "per_group:0", "per_group:2.5", "per_channel:7", "per_channel:-1", "per_token", "per_tensor",
    "static", "cast", "weight_only", "mse", "GPTQ", "awq", "rtn", [], {}, [1], ["x"], {"x": 1},
    "W8A8", "1", "abc",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(EDGE),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)


def _valid_dicts() -> list[dict]:
    """``to_dict()`` of configs that use every field, one per preset plus a rich one."""
    rich = QuantConfig(
        get_preset("W8A8"),
        include=("encoder", "decoder.*"),
        exclude=("encoder.head",),
        overrides=(("dec.fc?", get_preset("W4A16-g128")), ("enc.*", get_preset("NF4"))),
        fold_batchnorm=False,
        algorithms=("awq", "gptq", "bias_correction"),
        ptq_options=PTQOptions(gptq_percdamp=0.1, smoothquant_alpha=0.5),
    )
    return [QuantConfig(s).to_dict() for s in PRESETS.values()] + [rich.to_dict()]


VALID = _valid_dicts()


def _paths(obj, prefix=()):
    """Every key/index path into a nested dict/list, the root included."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _retype(value, how: int):
    return [str(value), [value], {"value": value}, json.dumps(value), None][how]


@st.composite
def mutated_configs(draw):
    """A valid config dict with 1..4 random edits: delete, replace, retype or add a key."""
    data = json.loads(json.dumps(draw(st.sampled_from(VALID))))  # a deep copy
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(list(_paths(data))))
        if not path:
            continue
        parent = data
        for p in path[:-1]:
            parent = parent[p]
        key = path[-1]
        op = draw(st.sampled_from(["delete", "replace", "edge", "retype", "add"]))
        if op == "delete":
            del parent[key]
        elif op == "replace":  # copies: EDGE's lists and dicts are shared between draws
            parent[key] = copy.deepcopy(draw(json_values))
        elif op == "edge":
            parent[key] = copy.deepcopy(draw(st.sampled_from(EDGE)))
        elif op == "retype":
            parent[key] = _retype(parent[key], draw(st.integers(0, 4)))
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = copy.deepcopy(draw(json_values))
        else:
            parent.append(copy.deepcopy(draw(json_values)))
    return data


CONFIG_KEYS = list(VALID[-1])
SCHEME_KEYS = list(VALID[-1]["scheme"])
SPEC_KEYS = list(VALID[-1]["scheme"]["weight"])
spec_dicts = st.dictionaries(st.sampled_from(SPEC_KEYS), json_values, max_size=5)
scheme_dicts = st.fixed_dictionaries(
    {"name": st.text(max_size=4), "mode": st.sampled_from([m.value for m in QuantMode])},
    optional={"weight": spec_dicts | json_values, "activation": spec_dicts | json_values}
    | {"compute_dtype": st.sampled_from(["fp16", "bf16", "fp32", "fp64"]) | json_values},
)
config_dicts = st.fixed_dictionaries(
    {"scheme": scheme_dicts | json_values},
    optional={k: json_values for k in CONFIG_KEYS if k != "scheme"},
)


# -- checks -----------------------------------------------------------------------------------
def _outcome(fn, *args, **kwargs):
    """``fn``'s value, or None when it raised a lowbit error; anything else propagates."""
    try:
        value = fn(*args, **kwargs)
    except LowbitError as exc:
        assert str(exc), f"{type(exc).__name__} without a message"
        event(f"rejected: {type(exc).__name__}")
        return None
    event("accepted")
    return value


def _assert_valid_config(cfg: QuantConfig) -> None:
    """A config that was accepted is a real value: hashable, and it round-trips everywhere."""
    assert isinstance(cfg, QuantConfig)
    hash(cfg)
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg
    assert QuantConfig.from_json(cfg.to_json()) == cfg
    assert QuantConfig.from_yaml(cfg.to_yaml()) == cfg


# -- (a) QuantConfig.from_dict ----------------------------------------------------------------
@FUZZ
@given(json_values | config_dicts)
def test_from_dict_on_random_structures(data) -> None:
    cfg = _outcome(QuantConfig.from_dict, data)
    if cfg is not None:
        _assert_valid_config(cfg)


@FUZZ
@given(mutated_configs())
def test_from_dict_on_mutated_valid_configs(data) -> None:
    cfg = _outcome(QuantConfig.from_dict, data)
    if cfg is not None:
        _assert_valid_config(cfg)


@FUZZ
@given(scheme_dicts | json_values)
def test_scheme_from_dict_on_random_structures(data) -> None:
    scheme = _outcome(QuantScheme.from_dict, data)
    if scheme is not None:
        hash(scheme)
        assert QuantScheme.from_dict(scheme.to_dict()) == scheme


# -- (b) QuantConfig.from_json / from_yaml ----------------------------------------------------
@st.composite
def edited_text(draw, dump):
    """A valid document (or a mutated one) with a few characters inserted, deleted or swapped."""
    text = dump(draw(st.sampled_from(VALID) | mutated_configs()))
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "swap"]))
        piece = draw(st.sampled_from(list("{}[]:,\"'-#&*!|>\n\t ")) | st.text(max_size=3))
        if op == "insert":
            text = text[:i] + piece + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + 1 :]
        else:
            text = text[:i] + piece + text[i + len(piece) :]
    return text


@FUZZ
@given(st.text(max_size=200) | edited_text(json.dumps))
def test_from_json_on_random_and_edited_text(text) -> None:
    cfg = _outcome(QuantConfig.from_json, text)
    if cfg is not None:
        _assert_valid_config(cfg)


@FUZZ
@given(st.text(max_size=200) | edited_text(yaml.safe_dump))
def test_from_yaml_on_random_and_edited_text(text) -> None:
    cfg = _outcome(QuantConfig.from_yaml, text)
    if cfg is not None:
        _assert_valid_config(cfg)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,  # nesting deeper than Python's recursion limit
        "{" * 100_000,
        "a: &a [*a]",  # a self-referencing YAML alias
        "!!python/object:os.system ls",  # safe_load must refuse tags
        "scheme: !!binary aGVsbG8=",
        "scheme: 2001-12-14",  # YAML dates
        "? [1, 2]\n: x",  # an unhashable key
        "\x00",
        'x: "\\U80001000"',  # PyYAML: OverflowError (found by the fuzz target below)
        "scheme: {name: x, mode: cast, compute_dtype: bf16}\nversion: 1e400",
        '{"scheme": {"name": "x", "mode": "cast", "compute_dtype": "bf16"}, "version": NaN}',
        '{"scheme": {"name": "x", "mode": "cast", "compute_dtype": "bf16"}, "include": [1]}',
    ],
)
@pytest.mark.parametrize("loader", [QuantConfig.from_json, QuantConfig.from_yaml])
def test_hostile_documents_raise_lowbit_errors(loader, text) -> None:
    with pytest.raises(LowbitError):
        loader(text)


@pytest.mark.parametrize("loader", [QuantConfig.from_json, QuantConfig.from_yaml])
@pytest.mark.parametrize("value", [None, 5, b"{}", ["scheme: x"]])
def test_loaders_take_text(loader, value) -> None:
    with pytest.raises(LowbitError):
        loader(value)


# -- (c) presets --------------------------------------------------------------------------------
@st.composite
def preset_typos(draw):
    name = draw(st.sampled_from(sorted(PRESETS)))
    i = draw(st.integers(0, len(name)))
    return name[:i] + draw(st.text(max_size=2)) + name[i + draw(st.integers(0, 2)) :]


@FUZZ
@given(st.text(max_size=20) | preset_typos() | json_values)
def test_get_preset_on_random_names(name) -> None:
    scheme = _outcome(get_preset, name)
    if scheme is not None:
        assert scheme in PRESETS.values()


# -- (d) formats and granularities --------------------------------------------------------------
format_like = st.from_regex(r"\A *(u?int|nf|pot|kmeans|fp|bf|binary|ternary)[0-9]{0,5}x? *\Z")
granularity_like = st.from_regex(r"\A *per_(tensor|channel|group|token|row)(:[-+ 0-9a-z.]{0,6})?\Z")


@FUZZ
@given(st.text(max_size=16) | format_like | json_values)
def test_get_format_on_random_names(name) -> None:
    fmt = _outcome(get_format, name)
    if fmt is not None:
        assert get_format(fmt.name) == fmt and str(fmt) == fmt.name
        assert fmt.bits >= 1


@FUZZ
@given(
    st.text(max_size=16) | granularity_like | json_values,
    st.lists(st.integers(0, 300), max_size=4),
)
def test_granularity_parse_on_random_text(text, shape) -> None:
    gran = _outcome(Granularity.parse, text)
    if gran is None:
        return
    assert Granularity.parse(str(gran)) == gran
    block = _outcome(gran.block_size, tuple(shape))
    if block is not None:
        assert len(block) == len(shape)
        assert all(b >= 1 and s % b == 0 for s, b in zip(shape, block, strict=True) if s)


# (class, fewest, most positional arguments): a wrong count is Python's TypeError, not ours
CONSTRUCTORS = [(IntFormat, 1, 2), (CodebookFormat, 1, 1), (GridFormat, 1, 1),
                (FloatFormat, 1, 1), (Granularity, 0, 3)]  # fmt: skip


@st.composite
def constructor_calls(draw):
    cls, lo, hi = draw(st.sampled_from(CONSTRUCTORS))
    return cls, draw(st.lists(scalars, min_size=lo, max_size=hi))


@FUZZ
@given(constructor_calls())
def test_direct_constructors_validate_their_fields(call) -> None:
    cls, args = call
    value = _outcome(cls, *args)
    if value is None:
        return
    if isinstance(value, Granularity):
        assert Granularity.parse(str(value)) == value
    else:
        assert get_format(value.name) == value


# -- (e) PTQ options and algorithm lists --------------------------------------------------------
OPTION_FIELDS = list(PTQOptions.__dataclass_fields__)


@FUZZ
@given(st.dictionaries(st.sampled_from(OPTION_FIELDS), scalars, max_size=4))
def test_ptq_options_on_random_values(kwargs) -> None:
    opts = _outcome(PTQOptions, **kwargs)
    if opts is None:
        return
    for name in OPTION_FIELDS:  # accepted values are usable: numbers are finite, counts >= 1
        value = getattr(opts, name)
        assert value is None or isinstance(value, bool) or math.isfinite(value)
    cfg = QuantConfig(get_preset("W4A16"), ptq_options=opts)
    _assert_valid_config(cfg)


algorithm_names = st.sampled_from(ALGORITHMS).map(str.upper) | st.sampled_from(ALGORITHMS)


@FUZZ
@given(json_values | algorithm_names | st.lists(algorithm_names | scalars, max_size=4))
def test_parse_algorithms_on_random_values(value) -> None:
    names = _outcome(parse_algorithms, value)
    if names is not None:
        assert set(names) <= set(ALGORITHMS) and "rtn" not in names
        assert parse_algorithms(names) == names  # already in execution order


# -- spec fields reached directly ---------------------------------------------------------------
@FUZZ
@given(st.dictionaries(st.sampled_from(SPEC_KEYS), scalars, max_size=5))
def test_tensor_quant_spec_on_random_values(kwargs) -> None:
    spec = _outcome(TensorQuantSpec, **kwargs)
    if spec is not None:
        hash(spec)
        assert TensorQuantSpec(**QuantScheme("s", "weight_only", spec).to_dict()["weight"]) == spec
