"""The dotted field paths of a config, and the nearest one to a misspelled path.

Shared by the command line (`trainer.cli`, an override naming no field) and the
config check (`trainer.config_check`, a config file setting an unknown field),
so that both name the same fix. Imports no TensorFlow: the command line reads
it before TensorFlow loads.
"""

import difflib
from collections.abc import Iterable, Iterator
from typing import Any

import ml_collections

# difflib's similarity from which a path counts as a misspelling of another.
_NEAR = 0.8


def leaves(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every field below the groups, placeholders resolved.

    A plain dict of groups (a config.json as read back) is walked the same way.
    """
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict | dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def nearest_hint(path: str, fields: Iterable[str]) -> str:
    """What to write instead of `path`, which is not in `fields` (dotted paths).

    Returns:
        'did you mean --config.X?' for a near miss; otherwise the fields of the
        path's group, or the groups when the group itself is unknown.
    """
    fields = list(fields)
    nearest = difflib.get_close_matches(path, fields, n=1, cutoff=_NEAR)
    if nearest:
        return f"did you mean --config.{nearest[0]}?"
    group = path.split(".", 1)[0]
    siblings = [field.split(".", 1)[1] for field in fields if field.startswith(f"{group}.")]
    if siblings:
        return f"{group} has {', '.join(siblings)}"
    groups = sorted({field.split(".", 1)[0] for field in fields})
    return f"the groups are {', '.join(groups)}"
