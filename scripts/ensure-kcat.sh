#!/usr/bin/env bash
# The Kafka tools test drives Debian's kcat (through `clickflow kcat`); install it when missing.
set -euo pipefail
if command -v kcat >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's kcat for the Kafka tools test..."
  if ! { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat >/dev/null; }; then
    echo "could not install kcat: its test is skipped" >&2
  fi
else
  echo "kcat is missing and cannot be installed here (need root + apt-get): its test is skipped" >&2
fi
