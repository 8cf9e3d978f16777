"""Running Debian's kcat against the embedded broker.

Debian 12's kcat links librdkafka 2.0.2, which fails on the broker's ApiVersions v3 answer
("ApiVersionRequest failed: Local: Read underflow"). The answer is well formed: after the
API list it carries four tagged fields (SupportedFeatures, FinalizedFeaturesEpoch,
FinalizedFeatures, ZkMigrationReady), and librdkafka 2.0.2 skips a tagged field by its
size minus one, as if the size were a compact length: it loses its place at the second
field and reads eight 0xff bytes as a size ("expected 216172782113783806 bytes").
``api.version.request=false`` does not help: with ``broker.version.fallback`` >= 0.10 the
request is sent anyway, and below 0.10 produce and list-offsets use versions the broker
does not implement. The librdkafka that confluent-kafka bundles (2.x, same ABI, soname
``librdkafka.so.1``) reads the answer correctly, so kcat is run with it.
"""

from __future__ import annotations

import os
from pathlib import Path


def bundled_librdkafka() -> Path | None:
    """The librdkafka shared library shipped inside the confluent-kafka wheel."""
    import confluent_kafka

    libs = Path(confluent_kafka.__file__).resolve().parent.parent / "confluent_kafka.libs"
    found = sorted(libs.glob("librdkafka*.so*"))
    return found[0] if found else None


def kcat_environment(env: dict[str, str]) -> dict[str, str]:
    """``env`` with LD_LIBRARY_PATH naming a directory where ``librdkafka.so.1`` is the
    bundled library (unchanged if the wheel has none, e.g. a system-built confluent-kafka)."""
    lib = bundled_librdkafka()
    if lib is None:
        return env
    cache = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    shim = cache / "clickflow" / "librdkafka"
    shim.mkdir(mode=0o700, parents=True, exist_ok=True)
    link = shim / "librdkafka.so.1"
    if not link.is_symlink() or link.resolve() != lib:
        tmp = shim / f".link-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(lib)
        tmp.replace(link)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(shim), env.get("LD_LIBRARY_PATH", "")) if p
    )
    return env
