"""Read a TOML recipe, apply overrides, validate every section, and locate every problem."""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from ..components import KIND_LABELS
from ..problems import Problem, RecipeError
from .model import FormatTable, Recipe, RecipeHeader, Section, inline_template_table, member_standardizer_values
from .overrides import Override, apply_overrides, parse_overrides
from .positions import PathKey, dotted, index_positions, locate

if TYPE_CHECKING:  # pragma: no cover
    from ..plugins import PluginManager

STAGE_TABLES: dict[str, str] = {"load": "backend", "adapt": "adapter", "train": "trainer"}
STAGE_ARRAYS: dict[str, str] = {"report": "reporter", "export": "exporter"}
FORMAT_COMPONENTS: dict[str, str] = {"standardizer": "dataset_format", "chat_template": "chat_template"}
REQUIRED = ("load",)
STAGE_KEYS = {"load", "adapt", "format", "train", "report", "export", "name", "seed"}
SECRET_VALUE = re.compile(r"\b(hf_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9_\-]{20,})\b")
SECRET_KEYS = {"token", "hf_token", "api_key", "password", "secret"}


def _secrets(node: Any, path: PathKey = ()) -> list[PathKey]:
    """Key paths whose values look like credentials: recipes are copied into run folders."""
    found: list[PathKey] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key.lower() in SECRET_KEYS and isinstance(value, str) and value:
                found.append(path + (key,))
            else:
                found += _secrets(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _secrets(value, path + (i,))
    elif isinstance(node, str) and SECRET_VALUE.search(node):
        found.append(path)
    return found


class _Collector:
    """Collects problems with their key paths; locates them at the end."""

    def __init__(self) -> None:
        self.items: list[tuple[PathKey, Problem]] = []
        self.unbuildable = False
        """A table present in the recipe could not be built even without its wrong keys (unknown ``use``...):
        checks across sections are left for the next pass, where they would talk about a table that is not there."""

    def add(self, path: PathKey, message: str, severity: str = "error") -> None:
        self.items.append((tuple(path), Problem(dotted(path), message, severity)))  # type: ignore[arg-type]

    def from_validation(self, base: PathKey, exc: ValidationError, model: type[BaseModel], label: str) -> None:
        # a value that matched no member of a union gives one error per member: report them as one problem
        alternatives: dict[PathKey, tuple[list[str], Any]] = {}
        for err in exc.errors(include_url=False):
            field_loc = tuple(part for part in err["loc"] if not _is_union_tag(part))
            if field_loc != tuple(err["loc"]) and err["type"] != "extra_forbidden":
                messages, _ = alternatives.setdefault(base + field_loc, ([], err.get("input")))
                messages.append(_clean(err["msg"]).removeprefix("Input should be "))
                continue
            loc = base + tuple(err["loc"])
            kind = err["type"]
            if kind == "extra_forbidden":
                key = str(err["loc"][-1]) if err["loc"] else ""
                known = _fields_at(model, err["loc"][:-1])
                if model is RecipeHeader and not base:  # a misspelled stage table is a top-level key too
                    known = sorted({*known, *STAGE_TABLES, *STAGE_ARRAYS, "format"})
                msg = f"unknown key for {label}"
                close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                if close:
                    msg += f'; did you mean "{close[0]}"?'
                elif key in STAGE_KEYS and base:
                    msg += (f"; a key written after a [table] header belongs to that table: move it above the first "
                            f"table, or write [{key}] / [[{key}]]")
                elif known:
                    msg += f"; valid keys: {', '.join(known)}"
            elif kind == "missing":
                msg = f"missing required key for {label}"
            else:
                msg = _clean(err["msg"])
                msg += _input_note(err.get("input"), msg)
            self.add(loc, msg)
        for path, (messages, value) in alternatives.items():
            self.add(path, f"expected {' or '.join(dict.fromkeys(messages))}{_input_note(value)}")


_UNION_TAG = re.compile(r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\]|literal\[.*\]|[a-z-]+\[.*\])$")


def _is_union_tag(part: Any) -> bool:
    """pydantic names the union member a value was tried against in the error's location
    (``list[str]``, ``literal['all-linear']``): not a key of the recipe."""
    return isinstance(part, str) and bool(_UNION_TAG.match(part))


def _clean(message: str) -> str:
    """pydantic's message without its ``Value error,`` prefix."""
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def _input_note(value: Any, message: str = "") -> str:
    """`` (got ...)`` for a value the user wrote; nothing for a whole table, for a value the message already
    shows, and never a secret."""
    if isinstance(value, (dict, list)) and len(repr(value)) > 80:
        return ""
    if isinstance(value, str) and value and value in message:
        return ""
    text = repr(value)
    if SECRET_VALUE.search(text):
        return " (got a value that looks like a secret; not shown)"
    return f" (got {text})"


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        field = model.model_fields.get(str(part)) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None) if field else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return []
    return sorted(k for k in model.model_fields if k != "use")


def _validate_section(pm: "PluginManager", kind: str, path: PathKey, raw: Any, ctx: dict, out: _Collector,
                      blocks_checks: bool = True) -> Section | None:
    """The section at ``path``, salvaged without its wrong keys when it has some; None when it cannot be built.

    ``blocks_checks``: when it cannot be built, the checks across sections wait for the next pass (a check would
    take the missing section for an absent one). The format's standardizer and chat template do not block: the
    checks that read them skip themselves on a recipe with errors."""
    section = _build_section(pm, kind, path, raw, ctx, out)
    out.unbuildable |= blocks_checks and section is None
    return section


def _build_section(pm: "PluginManager", kind: str, path: PathKey, raw: Any, ctx: dict, out: _Collector) -> Section | None:
    registry = pm.registry
    label = KIND_LABELS[kind]
    if isinstance(raw, str):
        raw = {"use": raw}
    if not isinstance(raw, dict):
        out.add(path, f"expected a table with use = \"...\" ({_article(label)} {label}), got {type(raw).__name__}")
        return None
    use = raw.get("use")
    if use is None:
        typo = difflib.get_close_matches("use", [str(k) for k in raw], n=1, cutoff=0.6)
        if typo:
            out.add(path + (typo[0],), f'unknown key; did you mean "use"? name {_article(label)} {label}; installed: '
                                       f"{', '.join(registry.names(kind)) or '(none)'}")
            return None
        out.add(path + ("use",), f"missing 'use': name {_article(label)} {label}; installed: {', '.join(registry.names(kind)) or '(none)'}")
        return None
    entry = registry.get(kind, use) if isinstance(use, str) else None
    if entry is None:
        alias = next((e.name for e in registry.entries(kind) if use in getattr(e.cls, "also_known_as", ())), None)
        if alias is not None:
            out.add(path + ("use",), f'unknown {label} {use!r}; did you mean {alias!r}? (what other tools call '
                                     f'{use!r} is {alias!r} here)')
        else:
            out.add(path + ("use",), registry.unknown_message(kind, use))
        return None
    options_model = entry.cls.Options
    rest = {k: v for k, v in raw.items() if k != "use"}
    try:
        options = options_model.model_validate(rest, context=ctx)
    except ValidationError as exc:
        out.from_validation(path, exc, options_model, f'{label} "{use}"')
        options = salvage(options_model, rest, exc, ctx)
        if options is None:
            return None
    return Section(kind, dotted(path), use, options, entry)


def salvage(model: type[BaseModel], raw: dict, exc: ValidationError, ctx: dict) -> BaseModel | None:
    """``model`` built from ``raw`` without the keys that failed (their defaults instead), or None.

    The wrong keys are already reported; the salvaged table lets the checks across sections run in the same pass,
    so a user sees every problem at once instead of a new one after each fix.
    """
    for _ in range(3):
        bad = {err["loc"][0] for err in exc.errors(include_url=False) if err["loc"] and isinstance(err["loc"][0], str)}
        if not bad or not bad & set(raw):
            return None
        raw = {k: v for k, v in raw.items() if k not in bad}
        try:
            return model.model_validate(raw, context=ctx)
        except ValidationError as again:
            exc = again
    return None


def parse_toml(text: str, file: str) -> tuple[dict[str, Any] | None, list[Problem]]:
    try:
        return tomllib.loads(text), []
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        if msg.startswith(("Cannot overwrite a value", "Cannot declare")):
            duplicates = _duplicate_problems(text, file)
            if duplicates:
                return None, duplicates
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        line, col = (int(m.group(1)), int(m.group(2))) if m else (None, None)
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg)
        if line is not None:
            msg += _syntax_hint(text.splitlines()[line - 1] if line <= len(text.splitlines()) else "")
        return None, [Problem("", f"TOML syntax error: {msg}", file=file, line=line, column=col)]


def _duplicate_problems(text: str, file: str) -> list[Problem]:
    """One problem per key or table written twice, at the second place, naming the first."""
    found: list = []
    index_positions(text, duplicates=found)
    problems = []
    for path, (first_line, _), (line, column) in found:
        key = path[-1] if path and isinstance(path[-1], str) else dotted(path)
        where = f"[{dotted(path[:-1])}]" if len(path) > 1 else "the top level"
        if text.splitlines()[line - 1].lstrip().startswith("["):
            message = f"table [{dotted(path)}] is declared twice; first declared at line {first_line}"
        else:
            message = (f'duplicate key "{key}" in {where}: first set at line {first_line}; '
                       "TOML allows each key once, so delete one of the two")
        problems.append(Problem(dotted(path), message, file=file, line=line, column=column))
    return problems


_BARE_VALUE = re.compile(r"^\s*([A-Za-z0-9_.\-\"']+)\s*=\s*([A-Za-z_][^\s\"'\[\]{}#,]*)\s*(#.*)?$")


def _syntax_hint(line: str) -> str:
    """A hint for the most common TOML slip: a string written without quotes (``use = hf``)."""
    m = _BARE_VALUE.match(line)
    if m and m.group(2).lower() in ("true", "false") and m.group(2) not in ("true", "false"):
        return f"; TOML booleans are lowercase: {m.group(1)} = {m.group(2).lower()}"
    if m and m.group(2) not in ("true", "false", "inf", "nan"):
        return f'; a string needs quotes: {m.group(1)} = "{m.group(2)}"'
    return ""


def load_recipe(path: str | Path, overrides: list[str] = (), pm: "PluginManager | None" = None) -> Recipe:
    """Load and validate a recipe file; raise :class:`RecipeError` listing every problem."""
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError([Problem("", f"cannot read the recipe: {exc.strerror or exc}", file=file)]) from None
    except UnicodeDecodeError as exc:
        raise RecipeError([Problem("", f"the recipe is not UTF-8 text (byte {exc.start}): a TOML file is expected",
                                   file=file)]) from None
    return load_recipe_text(text, file=file, recipe_dir=path.resolve().parent, overrides=list(overrides), pm=pm, source=path)


def load_recipe_text(
    text: str,
    file: str = "<recipe>",
    recipe_dir: Path | None = None,
    overrides: list[str] = (),
    pm: "PluginManager | None" = None,
    source: Path | None = None,
) -> Recipe:
    """Validate recipe text (see :func:`load_recipe`)."""
    if pm is None:
        from ..plugins import get_plugin_manager

        pm = get_plugin_manager()
    data, problems = parse_toml(text, file)
    if data is None:
        raise RecipeError(problems)
    parsed, override_problems = parse_overrides(list(overrides))
    override_problems += apply_overrides(data, parsed)  # the overrides that can be applied are: every problem at once

    ctx = {"recipe_dir": str(recipe_dir or Path.cwd())}
    out = _Collector()
    for secret in _secrets(data):
        out.add(secret, "looks like a secret (a token or key); recipes are copied into run folders and logs, so "
                "keep it in an environment variable (the hf backend reads HF_TOKEN; see load.token_env)")
    registry = pm.registry

    header_raw = {k: v for k, v in data.items() if k not in (*STAGE_TABLES, *STAGE_ARRAYS, "format")}
    header = None
    try:
        header = RecipeHeader.model_validate(header_raw, context=ctx)
    except ValidationError as exc:
        out.from_validation((), exc, RecipeHeader, "a recipe (top level)")
        header = salvage(RecipeHeader, header_raw, exc, ctx)
    for key in REQUIRED:
        if key not in data:
            out.add((key,), f"missing [{key}] table")
    if "train" in data and "format" not in data:
        out.add(("format",), "missing [format] table: [train] needs data to train on")
    if "train" not in data and not data.get("export"):
        out.add(("train",), "nothing to do: add [train] and [format] to fine-tune, or [[export]] tables to convert "
                            "the loaded model (e.g. to GGUF)")

    sections: dict[str, Section | None] = {}
    for key, kind in STAGE_TABLES.items():
        sections[key] = _validate_section(pm, kind, (key,), data[key], ctx, out) if key in data else None

    lists: dict[str, list[Section]] = {}
    for key, kind in STAGE_ARRAYS.items():
        raw = data.get(key, [])
        if isinstance(raw, dict):
            out.add((key,), f"write [[{key}]] (an array of tables), not [{key}]")
            raw, out.unbuildable = [], True
        elif not isinstance(raw, list):
            out.add((key,), f"expected [[{key}]] tables (an array of tables with use = \"...\"), got "
                            f"{type(raw).__name__} {raw!r}")
            raw, out.unbuildable = [], True
        items = [_validate_section(pm, kind, (key, i), item, ctx, out) for i, item in enumerate(raw)]
        lists[key] = [s for s in items if s is not None]

    fmt, fmt_sections = None, {"standardizer": None, "chat_template": None}
    if isinstance(data.get("format"), dict):
        raw_fmt = data["format"]
        try:
            fmt = FormatTable.model_validate(raw_fmt, context=ctx)
        except ValidationError as exc:
            out.from_validation(("format",), exc, FormatTable, "[format]")
            fmt = salvage(FormatTable, {k: v for k, v in raw_fmt.items() if k not in FORMAT_COMPONENTS}, exc, ctx)
            out.unbuildable |= fmt is None
        for key, kind in FORMAT_COMPONENTS.items():
            value = raw_fmt.get(key, FormatTable.model_fields[key].default)
            value = inline_template_table(value) if key == "chat_template" else value
            fmt_sections[key] = _validate_section(pm, kind, ("format", key), value, ctx, out, blocks_checks=False)
        member_sections = [_validate_section(pm, "dataset_format", ("format", "datasets", i, "standardizer"), value,
                                             ctx, out) for i, value in member_standardizer_values(raw_fmt)]
    elif "format" in data:
        out.add(("format",), "expected a [format] table")

    recipe = None
    wrong = [path for path, p in out.items if p.severity == "error"]
    buildable = (header is not None and sections.get("load") is not None and not out.unbuildable
                 and ("format" in data) == (fmt is not None)
                 and (fmt is None or all(m is not None for m in member_sections)))
    if buildable:
        recipe = Recipe(
            header=header, load=sections["load"], adapt=sections["adapt"], format=fmt,
            standardizer=fmt_sections["standardizer"], chat_template=fmt_sections["chat_template"],
            train=sections["train"], report=lists["report"], export=lists["export"],
            member_standardizers=member_sections if fmt is not None else [],
            source=source, text=text, overrides=list(overrides),
        )
        # with wrong keys left out (their defaults instead): every problem in one pass, none twice
        for problem in _cross_checks(pm, recipe, tolerant=bool(wrong)):
            path = _path_of(problem.path)
            if not any(path[: len(w)] == w for w in wrong):
                out.items.append((path, problem))

    positions = index_positions(text)
    located = sorted([*(_locate(p, path, positions, file, parsed) for path, p in out.items), *map(_masked, override_problems)],
                     key=lambda p: (p.override is not None, p.line or 0, p.column or 0))
    errors = [p for p in located if p.severity == "error"]
    if errors or recipe is None:
        raise RecipeError(located)
    recipe.warnings = located
    return recipe


def _cross_checks(pm: "PluginManager", recipe: Recipe, tolerant: bool = False) -> list[Problem]:
    """Problems across sections (``validate_recipe`` hooks, ``Component.check``).

    ``tolerant``: the recipe was salvaged from one with errors (wrong keys left out); a check that fails on it
    is skipped, since the errors already reported are what the user must fix first.
    """
    problems: list[Problem] = []
    try:
        for result in pm.hook.validate_recipe(recipe=recipe, registry=pm.registry):
            problems.extend(result or [])
    except Exception:
        if not tolerant:
            raise
    for section in recipe.sections():
        try:
            problems.extend(section.component.check(recipe) or ())
        except Exception:
            if not tolerant:
                raise
    return problems


def _path_of(text: str) -> PathKey:
    parts: list[str | int] = []
    for m in re.finditer(r"([^.\[\]]+)|\[(\d+)\]", text):
        parts.append(int(m.group(2)) if m.group(2) is not None else m.group(1))
    return tuple(parts)


def _locate(problem: Problem, path: PathKey, positions: dict, file: str, overrides: list[Override]) -> Problem:
    for ov in reversed(overrides):
        inside = path[: len(ov.path)] == ov.path
        above_and_unwritten = ov.path[: len(path)] == path and path not in positions
        table_unwritten = bool(path) and path[:1] == ov.path[:1] and path[:1] not in positions  # [train] made by it
        if (inside or above_and_unwritten or table_unwritten) and problem.override is None:
            problem.override = ov.text
            return _masked(problem)
    problem.file = problem.file or file
    if problem.line is None:
        where = locate(positions, path)
        if where:
            problem.line, problem.column = where
    return problem


def _masked(problem: Problem) -> Problem:
    """An override that holds a secret is shown as ``key=***``."""
    text = problem.override or ""
    key = text.split("=", 1)[0]
    last = key.rsplit(".", 1)[-1].lower()
    if SECRET_VALUE.search(text) or last in SECRET_KEYS or problem.message.startswith("looks like a secret"):
        problem.override = key + "=***"
    return problem


def locate_problems(recipe: Recipe, problems: list[Problem]) -> list[Problem]:
    """Give problems found after loading (``preflight``) the recipe's file, line and column."""
    positions = index_positions(recipe.text)
    parsed, _ = parse_overrides(list(recipe.overrides))
    file = str(recipe.source) if recipe.source else "<recipe>"
    return [_locate(p, _path_of(p.path), positions, file, parsed) for p in problems]
