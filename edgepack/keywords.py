"""The CLI's option names as keywords of every API function: one set of names.

    edgepack.quantize(model, "photos/", target="x86-cpu", resize=256, crop=224, scale=1,
                      mean=(104, 117, 123), channel_order="BGR")
    edgepack.compare(a, b, "photos/", no_layers=True)

`@cli_keywords` adds to a function, keyword-only and visible in its signature:
- the preprocessing flags (`layout scale mean std channel_order resize interpolation crop`), for a
  function that takes `preprocess` (they become one Preprocess, overriding the keys of a
  `preprocess=` given too) or only `data` (the data then carries them);
- `no_X` for each boolean parameter `X` (`no_X=True` is `X=False`), as `--no-X` is on the CLI;
- `aliases`: other CLI names of a parameter (`runtime` for `runtime_name`, `global_` for `--global`),
  with a conversion where the flag's value is not the parameter's.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import fields
from typing import Any, Callable

from edgepack.errors import UsageError


def preprocess_names() -> tuple[str, ...]:
    from edgepack.calib.preprocess import Preprocess

    return tuple(f.name for f in fields(Preprocess))


def _is_bool(parameter: inspect.Parameter) -> bool:
    return isinstance(parameter.default, bool) or (
        parameter.default is None and "bool" in str(parameter.annotation))


def cli_keywords(function: Callable | None = None, *, aliases: dict[str, Any] | None = None):
    """Decorator: `function` also takes the CLI's names (see the module docstring)."""
    if function is None:
        return lambda f: cli_keywords(f, aliases=aliases)
    aliases = dict(aliases or {})
    signature = inspect.signature(function)
    params = signature.parameters
    negations = {f"no_{n}": n for n, p in params.items() if _is_bool(p) and f"no_{n}" not in params}
    steps = preprocess_names() if ("preprocess" in params or "data" in params) else ()
    steps = tuple(s for s in steps if s not in params)
    added = [*steps, *negations, *(a for a in aliases if a not in params)]

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        for alias, spec in aliases.items():
            if alias in kwargs:
                name, convert = (spec, None) if isinstance(spec, str) else spec
                value = kwargs.pop(alias)
                _set(kwargs, name, convert(value) if convert else value, alias)
        for negation, name in negations.items():
            if negation in kwargs:
                value = kwargs.pop(negation)
                if value is not None:
                    _set(kwargs, name, not value, negation)
        given = {s: kwargs.pop(s) for s in steps if s in kwargs}
        given = {k: v for k, v in given.items() if v is not None}
        if given:
            from edgepack.calib.preprocess import Preprocess

            preprocess = Preprocess(**given)
            if "preprocess" in params:
                base = kwargs.get("preprocess")
                kwargs["preprocess"] = base.merged(preprocess) if base is not None else preprocess
            else:
                from edgepack.calib.data import with_preprocess

                bound = signature.bind_partial(*args, **kwargs)
                data = bound.arguments.get("data")
                if data is None:
                    raise UsageError(f"{function.__name__}: {', '.join(sorted(given))} without data",
                                     hint="the preprocessing keywords apply to data=: pass it too")
                bound.arguments["data"] = with_preprocess(data, preprocess)
                args, kwargs = bound.args, bound.kwargs
        return function(*args, **kwargs)

    ordinary = [p for p in params.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    var_keyword = [p for p in params.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in added]
    wrapper.__signature__ = signature.replace(parameters=[*ordinary, *extra, *var_keyword])
    wrapper.cli_keywords = tuple(added)
    return wrapper


def _set(kwargs: dict, name: str, value: Any, given_as: str) -> None:
    if name in kwargs and kwargs[name] is not None and kwargs[name] != value:
        raise UsageError(f"{given_as}={value!r} contradicts {name}={kwargs[name]!r}", hint="give one of them")
    kwargs[name] = value
