"""A Redis Lua script with named keys and arguments.

A `Script` declares the names of its keys and arguments; its Lua source starts with lines
binding each to a local (`local environment = KEYS[1]`), generated from that declaration, and
callers pass them by name. Nothing binds `KEYS[n]`/`ARGV[n]` by position by hand. The values
of the enums it lists (environment states, outcomes) are Lua constants of the same names
(`READY`, `QUEUED`...), so no state name is repeated as a literal. Each script is registered
once per client (redis-py's `register_script`: EVALSHA, loaded again if the server lost it).
"""

import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript


@dataclass(frozen=True)
class Script:
    """`keys` and `args` name KEYS and ARGV in order; `rest`, if set, names a Lua table of the
    arguments after them (a variable number: a record's fields and values). `library` is Lua
    placed after the bindings (shared functions, which may read those locals)."""

    name: str
    keys: tuple[str, ...]
    args: tuple[str, ...]
    body: str
    rest: str = ""
    enums: tuple[type[StrEnum], ...] = ()
    library: tuple[str, ...] = ()
    _registered: "weakref.WeakKeyDictionary[Redis, AsyncScript]" = field(
        default_factory=weakref.WeakKeyDictionary, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        names = [*self.keys, *self.args, *([self.rest] if self.rest else []), *self.constants]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"script {self.name}: names bound twice: {duplicates}")

    @property
    def constants(self) -> dict[str, str]:
        """Every enum member's name, bound in Lua to its value."""
        return {member.name: member.value for enum in self.enums for member in enum}

    @property
    def source(self) -> str:
        lines = [f"local {name} = KEYS[{i}]" for i, name in enumerate(self.keys, 1)]
        lines += [f"local {name} = ARGV[{i}]" for i, name in enumerate(self.args, 1)]
        if self.rest:
            lines.append(f"local {self.rest} = {{unpack(ARGV, {len(self.args) + 1})}}")
        lines += [f"local {name} = {_lua_string(value)}" for name, value in self.constants.items()]
        return "\n".join([*lines, *self.library, self.body])

    async def run(
        self, redis: Redis, *, pipeline: Pipeline | None = None, rest: Iterable[Any] = (), **named: Any
    ) -> Any:
        """Run it with every key and argument given by name (`rest`: the trailing arguments);
        with `pipeline`, queued in it (its answer comes with the pipeline's)."""
        missing = [n for n in (*self.keys, *self.args) if n not in named]
        unknown = [n for n in named if n not in self.keys and n not in self.args]
        if missing or unknown:
            raise TypeError(f"script {self.name}: missing {missing}, unknown {unknown}")
        script = self._registered.get(redis)
        if script is None:
            script = self._registered[redis] = redis.register_script(self.source)
        return await script(
            keys=[named[n] for n in self.keys],
            args=[*(named[n] for n in self.args), *rest],
            client=pipeline,
        )


def _lua_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
