"""Flat configs: a dataclass per recipe, overridden from the command line with --key=value.

The help text for each key is the trailing comment on its line in the dataclass, so a
recipe's config block is also its documentation:

    @dataclass
    class Config:
        lr: float = 9e-4  # Adam learning rate
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import io
import json
import shlex
import tokenize
import typing

from toolkit.errors import ConfigError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def field_comments(config_class: type) -> dict[str, str]:
    """Map each field of a dataclass to the comment that ends its line in the source."""
    comments: dict[str, str] = {}
    for klass in reversed(config_class.__mro__):  # inherited keys first, a subclass's comment wins
        if dataclasses.is_dataclass(klass):
            comments.update(_own_field_comments(klass))
    return comments


def _own_field_comments(config_class: type) -> dict[str, str]:
    try:
        source = inspect.getsource(config_class)
    except (OSError, TypeError):  # defined in a REPL or built dynamically
        return {}
    comments: dict[str, str] = {}
    line_field: dict[int, str] = {}
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    for previous, token in zip(tokens, tokens[1:]):
        # a field line starts with NAME ':' (annotations) at the class body's indentation
        if token.type == tokenize.OP and token.string == ":" and previous.type == tokenize.NAME:
            if previous.start[1] > 0 and previous.start[0] not in line_field:
                line_field[previous.start[0]] = previous.string
        if token.type == tokenize.COMMENT and token.start[0] in line_field:
            comments[line_field[token.start[0]]] = token.string.lstrip("#").strip()
    return comments


def _type_name(annotation) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(repr(choice) for choice in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))


def config_help(config_class: type, program: str = "") -> str:
    """One line per key: name, type, default and meaning."""
    hints = typing.get_type_hints(config_class, include_extras=False)
    comments = field_comments(config_class)
    rows = []
    for field in dataclasses.fields(config_class):
        default = field.default if field.default is not dataclasses.MISSING else "(required)"
        rows.append((f"--{field.name}", _type_name(hints[field.name]), repr(default), comments.get(field.name, "")))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"usage: {program or 'recipe'} [--key=value ...]", ""]
    doc = inspect.getdoc(config_class)
    if doc and not doc.startswith(config_class.__name__ + "("):  # dataclasses invent a signature docstring
        lines += [doc, ""]
    for name, type_name, default, comment in rows:
        lines.append(f"  {name:<{widths[0]}}  {type_name:<{widths[1]}}  default {default:<{widths[2]}}  {comment}")
    return "\n".join(lines)


def parse_value(key: str, raw: str, annotation) -> typing.Any:
    """Turn the text of --key=raw into the field's type, or say why it cannot be."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        for choice in choices:
            if raw == str(choice):
                return choice
        raise ConfigError(f"--{key}={raw!r} is not one of {', '.join(map(str, choices))}")
    if annotation is bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ConfigError(f"--{key} expects true or false, got {raw!r}")
    if annotation is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"--{key} expects a whole number, got {raw!r}") from None
    if annotation is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"--{key} expects a number, got {raw!r}") from None
    if annotation is str:
        return raw
    raise TypeError(f"config field {key} has unsupported type {annotation!r}")  # a recipe bug, not user input


def parse_config(config_class: type, argv: list[str], program: str = ""):
    """Build a config from --key=value (or --key value, or --flag for booleans) arguments.

    Unknown keys and values of the wrong type raise ConfigError naming the valid keys.
    --help prints every key with its default and meaning, then exits.
    """
    hints = typing.get_type_hints(config_class)
    names = [field.name for field in dataclasses.fields(config_class)]
    values: dict[str, typing.Any] = {}
    position = 0
    while position < len(argv):
        argument = argv[position]
        position += 1
        if argument in ("-h", "--help"):
            print(config_help(config_class, program))
            raise SystemExit(0)
        if not argument.startswith("--") or argument == "--":
            raise ConfigError(f"unexpected argument {argument!r}: options are written --key=value (see --help)")
        key, has_value, raw = argument[2:].partition("=")
        key = key.replace("-", "_")
        if key not in hints or key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" Did you mean --{close[0]}?" if close else ""
            raise ConfigError(f"unknown option --{key}.{hint} Valid keys: {', '.join(names)}")
        if not has_value:
            if hints[key] is bool:
                raw = "true"
            elif position < len(argv) and not argv[position].startswith("--"):
                raw = argv[position]
                position += 1
            else:
                raise ConfigError(f"--{key} needs a value: --{key}=VALUE")
        values[key] = parse_value(key, raw, hints[key])
    config = config_class(**values)
    config.__dict__["_given_keys"] = frozenset(values)  # for derive_config: what the user chose, not a default
    return config


def chosen_keys(config) -> set[str]:
    """The keys of `config` that someone chose: given on the command line (parse_config records them)
    or changed from the class's default in code."""
    defaults = type(config)()
    changed = {field.name for field in dataclasses.fields(config)
               if getattr(config, field.name) != getattr(defaults, field.name)}
    return changed | set(config.__dict__.get("_given_keys", ()))


def config_to_dict(config) -> dict:
    return dataclasses.asdict(config)


def format_config(config) -> str:
    """The final config as indented JSON, printed at the start of every run."""
    return json.dumps(config_to_dict(config), indent=2)


def check_positive(config, *names: str) -> None:
    """Raise ConfigError unless every named value is > 0."""
    for name in names:
        value = getattr(config, name)
        if not value > 0:
            raise ConfigError(f"--{name} must be greater than 0, got {value!r}")


def check_non_negative(config, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not value >= 0:
            raise ConfigError(f"--{name} must be 0 or more, got {value!r}")


def check_fraction(config, *names: str) -> None:
    """Raise ConfigError unless every named value lies in [0, 1)."""
    for name in names:
        value = getattr(config, name)
        if not 0 <= value < 1:
            raise ConfigError(f"--{name} must be at least 0 and below 1, got {value!r}")


def derive_config(config_class: type, source, shared: typing.Iterable[str], extra_args: str = "", **overrides):
    """A sub-recipe's config: its own defaults, the `shared` keys chosen in `source` (a key the parent
    leaves at its default keeps the sub-recipe's own default), then the options in `extra_args` (a
    "--key=value ..." string, checked against config_class), then `overrides`, which the parent sets for each
    sub-run: `extra_args` giving one of them is a ConfigError, not silently overruled."""
    chosen = chosen_keys(source)
    values = {name: getattr(source, name) for name in shared if name in chosen}
    arguments = shlex.split(extra_args)
    given = parse_config(config_class, arguments)
    for argument in arguments:
        name = argument[2:].partition("=")[0].replace("-", "_")
        if name in overrides:
            raise ConfigError(f"--{name} cannot be given among a recipe's options ({extra_args.strip()!r}): the study "
                              f"sets it for each of its runs (--{name}={overrides[name]}); set it with the study's own "
                              "keys (see --help)")
        values[name] = getattr(given, name)
    return config_class(**{**values, **overrides})


def parse_sizes(key: str, text: str) -> list[int]:
    """'64,96' -> [64, 96]: comma-separated whole numbers of at least 1, or ConfigError naming --key."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"--{key} takes comma-separated whole numbers of at least 1, got {text!r}")
    return sizes


def parse_kwargs(key: str, text: str) -> dict:
    """'width=16,levels=2,widths=(8,16)' -> {'width': 16, 'levels': 2, 'widths': (8, 16)} (Python literals)."""
    values, depth, part = {}, 0, ""
    pieces = []
    for character in text:  # split on commas outside brackets
        depth += character in "([{"
        depth -= character in ")]}"
        if character == "," and depth == 0:
            pieces.append(part)
            part = ""
        else:
            part += character
    pieces.append(part)
    for piece in (p.strip() for p in pieces):
        if not piece:
            continue
        name, has_value, raw = piece.partition("=")
        try:
            if not has_value or not name.strip().isidentifier():
                raise ValueError
            values[name.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            raise ConfigError(f"--{key} takes name=value pairs with Python literal values "
                              f"(e.g. width=16,widths=(8,16)); could not read {piece!r}") from None
    return values


def field_names(*config_classes: type) -> set[str]:
    return {field.name for config_class in config_classes for field in dataclasses.fields(config_class)}
