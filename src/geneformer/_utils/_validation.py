"""The rules for arguments that several entry points take, so that each means the same everywhere
and fails with the same message: the reference classes, the model-card API, our functions and the
command line all check through here."""

from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .._constants import RESERVED_COLUMNS, ROW_COLUMN, VERSIONS
from ._errors import InputFileError, OptionError

_STATE_KEYS = ("state_key", "start_state", "goal_state", "alt_states")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` when it is one of ``choices``, else an error listing them."""
    choices = tuple(choices)
    if value not in choices:
        shown = ", ".join(repr(c) for c in choices)
        raise OptionError(f"{name} must be one of {shown}; got {value!r}.")
    return value


def check_positive_int(name: str, value: Any, *, allow_none: bool = False, minimum: int = 1) -> int | None:
    """An integer >= ``minimum`` (None passes through when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise OptionError(f"{name} must be {what}{' or None' if allow_none else ''}; got {value!r}.")
    return int(value)


def check_fraction(name: str, value: Any, *, low: float = 0.0, high: float = 1.0, closed_low: bool = False) -> float:
    """A number in (low, high) — or [low, high) with ``closed_low``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (v >= low if closed_low else v > low) and v < high
    if not ok:
        interval = f"{'[' if closed_low else '('}{low}, {high})"
        raise OptionError(f"{name} must be a number in {interval}; got {value!r}.")
    return float(value)


def check_model_version(version: Any) -> str:
    """"V1" or "V2" (case-insensitive)."""
    v = str(version).upper()
    if v not in VERSIONS:
        raise OptionError(f"model_version must be 'V1' or 'V2'; got {version!r}.")
    return v


def check_emb_layer(emb_layer: Any, n_layers: int | None = None) -> int:
    """The reference's ``emb_layer``: 0 = the last layer's output, -1 = the second-to-last, down to
    ``-n_layers`` = the embedding layer. Without ``n_layers`` any integer <= 0 passes."""
    if isinstance(emb_layer, bool) or not isinstance(emb_layer, numbers.Integral):
        raise OptionError(f"emb_layer must be an integer (0 = last layer, -1 = second-to-last); got {emb_layer!r}.")
    emb_layer = int(emb_layer)
    low = -int(n_layers) if n_layers is not None else None
    if emb_layer > 0 or (low is not None and emb_layer < low):
        span = f" down to {low} (the embedding layer) for this {n_layers}-layer model" if low is not None else ""
        raise OptionError(
            f"emb_layer={emb_layer} is out of range: use 0 (last layer), -1 (second-to-last){span}."
        )
    return emb_layer


def check_filter_data(filter_data: Any) -> dict | None:
    """``{column: value or [values]}`` (None passes); scalar values become one-element lists."""
    if filter_data is None:
        return None
    if not isinstance(filter_data, Mapping):
        raise OptionError(f"filter_data must be a dict {{column: [values]}}; got {type(filter_data).__name__}.")
    out = {}
    for col, values in filter_data.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            values = [values]
        out[col] = list(values)
    return out


def check_cell_states(cell_states_to_model: Any) -> dict | None:
    """Check ``cell_states_to_model`` (None passes) and convert the legacy one-key form.

    Current form: ``{"state_key", "start_state", "goal_state", "alt_states"}`` (``alt_states``
    optional, default ``[]``). Legacy form: ``{state_key: ([start], [goal], [alt, ...])}``.
    """
    if cell_states_to_model is None:
        return None
    if not isinstance(cell_states_to_model, Mapping):
        raise OptionError("cell_states_to_model must be a dict with state_key, start_state, goal_state, alt_states.")
    cs = dict(cell_states_to_model)
    if len(cs) == 1 and "state_key" not in cs:
        key, val = next(iter(cs.items()))
        if not (isinstance(val, (tuple, list)) and len(val) == 3):
            raise OptionError(
                "Legacy cell_states_to_model must be {state_key: ([start_state], [goal_state], [alt_states])}."
            )
        start, goal, alts = ([v] if not isinstance(v, (list, tuple)) else list(v) for v in val)
        if len(start) != 1 or len(goal) != 1:
            raise OptionError("Legacy cell_states_to_model needs exactly one start and one goal state.")
        cs = {"state_key": key, "start_state": start[0], "goal_state": goal[0], "alt_states": alts}
    for k in ("state_key", "start_state", "goal_state"):
        if cs.get(k) is None:
            raise OptionError(f"cell_states_to_model needs a non-empty {k!r} (keys: {', '.join(_STATE_KEYS)}).")
    alts = cs.get("alt_states") or []
    if not isinstance(alts, (list, tuple)):
        raise OptionError("cell_states_to_model['alt_states'] must be a list.")
    alts = [a for a in alts if a is not None]
    if len(set(alts)) != len(alts):
        raise OptionError(f"cell_states_to_model['alt_states'] has repeated states: {alts}.")
    if cs["start_state"] == cs["goal_state"]:
        raise OptionError("cell_states_to_model: start_state and goal_state must differ.")
    extra = set(cs) - set(_STATE_KEYS)
    if extra:
        raise OptionError(f"cell_states_to_model has unknown keys {sorted(extra)}; keys: {', '.join(_STATE_KEYS)}.")
    cs["alt_states"] = list(alts)
    return cs


def state_list(cell_states: Mapping[str, Any] | None) -> list:
    """Start, goal and alternative states of a checked ``cell_states_to_model``, in that order."""
    if not cell_states:
        return []
    return [cell_states["start_state"], cell_states["goal_state"], *cell_states["alt_states"]]


def check_attr_map(custom_attr_name_dict: Any) -> dict[str, str]:
    """``{input column: output column}`` of carried cell attributes (None: none).

    An output name may not be one the tokenizer writes itself (``input_ids``, ``length``, ``counts``,
    ``_gf_row``), and two attributes may not be renamed onto one name: either would silently replace
    data in the output.
    """
    if custom_attr_name_dict is None:
        return {}
    if not isinstance(custom_attr_name_dict, Mapping):
        raise OptionError("custom_attr_name_dict must be a dict {input column: output column}; got "
                          f"{type(custom_attr_name_dict).__name__}.")
    out = dict(custom_attr_name_dict)
    reserved = [(k, v) for k, v in out.items() if v in RESERVED_COLUMNS and not (k == v == ROW_COLUMN)]
    if reserved:
        src, dst = reserved[0]
        raise OptionError(f"Cell attribute {src!r} cannot be written as {dst!r} (custom_attr_name_dict, --attr): "
                          f"{', '.join(RESERVED_COLUMNS)} are the tokenizer's own columns. Choose another name "
                          f"(--attr {src}=NEW_NAME).")
    seen: dict[str, str] = {}
    for src, dst in out.items():
        if dst in seen:
            raise OptionError(f"Cell attributes {seen[dst]!r} and {src!r} are both written as {dst!r} "
                              "(custom_attr_name_dict, --attr); give each its own output name.")
        seen[dst] = src
    return out


def check_inputs_exist(paths: Iterable[str | os.PathLike], what: str = "Input") -> list[Path]:
    """The input paths, each of which must exist: checked before any output is refused or any work
    starts, so that a typo in an input is reported as such."""
    out = [Path(p) for p in paths]
    for p in out:
        if not p.exists():
            raise InputFileError(f"{what} {p} does not exist.")
    return out


def check_columns_listed(name: str, columns: Any) -> list[str] | None:
    """A list of column names (a single name becomes a one-element list; None passes)."""
    if columns is None:
        return None
    if isinstance(columns, str):
        return [columns]
    if not isinstance(columns, Sequence) or not all(isinstance(c, str) for c in columns):
        raise OptionError(f"{name} must be a list of column names; got {columns!r}.")
    return list(columns)
