"""How a contract is declared: a frozen dataclass whose fields are a command's flags at the same time.

Each field (:func:`option`) carries its flag's help and, when the ABTest sets it, where in the spec it
comes from (``spec:analysis.alpha``, ``model:numClasses``). From the dataclass alone, :func:`add_arguments`
generates the parser, :func:`to_argv` writes the argv that reproduces a config, and :func:`values_from_spec`
reads the fields an ABTest sets. ``evaluate.EvalConfig`` and ``analyze.AnalysisConfig`` are the two contracts.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import field
from functools import cache


def option(
    default=dataclasses.MISSING,
    *,
    help: str,
    spec: str | None = None,
    choices: tuple[str, ...] = (),
    group: str | None = None,
    positional: bool = False,
):
    """A field of a contract: ``spec`` is ``spec:<path>`` or ``model:<path>`` (dots between keys) when the ABTest sets it;
    fields sharing a ``group`` are mutually exclusive flags; a ``positional`` field is an argument without a flag."""
    return field(default=default, metadata={"help": help, "spec": spec, "choices": choices, "group": group, "positional": positional})


def _unwrap(hint):
    """``X | None`` -> X."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


@cache
def _types(cls: type) -> dict[str, type]:
    """Each field's value type: ``int | None`` -> int, ``tuple[float, ...]`` -> tuple."""
    return {name: typing.get_origin(_unwrap(hint)) or _unwrap(hint) for name, hint in typing.get_type_hints(cls).items()}


def _item_type(cls: type, name: str) -> type:
    """The element type of a ``tuple[X, ...]`` field."""
    return typing.get_args(_unwrap(typing.get_type_hints(cls)[name]))[0]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _comma_separated(item: type):
    def parse(text: str) -> tuple:
        try:
            return tuple(item(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {item.__name__} values, got {text!r}") from None

    return parse


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag (or positional argument) per field of ``cls``."""
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for f in dataclasses.fields(cls):
        meta, kind = f.metadata, _types(cls)[f.name]
        if meta["group"] and meta["group"] not in groups:
            groups[meta["group"]] = parser.add_mutually_exclusive_group()
        target = groups[meta["group"]] if meta["group"] else parser
        kwargs: dict = {"help": meta["help"]}
        if not meta["positional"]:
            kwargs["dest"] = f.name
            if f.default is dataclasses.MISSING:
                kwargs["required"] = True
            else:
                kwargs["default"] = f.default
        if kind is bool:  # a bool defaulting to None is a tri-state: --amp, --no-amp, or neither (automatic)
            kwargs["action"] = "store_true" if f.default is False else argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _comma_separated(_item_type(cls, f.name)) if kind is tuple else kind
            if meta["choices"]:
                kwargs["choices"] = meta["choices"]
        target.add_argument(f.name if meta["positional"] else flag(f.name), **kwargs)


def from_args(cls: type, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def to_argv(cfg) -> list[str]:
    """The arguments that reproduce ``cfg``, positional ones first, then flags in field order. What an ABTest sets is
    always spelled out (every Job shows its controlled variables, whatever the image's defaults); other defaults are left out."""
    fields = dataclasses.fields(cfg)
    argv = [str(getattr(cfg, f.name)) for f in fields if f.metadata["positional"]]
    for f in fields:
        value = getattr(cfg, f.name)
        if f.metadata["positional"] or value is None or value == "" or (value is False and f.default is False):
            continue
        if value == f.default and not f.metadata["spec"]:
            continue
        if isinstance(value, bool):
            argv.append(flag(f.name) if value else "--no-" + flag(f.name)[2:])
        elif isinstance(value, tuple):
            argv += [flag(f.name), ",".join(map(str, value))]
        else:
            argv += [flag(f.name), str(value)]
    return argv


def parse_argv(cls: type, argv: list[str], prog: str):
    """``to_argv``'s inverse (what the command does with its arguments)."""
    parser = argparse.ArgumentParser(prog=prog)
    add_arguments(parser, cls)
    return from_args(cls, parser.parse_args(argv))


def spec_path(cls: type, name: str) -> str | None:
    """Where the ABTest sets field ``name``, as a user writes it (``spec.analysis.margin``), or None."""
    source = next(f.metadata["spec"] for f in dataclasses.fields(cls) if f.name == name)
    if not source:
        return None
    where, _, path = source.partition(":")
    return f"spec.{path}" if where == "spec" else f"spec.models[].{path}"


def values_from_spec(cls: type, spec: dict, model: dict | None = None) -> dict:
    """The fields of ``cls`` an ABTest sets, from its (defaulted) spec and, for per-model fields, that model's entry."""
    values = {}
    for f in dataclasses.fields(cls):
        source = f.metadata["spec"]
        if not source:
            continue
        where, _, path = source.partition(":")
        node = spec if where == "spec" else model
        for key in path.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            values[f.name] = tuple(node) if isinstance(node, list) else node
    return values
