"""Script configuration: a ``@dataclass`` at the top of each script, overridable from the command line.

Every field becomes a flag (``batch_size`` -> ``--batch-size``), typed by its annotation:

    python train.py --batch-size 8 --no-flip --img-size 224 224 --clip-grad none

- ``bool``: ``--flip``, ``--no-flip``, or ``--flip true|false|1|0|yes|no``
- ``tuple[int, int]`` / ``tuple[str, ...]`` / ``list[...]``: values after the flag, or one comma-separated value
  (numbers, booleans, names); a list of paths takes one value per path, so a path may hold a comma or a space
- ``X | None``: ``none`` (any case) gives None
- ``Literal["a", "b"]``: one of the listed values
- ``--config run.json`` starts from a saved config; flags after it still override. A preset's ``"description"``
  says what it is; ``--config preset.json --help`` shows it, with the preset's values as the defaults.

The comment after a field in the dataclass is its help text in ``--help``, and ``--help`` lists the fields in the
order the class's own source declares them (a script's Config redeclares the fields it inherits from the library's
typed stage inputs, e.g. ``clipreid.inference.InferenceOptions``, in the order a user reads them). Each stage saves
its resolved config with :func:`save_config` beside its outputs; :func:`load_config` reads it back with the same
checks.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import inspect
import io
import json
import math
import os
import re
import signal
import sys
import textwrap
import threading
import tokenize
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from .errors import Terminated, UserError
from .fileio import describe_os_error, write_json

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"0", "false", "no", "n", "off"}


# --------------------------------------------------------------------------------------------------------------
# converting strings and JSON values to a field's type


def _is_optional(tp: Any) -> tuple[bool, Any]:
    """Return (True, X) for ``X | None`` / ``Optional[X]``, else (False, tp)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            return True, args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007
    return False, tp


def _type_name(tp: Any) -> str:
    optional, inner = _is_optional(tp)
    if optional:
        return f"{_type_name(inner)} or none"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (tuple, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return " ".join(_type_name(a) for a in args)
        return f"{_type_name(args[0]) if args else 'str'} ..."
    return getattr(tp, "__name__", str(tp))


def _convert_scalar(value: Any, tp: Any, name: str) -> Any:
    """Convert one value (a command-line string or a JSON scalar) to ``tp``."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"expected an integer, got {value!r}")
        try:
            return int(str(value).strip()) if isinstance(value, str) else int(value)
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str | Path):
            raise ValueError(f"expected a path, got {value!r}")
        return Path(value)
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if str(choice) == str(value):
                return choice
        raise ValueError(f"expected one of {', '.join(map(str, choices))}, got {value!r}")
    raise TypeError(f"field {name!r}: unsupported type {tp!r}")


def convert_value(value: Any, tp: Any, name: str = "value") -> Any:
    """Convert ``value`` (a string, a list of strings, or a JSON value) to the annotated type ``tp``.

    Raises ValueError with a short reason when the value does not fit.
    """
    optional, inner = _is_optional(tp)
    if optional:
        if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
            return None
        if isinstance(value, list) and len(value) == 1 and str(value[0]).strip().lower() == "none":
            return None
        return convert_value(value, inner, name)
    if value is None:
        raise ValueError("none is not allowed here")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (tuple, list):
        items = list(value) if isinstance(value, list | tuple) else [value]
        # "224,224" and "224 224" are the same thing on a command line, where no item can hold a comma: numbers,
        # booleans and names. A path can ("run a,b/best.pt"), so path lists take one argument per path.
        if all(isinstance(i, str) for i in items) and all(_splits_on_commas(a) for a in (args or (str,))
                                                          if a is not Ellipsis):
            items = [part for item in items for part in item.split(",") if part.strip() != ""]
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise ValueError(f"expected {len(args)} values ({_type_name(tp)}), got {len(items)}")
            return tuple(_convert_scalar(v, a, name) for v, a in zip(items, args, strict=True))
        item_type = args[0] if args else str
        converted = [_convert_scalar(v, item_type, name) for v in items]
        return tuple(converted) if origin is tuple else converted
    if isinstance(value, list):
        if len(value) != 1:
            raise ValueError(f"expected one value, got {len(value)}")
        value = value[0]
    return _convert_scalar(value, tp, name)


def _splits_on_commas(tp: Any) -> bool:
    """Whether a list item of type ``tp`` can be given comma-separated: anything but a path."""
    return tp in (int, float, bool, str) or typing.get_origin(tp) is Literal


def _is_sequence_type(tp: Any) -> bool:
    return typing.get_origin(_is_optional(tp)[1]) in (tuple, list)


def _is_bool_type(tp: Any) -> bool:
    return _is_optional(tp)[1] is bool


# --------------------------------------------------------------------------------------------------------------
# help text from the comments beside the fields


def field_comments(cls: type) -> dict[str, str]:
    """Map each field of a dataclass to the ``# comment`` on its line, or to the comment lines just above it."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    comment_at: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comment_at[tok.start[0]] = tok.string.lstrip("#").strip()
    except (tokenize.TokenError, SyntaxError):
        return {}
    lines = source.splitlines()
    result: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        match = re.match(r"\s+(\w+)\s*:", line)
        if not match or match.group(1) not in names or match.group(1) in result:
            continue
        if number in comment_at:
            result[match.group(1)] = comment_at[number]
            continue
        above = []
        k = number - 1
        while k >= 1 and lines[k - 1].lstrip().startswith("#"):
            above.insert(0, comment_at.get(k, ""))
            k -= 1
        if above:
            result[match.group(1)] = " ".join(a for a in above if a)
    return result


def declared_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of the dataclass ``cls`` in the order its own source declares them, those it does not declare
    (inherited and not redeclared) after them in dataclass order: a script's Config inherits typed bases but
    lists its fields, redeclared, in the order a user reads them, which ``--help`` and saved configs keep."""
    fields = dataclasses.fields(cls)
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return list(fields)
    position: dict[str, int] = {}
    for number, line in enumerate(lines):
        match = re.match(r"\s+(\w+)\s*:", line)
        if match:
            position.setdefault(match.group(1), number)
    return sorted(fields, key=lambda f: position.get(f.name, len(lines)))


# --------------------------------------------------------------------------------------------------------------
# value checks: what can work, declared once per field in each script's Config


@dataclasses.dataclass(frozen=True)
class Check:
    """A constraint on one field. ``ok(value, cfg)`` says whether the value can work; ``expect`` says what would
    (a string formatted with ``value`` and ``cfg``, or a function of them)."""

    ok: Callable[[Any, Any], bool]
    expect: str | Callable[[Any, Any], str]

    def problem(self, value: Any, cfg: Any) -> str | None:
        """None when ``value`` fits, else what would work."""
        try:
            fits = bool(self.ok(value, cfg))
        except (TypeError, ValueError):
            fits = False
        if fits:
            return None
        return self.expect(value, cfg) if callable(self.expect) else self.expect.format(value=value, cfg=cfg)


# A Config declares its checks as ``checks: ClassVar[Checks] = {"lr": positive, "epochs": at_least(1), ...}``:
# one entry per field, a Check or a tuple of them. Fields that are None pass every check (None means "not used").
Checks = dict[str, Union[Check, tuple[Check, ...]]]  # noqa: UP007


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def at_least(low: float) -> Check:
    """A finite number >= ``low`` (or None)."""
    return Check(lambda v, c: v is None or (_number(v) and v >= low), f"a number of at least {low:g}")


def above(low: float) -> Check:
    """A finite number > ``low`` (or None)."""
    return Check(lambda v, c: v is None or (_number(v) and v > low), f"a finite number above {low:g}")


def between(low: float, high: float) -> Check:
    """A finite number in [low, high] (or None)."""
    return Check(lambda v, c: v is None or (_number(v) and low <= v <= high), f"a number from {low:g} to {high:g}")


positive = above(0)
non_negative = at_least(0)


def each(check: Check) -> Check:
    """``check`` on every item of a sequence (or None)."""
    def ok(v: Any, c: Any) -> bool:
        return v is None or all(check.problem(x, c) is None for x in v)

    def expect(v: Any, c: Any) -> str:
        bad = next(x for x in v if check.problem(x, c) is not None)
        return f"each value {check.problem(bad, c)} ({_format_default(bad)} is not)"

    return Check(ok, expect)


nonempty = Check(lambda v, c: v is None or len(v) > 0, "at least one value")


def one_of(*choices: str) -> Check:
    """A value (or every value of a sequence) among ``choices``."""
    def ok(v: Any, c: Any) -> bool:
        return v is None or all(x in choices for x in (v if isinstance(v, tuple | list) else [v]))

    return Check(ok, "values among " + ", ".join(choices))


def rule(ok: Callable[[Any, Any], bool], expect: str | Callable[[Any, Any], str]) -> Check:
    """A check of a combination of fields: ``ok(value, cfg)``; ``expect`` may use ``{cfg.other_field}``."""
    return Check(lambda v, c: v is None or ok(v, c), expect)


def _device_exists(name: str) -> bool:
    if name == "auto":
        return True
    import torch

    device = torch.device(name)  # RuntimeError for names torch does not know
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    if device.type == "mps":
        return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    return False


def _devices_here() -> str:
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    names = ["auto", "cpu"] + [f"cuda:{i}" for i in range(gpus)]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        names.append("mps")
    return ", ".join(names)


def _device_ok(v: Any, c: Any) -> bool:
    try:
        return _device_exists(str(v))
    except RuntimeError:
        return False


available_device = Check(_device_ok, lambda v, c: f"a device this machine has: {_devices_here()}")


def config_problems(cfg: Any) -> list[str]:
    """Every value of ``cfg`` that cannot work, as ``--flag VALUE: expected ...`` (empty when all fit)."""
    table: Checks = getattr(type(cfg), "checks", None) or {}
    names = {f.name for f in dataclasses.fields(cfg)}
    problems = []
    for name, checks in table.items():
        if name not in names:
            raise TypeError(f"{type(cfg).__name__}.checks names {name!r}, which is not a field")
        value = getattr(cfg, name)
        for check in checks if isinstance(checks, tuple) else (checks,):
            problem = check.problem(value, cfg)
            if problem is not None:
                problems.append(f"{_flag(name)} {_format_default(value) or '(empty)'}: expected {problem}")
                break
    return problems


def check_config(cfg: T, source: str | None = None) -> T:
    """Raise one UserError line naming every field of ``cfg`` whose value cannot work; return ``cfg``."""
    problems = config_problems(cfg)
    if problems:
        raise UserError((f"{source}: " if source else "") + "; ".join(problems))
    return cfg


def given_fields(cfg: Any) -> frozenset[str] | None:
    """The fields set on the command line (or by --config) for a config from :func:`parse_config`; None when
    unknown (a config built in code)."""
    return getattr(cfg, "_given_fields", None)


# --------------------------------------------------------------------------------------------------------------
# the parser


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and 'did you mean' for unknown flags."""

    known_flags: list[str]

    def error(self, message: str) -> typing.NoReturn:
        if message.startswith("unrecognized arguments:"):
            unknown = message.split(":", 1)[1].split()
            flags = [u for u in unknown if u.startswith("-")] or unknown
            first = flags[0].split("=", 1)[0]
            close = difflib.get_close_matches(first, self.known_flags, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            message = f"unknown option {first}{hint}"
            if len(flags) > 1:
                message += f" and {len(flags) - 1} more"
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _format_default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return " ".join(str(v) for v in value)
    return str(value)


def build_parser(cls: type, prog: str | None = None, description: str | None = None,
                 defaults: Any = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of the dataclass ``cls``; ``--help`` shows the values of
    ``defaults`` (a ``cls`` instance: a preset's) as the defaults, else the fields' own."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    doc = description
    if doc is None:
        doc = inspect.getdoc(cls)
        if not doc or doc.startswith(f"{cls.__name__}("):  # dataclass's generated signature: use the script's doc
            doc = inspect.getdoc(sys.modules.get(cls.__module__))
    parser = _Parser(
        prog=prog,
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", metavar="JSON", help="start from a saved config file; later flags override it")
    flags = ["--config", "--help"]
    for f in declared_fields(cls):
        tp = hints[f.name]
        default = _default_of(f) if defaults is None else getattr(defaults, f.name)
        help_text = comments.get(f.name, "")
        help_text = f"{help_text} " if help_text else ""
        # argparse %-formats help strings: a '%' anywhere (a comment's "2-33%" too) must be doubled
        help_text = (help_text + f"[{_type_name(tp)}; default: {_format_default(default)}]").replace("%", "%%")
        names = [_flag(f.name)]
        if "_" in f.name:
            names.append("--" + f.name)
        flags.extend(names)
        if _is_bool_type(tp):
            parser.add_argument(*names, dest=f.name, nargs="?", const="true", metavar="BOOL", help=help_text)
            parser.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_const",
                                const="false", help=argparse.SUPPRESS)
            flags.append("--no-" + f.name.replace("_", "-"))
        elif _is_sequence_type(tp):
            parser.add_argument(*names, dest=f.name, nargs="+", metavar="V", help=help_text)
        else:
            parser.add_argument(*names, dest=f.name, metavar=_metavar(tp), help=help_text)
    parser.known_flags = flags
    # "--lr -1e-4" is a value, not a flag: argparse's own pattern knows only "-1" and "-0.5"
    parser._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$", re.IGNORECASE)
    return parser


def _metavar(tp: Any) -> str:
    inner = _is_optional(tp)[1]
    if typing.get_origin(inner) is Literal:
        return "{" + ",".join(str(a) for a in typing.get_args(inner)) + "}"
    return getattr(inner, "__name__", "V").upper()


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def config_from_dict(cls: type[T], values: dict[str, Any], *, source: str = "config") -> T:
    """Build ``cls`` from a mapping of field values (JSON-like), checking names and types.

    Fields left out keep their defaults. ``source`` names where the values came from, for error messages.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"{source}: unknown field {key!r}{hint}; fields are: {', '.join(fields)}")
        try:
            kwargs[key] = convert_value(value, hints[key], key)
        except ValueError as e:
            raise UserError(f"{source}: field {key!r}: {e}") from None
    missing = [n for n, f in fields.items() if n not in kwargs and _default_of(f) is dataclasses.MISSING]
    if missing:
        raise UserError(f"{source}: missing required field(s) {', '.join(missing)}")
    return cls(**kwargs)


def parse_config(cls: type[T], argv: Sequence[str] | None = None, *, prog: str | None = None) -> T:
    """Parse command-line flags into an instance of the dataclass ``cls`` and check it as a whole (``cls.checks``).

    Bad values, values that cannot work and unknown flags end the program with a one-line message (exit status
    2), like argparse.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(cls, prog=prog, **_preset_help(cls, argv))
    args = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    given: set[str] = set()
    config_file = args.pop("config", None)
    if config_file is not None:
        try:
            base = load_config(cls, config_file, check=False)  # flags below may still fix a value
        except UserError as e:
            parser.exit(2, f"{parser.prog}: error: {e}\n")
        values.update({f.name: getattr(base, f.name) for f in dataclasses.fields(base)})  # typed, not JSON values
        given = set(given_fields(base) or ())
    hints = typing.get_type_hints(cls)
    for name, raw in args.items():
        try:
            values[name] = convert_value(raw, hints[name], name)
        except ValueError as e:
            parser.exit(2, f"{parser.prog}: error: {_flag(name)}: {e}\n")
    cfg = cls(**values)
    problems = config_problems(cfg)
    if problems:
        parser.exit(2, f"{parser.prog}: error: {'; '.join(problems)}\n")
    try:
        object.__setattr__(cfg, "_given_fields", frozenset(given | set(args)))
    except AttributeError:  # a slotted dataclass: resume then compares every field
        pass
    return cfg


def _preset_help(cls: type, argv: list[str]) -> dict[str, Any]:
    """For ``--config FILE --help``: FILE's values as the defaults shown and its description above them."""
    if not {"-h", "--help"} & set(argv):
        return {}
    given = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    given += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    if not given:
        return {}
    try:
        preset = load_config(cls, given[-1], check=False)
    except UserError:
        return {}  # the parse reports it, unless --help ends it first
    doc = inspect.getdoc(sys.modules.get(cls.__module__)) or ""
    about = getattr(preset, "_description", None)
    head = textwrap.fill(f"--config {given[-1]}" + (f": {about}" if about else ""), 100)
    return {"defaults": preset, "description": f"{head}\n(the defaults below are this preset's values)\n\n{doc}"}


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config's fields as a JSON-ready dict (paths become strings, tuples lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        return v

    return {f.name: plain(getattr(cfg, f.name)) for f in declared_fields(type(cfg))}


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as JSON (atomically) and return the path."""
    path = Path(path)
    write_json(path, config_to_dict(cfg))
    return path


def load_config(cls: type[T], path: str | Path, *, check: bool = True) -> T:
    """Read a config saved by :func:`save_config`, with the same type and value checks as the command line."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"config file {path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"config file {path} is not valid JSON ({e}); fix or delete it") from None
    if not isinstance(values, dict):
        raise UserError(f"config file {path} must hold a JSON object of field values")
    about = values.pop("description", None)  # a preset's description of itself, for --help: not a field
    cfg = config_from_dict(cls, values, source=str(path))
    try:
        object.__setattr__(cfg, "_given_fields", frozenset(values))
        object.__setattr__(cfg, "_description", about)
    except AttributeError:
        pass
    return check_config(cfg, str(path)) if check else cfg


def run(cls: type[T], main: Callable[[T], Any], argv: Sequence[str] | None = None) -> None:
    """Parse and check the config for ``cls``, call ``main(config)``, and end expected failures with one line.

    The scripts' entry point: ``if __name__ == "__main__": run(Config, main)``; see :func:`run_guarded`.
    """
    prog = Path(sys.argv[0]).name if argv is None else None
    cfg = parse_config(cls, argv, prog=prog)
    run_guarded(lambda: main(cfg))


def run_guarded(work: Callable[[], Any]) -> None:
    """Call ``work()`` as a command-line stage: every expected way out ends in one line on stderr.

    A :class:`UserError` or an operating-system error (a full disk, a read-only or vanished folder, an I/O
    error) prints ``error: ...`` and exits 1; Ctrl-C prints ``interrupted`` (with how to continue, when the
    stage knows) and exits 130; SIGTERM (``kill``, a job scheduler's stop) takes the same way out, so the stage
    cleans up its temporaries alike, and prints ``terminated``, exit 143 (128 + 15). Anything else is a bug and
    keeps its traceback.
    """
    with _sigterm_as_interrupt() as terminated:
        try:
            work()
        except UserError as e:
            _fail(f"error: {e}", 1)
        except KeyboardInterrupt as e:  # also SIGTERM's Terminated, or what a stage raised in its place
            word, status = ("terminated", 143) if terminated else ("interrupted", 130)
            _fail(word + (f"; {e.args[0]}" if e.args and e.args[0] else ""), status)
        except OSError as e:
            if e.errno is None:  # raised by code, not met in the machine: a bug
                raise
            _fail(f"error: {describe_os_error(e)}", 1)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[list[bool]]:
    """While the block runs, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the main thread, so
    every ``finally`` and staging cleanup runs as for Ctrl-C; the yielded list becomes truthy once it came. A
    second SIGTERM ends the process at once."""
    fired: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield fired
        return

    def handler(signum: int, frame: Any) -> None:
        if fired:  # a second SIGTERM while cleaning up: end now, as an unhandled SIGTERM does
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        fired.append(True)
        raise Terminated("")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield fired
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fail(line: str, status: int) -> typing.NoReturn:
    print(line.replace("\n", " "), file=sys.stderr, flush=True)
    raise SystemExit(status) from None
