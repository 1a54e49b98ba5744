"""What a tenant's SET, RESET and set_config() may change, and what the proxy must track afterwards.

A session-level change of an allowed setting becomes a (name, value) pair of ``Plan.settings``: the
proxy re-applies it whenever the session moves to another pooled backend. A change the proxy cannot
know in advance (a value computed at run time, a set_config inside PREPARE) becomes a pin instead.
Settings the proxy itself fixes for a tenant (search_path, standard_conforming_strings: the proxy
lexes and resolves names under them) accept their pinned value as a no-op and nothing else.

>>> import pglast
>>> c = Changes("public")
>>> c.set_statement(pglast.parse_sql("SET SESSION TimeZone = 'UTC'")[0].stmt)
'set'
>>> c.set_statement(pglast.parse_sql("SET datestyle TO iso, dmy")[0].stmt)
'set'
>>> c.set_statement(pglast.parse_sql("RESET timezone")[0].stmt)
'reset'
>>> c.set_statement(pglast.parse_sql("SET LOCAL lock_timeout = 5")[0].stmt)  # this transaction only
'set'
>>> c.set_statement(pglast.parse_sql("SET search_path = public")[0].stmt)  # the pinned value: a no-op
'set'
>>> c.settings
[('timezone', "'UTC'"), ('datestyle', "'iso', 'dmy'"), ('timezone', None)]
>>> try:
...     c.set_statement(pglast.parse_sql("SET standard_conforming_strings = off")[0].stmt)
... except Refused as err:
...     print(err.reason, err.message)
set_forbidden SET standard_conforming_strings is not allowed for tenants except to on (statements are lexed that way)
"""

from __future__ import annotations

from typing import Any

from pglast import ast, enums

from tenantgate.keyring.quoting import render_identifier

from .errors import Refused
from .transforms import deparse, string_literal

# pglast's stubs mark every node field Optional; the walkers check shapes at run time.
AstNode = Any

# Session settings a tenant may SET/RESET/set_config: formatting, timeouts and transaction modes.
# role, session_authorization, row_security, every tenantgate.* setting and every setting that
# changes how the backend lexes (backslash_quote, escape_string_warning, ...) are deliberately absent;
# search_path and standard_conforming_strings accept only their pinned value (PINNED).
ALLOWED_SETTINGS = frozenset({
    "timezone", "statement_timeout", "application_name", "datestyle", "intervalstyle",
    "extra_float_digits", "client_encoding", "lock_timeout", "idle_in_transaction_session_timeout",
    "idle_session_timeout", "transaction_isolation", "transaction_read_only", "transaction_deferrable",
    "default_transaction_isolation", "default_transaction_read_only", "default_transaction_deferrable",
    "bytea_output", "client_min_messages", "work_mem", "synchronous_commit", "lc_monetary",
    "lc_numeric", "lc_time", "xmloption", "xmlbinary",
    "jit",  # asyncpg turns it off around its type introspection (set_config('jit', 'off', false))
})
# Whatever the syntax, these apply to the current transaction only: never session state.
TRANSACTION_SETTINGS = frozenset({"transaction_isolation", "transaction_read_only", "transaction_deferrable"})
PINNED = frozenset({"search_path", "standard_conforming_strings"})
_TRUE = frozenset({"on", "true", "yes", "1"})
_FALSE = frozenset({"off", "false", "no", "0"})


def setting_allowed(name: str) -> bool:
    """True for a setting a tenant may change at all (some only to their pinned value).

    >>> setting_allowed("TimeZone"), setting_allowed("search_path"), setting_allowed("tenantgate.tenant")
    (True, True, False)
    """
    return name.lower() in ALLOWED_SETTINGS or name.lower() in PINNED


def split_identifiers(text: str) -> list[str] | None:
    """A list setting's value as the backend reads it (SplitIdentifierString): comma-separated,
    double quotes keep case and commas, other names fold to lower case; None when malformed.

    >>> split_identifiers(' Public , "T_Acme", "a""b"'), split_identifiers('"open'), split_identifiers('a,,b')
    (['public', 'T_Acme', 'a"b'], None, None)
    """
    names: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == '"':
            end, name = i + 1, ""
            while True:
                close = text.find('"', end)
                if close < 0:
                    return None
                name += text[end:close]
                if text[close + 1:close + 2] != '"':
                    break
                name, end = name + '"', close + 2
            i = close + 1
        else:
            start = i
            while i < n and text[i] != "," and not text[i].isspace():
                i += 1
            name = text[start:i].lower()
        if not name:
            return None
        names.append(name)
        while i < n and text[i].isspace():
            i += 1
        if i == n:
            return names
        if text[i] != ",":
            return None
        i += 1


def type_names(cast: AstNode) -> list[str]:
    """The (possibly schema-qualified) type name of a cast."""
    return [s.sval for s in cast.typeName.names]


def _const_text(node: AstNode) -> str | None:
    """The text of a string literal (also cast to a text type), None for anything else."""
    if isinstance(node, ast.TypeCast) and type_names(node)[-1] in ("text", "varchar"):
        node = node.arg
    if isinstance(node, ast.A_Const) and not node.isnull and isinstance(node.val, ast.String):
        return str(node.val.sval)
    return None


def _const_word(node: AstNode) -> str:
    """A SET argument (a name, string or number) as the text the backend reads."""
    val = node.val
    return str(val.sval if isinstance(val, ast.String) else val.fval if isinstance(val, ast.Float) else val.ival)


def _param(node: AstNode) -> int | None:
    """The n of a bare $n (also cast to text), None for anything else."""
    if isinstance(node, ast.TypeCast) and type_names(node)[-1] in ("text", "varchar"):
        node = node.arg
    return int(node.number or 0) if isinstance(node, ast.ParamRef) else None


def _bool_word(text: str) -> bool | None:
    """A boolean's text in the forms the proxy accepts (a subset of PostgreSQL's: no prefixes, no blanks)."""
    word = text.lower()
    return True if word in _TRUE | {"t"} else False if word in _FALSE | {"f"} else None


def _const_bool(node: AstNode) -> bool | None:
    """A literal boolean (true, 'off', 'yes'::boolean ...), None when not known before run time."""
    if isinstance(node, ast.TypeCast) and type_names(node)[-1] == "bool":
        node = node.arg
    if isinstance(node, ast.A_Const) and isinstance(node.val, ast.Boolean):
        return bool(node.val.boolval)
    return _bool_word(_const_text(node) or "")


BoundArg = int | str  # a set_config() argument: $n (known at Bind), or a literal's text
BoundSetConfig = tuple[BoundArg, BoundArg, BoundArg]  # (name, value, is_local)


class Changes:
    """The setting changes and pins of one message's statements, in order.

    ``search_path``: the schema the proxy pins the tenant's search_path to.
    """

    def __init__(self, search_path: str) -> None:
        self.search_path = search_path
        self.settings: list[tuple[str, str | None]] = []
        self.pins: list[str] = []
        self._statement: dict[str, str | None] = {}  # this statement's set_config values by name
        self.bound: list[BoundSetConfig] = []  # set_config() calls with $n arguments: checked at Bind

    def begin(self) -> None:
        """A new statement starts (set_config calls within one run in no defined order)."""
        self._statement = {}

    def pin(self, what: str) -> None:
        if what not in self.pins:
            self.pins.append(what)

    def set_statement(self, stmt: AstNode) -> str:
        """Check a SET/RESET statement and record what it changes; its kind (set/reset/reset_all)."""
        k = enums.VariableSetKind
        if stmt.kind == k.VAR_RESET_ALL:
            return "reset_all"
        if stmt.name == "TRANSACTION":  # SET TRANSACTION: this transaction only
            return "set"
        if stmt.name == "SESSION CHARACTERISTICS":  # the default_transaction_* settings
            for item in stmt.args or ():
                arg = item.arg.val
                value = str(arg.sval) if isinstance(arg, ast.String) else ("on" if arg.ival else "off")
                self.settings.append((f"default_{item.defname}", deparse(string_literal(value))))
            return "set"
        name = str(stmt.name).lower()
        verb = "RESET" if stmt.kind == k.VAR_RESET else "SET"
        kind = "reset" if stmt.kind == k.VAR_RESET else "set"
        if stmt.kind in (k.VAR_RESET, k.VAR_SET_DEFAULT):
            self._change(name, None, known=True, local=stmt.is_local, how=verb)
            return kind
        args = stmt.args or ()
        if stmt.kind != k.VAR_SET_VALUE or not all(isinstance(a, ast.A_Const) for a in args):
            # SET ... FROM CURRENT, SET TIME ZONE INTERVAL '...': no value to re-apply as SET name TO
            if name in PINNED or name == "client_encoding" or not setting_allowed(name):
                raise Refused("42501", f"{verb} {stmt.name} is not allowed for tenants in this form", "set_forbidden")
            if not stmt.is_local and name not in TRANSACTION_SETTINGS:
                self.pin("set")
            return kind
        items = [_const_word(a) for a in args]
        text = ", ".join(deparse(a) for a in args)
        self._change(name, (items, text), known=True, local=stmt.is_local, how=verb)
        return kind

    def set_config(self, args: tuple[AstNode, ...], *, deferred: bool) -> tuple[AstNode, ...]:
        """Check set_config(name, value, is_local) and record the change; the arguments to send.

        ``deferred``: the call runs later than this statement (inside PREPARE or DECLARE). A
        search_path (accepted only when it names the pinned schema) is sent in the proxy's own
        spelling, so the backend holds exactly the value the proxy pinned.

        >>> import pglast
        >>> call = pglast.parse_sql("SELECT set_config('search_path', ' PUBLIC ', false)")[0].stmt.targetList[0].val
        >>> deparse(Changes("public").set_config(call.args, deferred=False)[1])
        "'public'"
        """
        if len(args) != 3:
            raise Refused("42501", "set_config() takes a setting name, a value and is_local", "set_forbidden")
        params = [_param(a) for a in args]
        if not deferred and any(n is not None for n in params):
            self._bound_call(args, params)
            return args
        name = _const_text(args[0])
        if name is None:
            raise Refused("42501", "set_config() needs a literal setting name", "set_forbidden")
        name = name.lower()
        value, local = _const_text(args[1]), _const_bool(args[2])
        if value is None:
            change = None
        elif name == "search_path":
            change = (split_identifiers(value) or [], deparse(string_literal(value)))
        else:
            change = ([value], deparse(string_literal(value)))
        how = "set_config() of"
        if name == "search_path":
            self._change(name, change, known=change is not None, local=True, how=how)
            return (args[0], string_literal(render_identifier(self.search_path)), args[2])
        if deferred or local is None:
            # the change (if any) happens at an unknown point or for an unknown scope
            self._change(name, change, known=change is not None, local=True, how=how)
            if name not in PINNED:
                self.pin("set_config")
            return args
        self._known(name, change, local, how)
        return args

    def _known(self, name: str, change: tuple[list[str], str] | None, local: bool, how: str) -> None:
        """A set_config() whose scope is known (the value too, unless ``change`` is None)."""
        self._change(name, change, known=change is not None, local=local, how=how)
        if local or name in TRANSACTION_SETTINGS or name in PINNED:
            return
        text = None if change is None else change[1]
        if change is None or self._statement.setdefault(name, text) != text:
            self.pin("set_config")  # a run-time value, or two values in an undefined order

    def _bound_call(self, args: tuple[AstNode, ...], params: list[int | None]) -> None:
        """set_config() with $n arguments (a Parse): checked when the Bind supplies them (bind_set_config);
        the other arguments must be literals, and a literal name must be one a tenant may set at all."""
        spec: list[BoundArg] = []
        for i, (arg, n) in enumerate(zip(args, params, strict=True)):
            if n is not None:
                spec.append(n)
                continue
            text = _const_text(arg) if i < 2 else (None if (b := _const_bool(arg)) is None else str(b).lower())
            if text is None:
                raise Refused("42501", "set_config() with parameters needs its other arguments as literals",
                              "set_forbidden")
            spec.append(text)
        if isinstance(spec[0], str) and not setting_allowed(spec[0]):
            raise Refused("42501", f"set_config() of {spec[0].lower()} is not allowed for tenants", "set_forbidden")
        self.bound.append((spec[0], spec[1], spec[2]))

    def bind_set_config(self, name: str, value: str, local: str) -> None:
        """A set_config() of a Bind's values, with the rules of its literal form (the backend gets these
        values as they are: nothing is substituted, so what is accepted is exactly what it will hold).

        >>> c = Changes("public")
        >>> c.bind_set_config("TimeZone", "UTC", "false"); c.bind_set_config("datestyle", "ISO", "t"); c.settings
        [('timezone', "'UTC'")]
        >>> for args in [("search_path", "evil", "false"), ("tenantgate.tenant", "x", "false"), ("role", "x", "f"),
        ...              ("standard_conforming_strings", "off", "false"), ("timezone", "UTC", "maybe"),
        ...              ("search_path", " PUBLIC", "true"), ("client_encoding", "UTF8", "false")]:
        ...     try:
        ...         c.bind_set_config(*args)
        ...     except Refused as err:
        ...         print(err.sqlstate, " ".join(err.message.split()[3:8]))
        42501 is not allowed for tenants
        42501 is not allowed for tenants
        42501 is not allowed for tenants
        42501 is not allowed for tenants
        0A000 parameter for is_local takes true/false/on/off/yes/no/1/0/t/f
        42501 with a parameter is allowed
        42501 with a parameter is not
        """
        how = "set_config() of"
        scope = _bool_word(local)
        if scope is None:
            raise Refused("0A000", "set_config() with a parameter for is_local takes "
                          "true/false/on/off/yes/no/1/0/t/f only", "set_forbidden")
        name = name.lower()
        if name == "search_path":
            self._change(name, (split_identifiers(value) or [], ""), known=True, local=True, how=how)
            if value != render_identifier(self.search_path):
                raise Refused("42501", "set_config() of search_path with a parameter is allowed only as "
                              f"the pinned schema spelled {render_identifier(self.search_path)!r}", "set_forbidden")
            return
        if name == "client_encoding":  # the proxy lexes in it: only a literal it can check at Parse
            raise Refused("42501", "set_config() of client_encoding with a parameter is not allowed for "
                          "tenants (statements are lexed in it): set it in the connection string", "set_forbidden")
        self._known(name, ([value], deparse(string_literal(value))), scope, how)

    def _change(self, name: str, change: tuple[list[str], str] | None, *, known: bool, local: bool,
                how: str) -> None:
        """Refuse what a tenant may not change; record a session-level change of a known value.

        ``change``: (the value's items as the backend reads them, its SQL text), None for RESET or
        SET ... TO DEFAULT when ``known``, else a value only known at run time.
        """
        if name == "search_path":
            if change is None or change[0] != [self.search_path]:
                raise Refused("42501", f"{how} search_path is not allowed for tenants except to the "
                              f"schema the proxy pins ({self.search_path})", "set_forbidden")
            return
        if name == "standard_conforming_strings":
            if change is None or len(change[0]) != 1 or change[0][0].lower() not in _TRUE:
                raise Refused("42501", f"{how} standard_conforming_strings is not allowed for tenants "
                              "except to on (statements are lexed that way)", "set_forbidden")
            return
        if name not in ALLOWED_SETTINGS:
            raise Refused("42501", f"{how} {name} is not allowed for tenants", "set_forbidden")
        if name == "client_encoding" and (local or not known):
            raise Refused("42501", f"{how} client_encoding is allowed only for the session and with a "
                          "literal value (statements are lexed in it)", "set_forbidden")
        if known and not local and name not in TRANSACTION_SETTINGS:
            self.settings.append((name, None if change is None else change[1]))
