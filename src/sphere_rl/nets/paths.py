"""Names of parameters in a network's pytree, for code that selects layers (resets, penalties)."""

from __future__ import annotations

from typing import Any, Callable

import jax


def path_names(path: tuple) -> tuple[str, ...]:
    """The key names of a `jax.tree_util` path (dict keys and attribute names)."""
    out = []
    for entry in path:
        name = getattr(entry, "key", None)
        if name is None:
            name = getattr(entry, "name", None)
        if name is None:
            name = getattr(entry, "idx", "")
        out.append(str(name))
    return tuple(out)


def leaf_mask(params: Any, select: Callable[[tuple[str, ...]], bool]) -> Any:
    """A tree of bools like `params`: True where `select(path names)` holds."""
    return jax.tree_util.tree_map_with_path(lambda path, _: bool(select(path_names(path))), params)
