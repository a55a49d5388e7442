"""Verb settings: one dataclass per verb, its flags, `KEY=VALUE` overrides and `--config FILE`.

A verb describes its settings once, as a dataclass whose fields carry their help text (`setting(default,
"help")`, i.e. `field(metadata={"help": ...})`); a field holding a dataclass is a section (`train`,
`model`). `add_settings_arguments(parser, defaults, reads=..., writes=...)` turns it into the verb's command
line and `settings_from_args(args)` turns the parsed command line back into an instance.

Notable choices:
- Every leaf field can be set four ways, all spelled with its name: a flag (`--max-steps 500`), a
  positional `max_steps=500`, an entry of the `--config` file (TOML, YAML or JSON; `max_steps = 500` at the
  top level or under `[train]`), and the qualified key `train.max_steps=500`. A bare name belongs to the
  field nearest the top; a field it shadows keeps only its qualified name (flag `--train.seed`).
  `metadata["flag"]` gives a field another public name (`TrainConfig.out_dir` is `--out` and `out=`).
- One precedence: the defaults (or a resumed run's saved settings), then the `--config` file, then the
  command line (flags, then `KEY=VALUE`). Flags default to "not given", so a flag the user did not type
  never overwrites the file.
- Values are typed by the field's annotation: bool (`true/false/yes/no/on/off/1/0`; flags `--x/--no-x`),
  int, float, str, `X | None` (`none`), `list[...]` (a repeatable flag, comma-separated values, or a
  TOML/YAML list). `metadata["choices"]` restricts a value.
- An unknown key, a mistyped value or a bad choice is a `UserError` naming the setting; an unknown key
  lists the known ones, so a typo never silently does nothing.
- `--help` groups the flags by section, shows every default, and its epilog says what the verb reads and
  writes and how the layers combine. `describe_io` writes the `reads:`/`writes:` lines, for these verbs and
  for every other verb and subcommand, so the format is defined once.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import UserError

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_PAIR = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*=")
_FLAG_DEST = "_setting:"


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
            flag: str | None = None, choices: Iterable[Any] | None = None) -> Any:
    """A dataclass field with its help text (and optionally another public name, or allowed values)."""
    meta: dict[str, Any] = {"help": help}
    if flag:
        meta["flag"] = flag
    if choices is not None:
        meta["choices"] = tuple(choices)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read settings from a .toml, .yaml/.yml or .json file."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        import tomllib
        return tomllib.loads(text)
    if path.suffix in (".yaml", ".yml"):
        import yaml
        return yaml.safe_load(text) or {}
    return json.loads(text)


# --------------------------------------------------------------------------------------------------------
# the tree of settings
# --------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Leaf:
    """One settable field: its path from the top (`("train", "out_dir")`), public name and type."""

    path: tuple[str, ...]
    key: str
    type: Any
    help: str
    default: Any
    choices: tuple | None

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    @property
    def public(self) -> str:
        return ".".join(self.path[:-1] + (self.key,))


def _walk(obj: Any, prefix: tuple[str, ...], sections: dict[tuple[str, ...], str], out: list[Leaf]) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        path = prefix + (f.name,)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            sections[path] = f.metadata.get("help", "") or (type(value).__doc__ or "").strip().split("\n")[0]
            _walk(value, path, sections, out)
            continue
        out.append(Leaf(path, f.metadata.get("flag", f.name), hints.get(f.name, Any), f.metadata.get("help", ""),
                        value, f.metadata.get("choices")))


class SettingsSpec:
    """The settable fields of one settings dataclass and the names that reach each of them."""

    def __init__(self, defaults: Any, *, inputs: str | None = None, own_section: str | None = None):
        if not dataclasses.is_dataclass(defaults) or isinstance(defaults, type):
            raise TypeError("settings must be a dataclass instance")
        self.defaults = defaults
        self.inputs = inputs
        self.own_section = own_section
        self.sections: dict[tuple[str, ...], str] = {}
        self.leaves: list[Leaf] = []
        _walk(defaults, (), self.sections, self.leaves)
        self.names: dict[str, Leaf] = {}
        for leaf in self.leaves:
            self.names[leaf.dotted] = self.names[leaf.public] = leaf
        self.bare: dict[str, Leaf] = {}
        for leaf in sorted(self.leaves, key=lambda lf: len(lf.path)):
            for name in {leaf.key, leaf.path[-1]}:
                owner = self.bare.get(name)
                if owner is None:
                    self.bare[name] = leaf
                elif len(owner.path) == len(leaf.path) and owner is not leaf:
                    raise TypeError(f"two settings at the same depth are named {name!r}: "
                                    f"{owner.dotted} and {leaf.dotted}")
        if inputs is not None and inputs not in self.names:
            raise TypeError(f"inputs={inputs!r} is not a setting")

    def flag(self, leaf: Leaf) -> str:
        name = leaf.key if self.bare.get(leaf.key) is leaf else leaf.public
        return "--" + name.replace("_", "-")

    def resolve(self, name: str) -> Leaf:
        key = name.strip().replace("-", "_")
        if self.own_section and key.startswith(self.own_section + "."):
            key = key[len(self.own_section) + 1:]
        leaf = self.names.get(key) or self.bare.get(key)
        if leaf is None:
            known = ", ".join(sorted({lf.key if self.bare.get(lf.key) is lf else lf.public for lf in self.leaves}))
            raise UserError(f"unknown setting {name!r}; known settings: {known}")
        return leaf

    def get(self, obj: Any, name: str) -> Any:
        """The value of setting `name` in the settings instance `obj`."""
        for part in self.resolve(name).path:
            obj = getattr(obj, part)
        return obj

    def is_setting(self, text: str) -> bool:
        """Whether a positional argument is a `KEY=VALUE` naming one of these settings."""
        if not _PAIR.match(text):
            return False
        try:
            self.resolve(text.split("=", 1)[0])
        except UserError:
            return False
        return True

    # --- values ---------------------------------------------------------------------------------
    def from_file(self, path: str | Path) -> dict[str, Any]:
        """The file's settings as {dotted path: value}; sections may be tables or dotted keys."""
        p = Path(path)
        if not p.exists():
            raise UserError(f"{p}: no such config file")
        try:
            data = load_config_file(p)
        except Exception as e:  # tomllib, yaml and json each raise their own types
            raise UserError(f"{p}: cannot parse ({e})") from e
        if not isinstance(data, dict):
            raise UserError(f"{p}: expected a table of settings at the top level")
        flat: dict[str, Any] = {}

        def walk(prefix: str, node: dict) -> None:
            for k, v in node.items():
                name = f"{prefix}{k}"
                section = tuple(name.replace("-", "_").split("."))
                if isinstance(v, dict) and (section in self.sections or name == self.own_section):
                    walk("" if name == self.own_section else name + ".", v)
                    continue
                try:
                    flat[self.resolve(name).dotted] = v
                except UserError as e:
                    raise UserError(f"{p}: {e}") from None
        walk("", data)
        return flat

    def from_command_line(self, args: argparse.Namespace) -> dict[str, Any]:
        """Flags the user typed, then `KEY=VALUE` pairs, as {dotted path: value}."""
        flat: dict[str, Any] = {}
        for dest, value in vars(args).items():
            if dest.startswith(_FLAG_DEST):
                flat[dest[len(_FLAG_DEST):]] = value
        inputs: list[str] = []
        for item in getattr(args, "_pairs", None) or []:
            if self.inputs is not None and not self.is_setting(item):
                inputs.append(item)
                continue
            if "=" not in item:
                raise UserError(f"setting {item!r} is not of the form KEY=VALUE")
            k, v = item.split("=", 1)
            flat[self.resolve(k).dotted] = v
        if inputs:
            flat[self.names[self.inputs].dotted] = inputs
        return flat

    def apply(self, obj: Any, flat: dict[str, Any]) -> Any:
        """A copy of `obj` with each {dotted path: value} set, typed like its field."""
        nested: dict[str, dict[str, Any]] = {}
        changes: dict[str, Any] = {}
        for dotted, value in flat.items():
            leaf = self.names[dotted]
            head, _, rest = dotted.partition(".")
            if rest:
                nested.setdefault(head, {})[rest] = (leaf, value)
            else:
                changes[head] = coerce(value, leaf)
        out = dataclasses.replace(obj, **changes) if changes else obj
        for head, sub in nested.items():
            out = dataclasses.replace(out, **{head: _apply_nested(getattr(out, head), sub)})
        return out


def _apply_nested(obj: Any, items: dict[str, tuple[Leaf, Any]]) -> Any:
    changes, deeper = {}, {}
    for rest, (leaf, value) in items.items():
        head, _, tail = rest.partition(".")
        if tail:
            deeper.setdefault(head, {})[tail] = (leaf, value)
        else:
            changes[head] = coerce(value, leaf)
    out = dataclasses.replace(obj, **changes) if changes else obj
    for head, sub in deeper.items():
        out = dataclasses.replace(out, **{head: _apply_nested(getattr(out, head), sub)})
    return out


def coerce(value: Any, leaf: Leaf) -> Any:
    """`value` (a string from the command line, or a TOML/YAML/JSON value) as the type of `leaf`."""
    try:
        out = _coerce(value, leaf.type)
    except (TypeError, ValueError) as e:
        raise UserError(f"setting {leaf.public}: {e}") from None
    if leaf.choices is not None:
        for v in out if isinstance(out, list) else [out]:
            if v not in leaf.choices:
                raise UserError(f"setting {leaf.public}: {v!r} is not one of {', '.join(map(str, leaf.choices))}")
    return out


def _coerce(value: Any, tp: Any) -> Any:
    origin, targs = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or isinstance(value, str) and value.strip().lower() in ("none", "null"):
            if type(None) in targs:
                return None
        inner = [a for a in targs if a is not type(None)]
        return _coerce(value, inner[0]) if len(inner) == 1 else value
    if origin in (list, tuple) or tp in (list, tuple):
        item = targs[0] if targs else str
        items = value if isinstance(value, (list, tuple)) else [value]
        parts: list[Any] = []
        for v in items:
            parts += [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else [v]
        return [_coerce(p, item) for p in parts]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            number = float(value) if isinstance(value, (float, str)) else None
        except ValueError:
            number = None
        if number is None or not number.is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        return int(value) if isinstance(value, str) and value.strip().lstrip("+-").isdigit() else int(number)
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ValueError(f"expected text, got {value!r}")
        return str(value)
    return value


def settings_from_dict(defaults: Any, data: dict[str, Any]) -> Any:
    """`defaults` with the values of a saved settings dict (e.g. a run's run.json) set; unknown keys are
    ignored (a run saved by an older version may hold settings that no longer exist)."""
    spec = SettingsSpec(defaults)
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: dict) -> None:
        for k, v in node.items():
            name = f"{prefix}{k}"
            if isinstance(v, dict) and tuple(name.split(".")) in spec.sections:
                walk(name + ".", v)
            elif name in spec.names:
                flat[spec.names[name].dotted] = v
    walk("", data)
    return spec.apply(defaults, flat)


# --------------------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------------------
class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the (pre-wrapped) description and epilog as written; wraps flag help as usual."""


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if value != "" else '""'


def _wrap(text: str, width: int = 100) -> str:
    paragraphs = [p for p in text.strip().split("\n\n")]
    return "\n\n".join(textwrap.fill(" ".join(p.split()), width, break_on_hyphens=False) for p in paragraphs)


def describe_io(parser: argparse.ArgumentParser, reads: str, writes: str, *notes: str) -> argparse.ArgumentParser:
    """End `parser`'s `--help` with what the verb (or subcommand) reads and writes, then any notes: the
    `reads:` and `writes:` lines every verb shows, wrapped at 100 columns; the description keeps its
    paragraphs. Returns the parser."""
    parser.formatter_class = _Formatter
    if parser.description:
        parser.description = _wrap(parser.description)
    lines = [f"reads: {reads}", f"writes: {writes}", *(n for n in notes if n)]
    parser.epilog = "\n".join(textwrap.fill(" ".join(line.split()), 100, subsequent_indent="        ",
                                            break_on_hyphens=False, break_long_words=False) for line in lines)
    return parser


def add_settings_arguments(parser: argparse.ArgumentParser, defaults: Any, *, reads: str, writes: str,
                           inputs: str | None = None, own_section: str | None = None,
                           notes: str = "") -> SettingsSpec:
    """Give `parser` one flag per leaf of the settings dataclass `defaults`, positional `KEY=VALUE`,
    `--config FILE` and an epilog saying what the verb reads and writes.

    inputs: the name of a `list[str]` field that takes the positional arguments that are not `KEY=VALUE`
    (e.g. `alignchat tokenize FILE... --out DIR`). own_section: a section name in a config file that means
    the top level (an `[sft]` table in `alignchat sft`'s file). Returns the spec (also stored in the
    parsed namespace, where `settings_from_args` finds it)."""
    spec = SettingsSpec(defaults, inputs=inputs, own_section=own_section)
    describe_io(parser, reads, writes,
                "settings: the defaults shown, then --config FILE, then the command line (flags, then "
                "KEY=VALUE); a flag's KEY is its name without the dashes (--max-steps N is max_steps=N)", notes)
    metavar = "INPUT|KEY=VALUE" if inputs else "KEY=VALUE"
    parser.usage = f"%(prog)s {'INPUT... ' if inputs else ''}[--FLAG VALUE ...] [KEY=VALUE ...] [--config FILE]"
    pos_help = ("any setting as KEY=VALUE: the flag's name without dashes (max_steps=500), or qualified "
                "by its section (train.max_steps=500)")
    if inputs:
        pos_help = f"{spec.names[inputs].help or 'inputs'}; and " + pos_help
    parser.add_argument("_pairs", nargs="*", metavar=metavar, help=pos_help)
    parser.add_argument("--config", metavar="FILE",
                        help="TOML, YAML or JSON file of settings, flat or with a table per section "
                             f"({', '.join('[' + '.'.join(s) + ']' for s in spec.sections) or 'none here'}); "
                             "the command line overrides it")
    groups: dict[tuple[str, ...], Any] = {(): parser.add_argument_group("settings")}
    for section, help_text in spec.sections.items():
        groups[section] = parser.add_argument_group(f"{'.'.join(section)} settings", help_text or None)
    for leaf in spec.leaves:
        if leaf.dotted == inputs:
            continue
        help_text = leaf.help or leaf.key
        if leaf.default not in ("", []):
            help_text += f" (default: {_show(leaf.default)})"
        help_text = help_text.replace("%", "%%")
        kw: dict[str, Any] = {"dest": _FLAG_DEST + leaf.dotted, "default": argparse.SUPPRESS, "help": help_text}
        origin = typing.get_origin(leaf.type)
        if leaf.type is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin in (list, tuple) or leaf.type in (list, tuple):
            kw.update(action="append", metavar=leaf.key.upper())
            kw["help"] += " (repeat the flag or separate with commas)"
        else:
            kw["metavar"] = leaf.key.upper()
            if leaf.choices is not None:
                kw["choices"] = [str(c) for c in leaf.choices]
                kw["metavar"] = "{" + ",".join(kw["choices"]) + "}"
        groups[leaf.path[:-1]].add_argument(spec.flag(leaf), **kw)
    parser.set_defaults(_settings_spec=spec)
    return spec


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What the user set, as {dotted path: raw value}: the `--config` file, then the command line on top."""
    cached = getattr(args, "_settings_given", None)
    if cached is None:
        spec: SettingsSpec = args._settings_spec
        cached = spec.from_file(args.config) if getattr(args, "config", None) else {}
        cached.update(spec.from_command_line(args))
        args._settings_given = cached
    return dict(cached)


def settings_from_args(args: argparse.Namespace, base: Any = None) -> Any:
    """The verb's settings: `base` (default: the defaults given to `add_settings_arguments`; or a callable
    that receives `given_settings(args)` and returns the instance to start from, e.g. preset-dependent
    defaults or a resumed run's saved settings), then the `--config` file, then the command line."""
    spec: SettingsSpec = args._settings_spec
    given = given_settings(args)
    start = base(given) if callable(base) else (spec.defaults if base is None else base)
    return spec.apply(start, given)


@dataclasses.dataclass(frozen=True)
class Subcommand:
    """One subcommand of a verb that has several (`compare`, `eval`): its help line, its settings' defaults,
    what it reads and writes (for the epilog), the function that runs it, the list field that takes the
    positional inputs, and which shared model flags it takes ("" for the model, "judge-" for a judge)."""
    help: str
    defaults: Callable[[], Any]
    reads: str
    writes: str
    func: Callable[[Any, argparse.Namespace], int]
    inputs: str | None = None
    model: str | None = None
