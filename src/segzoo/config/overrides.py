"""Command-line overrides, checked against the schema before Hydra composes the config.

Hydra rejects an override of a key absent from the YAML file with a message that does not say
which key was meant. Here every ``key=value`` is checked first: an unknown key fails with its
closest valid key, a valid key is passed on as ``++key=value`` so it works whether or not the
file sets it.
"""

from __future__ import annotations

import re

from segzoo.config.validate import is_known_key, raise_if_errors, suggest

_OPTIONS_WITH_VALUE = frozenset({"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
                                 "--cfg", "-c", "--package", "-p", "--experimental-rerun", "--shell-completion",
                                 "-sc", "--info", "-i"})
_OVERRIDE = re.compile(r"^(?P<prefix>\+\+|\+|~)?(?P<key>[A-Za-z_][\w.\-]*)(?P<rest>=.*)?$")


def check_overrides(args: list[str]) -> list[str]:
    """Validate and normalise Hydra overrides; options (``--x``, ``-m``) pass through untouched."""
    out, errors = [], []
    takes_value = False
    for arg in args:
        m = _OVERRIDE.match(arg)
        if takes_value or arg.startswith("-") or not m or m.group("key").startswith("hydra"):
            takes_value = arg in _OPTIONS_WITH_VALUE
            out.append(arg)
            continue
        key, prefix, rest = m.group("key"), m.group("prefix") or "", m.group("rest") or ""
        if not is_known_key(key):
            errors.append(f"{key}: unknown key (command-line override){suggest(key)}")
            continue
        out.append(arg if prefix == "~" or not rest else f"++{key}{rest}")
    raise_if_errors(errors, "command-line overrides")
    return out
