"""Find each domain's event factory (``domains/<d>/traffic.py``)."""

from __future__ import annotations

import inspect

from clickflow.domains import DOMAINS, domain_module
from clickflow.generator.factory import EventFactory


def factory_for(domain: str, **kwargs: object) -> EventFactory:
    """``traffic.factory(**kw)`` if defined, else the module's factory class."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}: use one of {', '.join(DOMAINS)}")
    mod = domain_module(domain, "traffic")
    if mod is None:
        raise ValueError(f"domain {domain!r} has no traffic factory yet")
    if hasattr(mod, "factory"):
        return mod.factory(**kwargs)
    for _name, obj in inspect.getmembers(mod, inspect.isclass):
        if obj.__module__ == mod.__name__ and all(
            hasattr(obj, a) for a in ("breakages", "valid", "broken")
        ):
            return obj(**kwargs)
    raise ValueError(f"no event factory found in {mod.__name__}")


def available_domains() -> list[str]:
    return [d for d in DOMAINS if domain_module(d, "traffic") is not None]
