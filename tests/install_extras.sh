#!/usr/bin/env bash
# Install requirements-extra.txt with the given pip: lines marked "# no-deps" with --no-deps, the
# others as usual. Usage: bash tests/install_extras.sh PIP [pip options...]
set -euo pipefail
pip=$1
shift
extras="$(dirname "$0")/../requirements-extra.txt"
plain=$(grep -v '^\s*#' "$extras" | grep -v 'no-deps' | sed 's/#.*//' | xargs)
nodeps=$(grep -v '^\s*#' "$extras" | grep 'no-deps' | sed 's/#.*//' | xargs)
if [ -n "$plain" ]; then "$pip" install "$@" $plain; fi
if [ -n "$nodeps" ]; then "$pip" install "$@" --no-deps $nodeps; fi
