"""Module names as data: the templates by role that name a graph's modules (and so its state_dict keys).

A spec's ``names:`` sets templates per role (:data:`densegraph.spec.NAME_ROLES` lists the roles and the
variables each may use); without it the graph takes :data:`DEFAULT_NAMES`, torchvision's DenseNet names, so a
torchvision checkpoint loads as it is.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import SpecError
from ..spec import Spec

__all__ = ["DEFAULT_NAMES", "ModuleNames"]

# torchvision's DenseNet module names, the names of a spec without ``names:`` (see spec.NAME_ROLES)
DEFAULT_NAMES = {
    "stem.conv": "features.conv{i}",
    "stem.norm": "features.norm{i}",
    "stem.act": "features.relu{i}",
    "stem.pool": "features.pool{i}",
    "stem.pool.conv": "features.pool{i}.conv",
    "stem.pool.norm": "features.pool{i}.norm",
    "layer.conv": "features.denseblock{block}.denselayer{layer}.conv{n}",
    "layer.norm": "features.denseblock{block}.denselayer{layer}.norm{n}",
    "layer.act": "features.denseblock{block}.denselayer{layer}.relu{n}",
    "layer.dwconv": "features.denseblock{block}.denselayer{layer}.dwconv{n}",
    "layer.dwnorm": "features.denseblock{block}.denselayer{layer}.dwnorm{n}",
    "aggregate.conv": "features.aggregate{block}.conv",
    "aggregate.norm": "features.aggregate{block}.norm",
    "aggregate.act": "features.aggregate{block}.relu",
    "transition.norm": "features.transition{block}.norm",
    "transition.act": "features.transition{block}.relu",
    "transition.conv": "features.transition{block}.conv",
    "transition.pool": "features.transition{block}.pool",
    "transition.pool.conv": "features.transition{block}.pool{i}.conv",
    "transition.pool.norm": "features.transition{block}.pool{i}.norm",
    "head.norm": "features.norm5",
    "head.linear": "classifier",
}
# roles whose ops hold parameters: a spec's ``names:`` must give them when the model uses them
_PARAM_ROLES = (
    "stem.conv",
    "stem.norm",
    "stem.pool.conv",
    "stem.pool.norm",
    "layer.conv",
    "layer.norm",
    "layer.dwconv",
    "layer.dwnorm",
    "aggregate.conv",
    "aggregate.norm",
    "transition.norm",
    "transition.conv",
    "transition.pool.conv",
    "transition.pool.norm",
    "head.norm",
    "head.linear",
)
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


class ModuleNames:
    """Gives each role's module name from the spec's templates, and refuses a name that is not a dotted path,
    repeats another or contains another (a located :class:`~densegraph.errors.SpecError`)."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.names = spec.names or DEFAULT_NAMES
        self.used: dict[str, str] = {}  # module name -> role that made it
        self.prefixes: set[str] = set()  # the parents of the names used

    def __call__(self, role: str, **variables: Any) -> str | None:
        """The module name of ``role`` (None for a role without parameters that the spec leaves unnamed)."""
        template = self.names.get(role)
        if template is None:
            if role in _PARAM_ROLES:
                raise SpecError(
                    f"names has no template for '{role}', which this model uses",
                    loc=self.spec.loc_of("names"),
                    hint=f"add e.g. '{role}: {DEFAULT_NAMES[role]}'",
                )
            return None
        loc = self.spec.name_locs.get(role) or self.spec.loc_of("names")
        name = template.format(**variables)
        if not _MODULE_NAME.match(name):
            raise SpecError(
                f"names.{role} gives {name!r}, not a dotted module name",
                loc=loc,
                hint="e.g. stages.{stage0}.conv",
            )
        parts = name.split(".")
        clash = name if name in self.used or name in self.prefixes else None
        clash = clash or next(
            (".".join(parts[:k]) for k in range(1, len(parts)) if ".".join(parts[:k]) in self.used), None
        )
        if clash is not None:
            other = clash if clash in self.used else next(o for o in self.used if o.startswith(name + "."))
            raise SpecError(
                f"names.{role} gives {name!r}, which collides with {other!r} ({self.used[other]})",
                loc=loc,
                hint="every module name must be unique and no name may contain another's",
            )
        self.prefixes.update(".".join(parts[:k]) for k in range(1, len(parts)))
        self.used[name] = role
        return name
