#!/usr/bin/env bash
# Makes .venv-bench (the pinned peers of `kiln bench suite --peers`) in the repository's root,
# or brings it up to benches/peers/requirements.txt. Run from anywhere; prints nothing on success.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -x .venv-bench/bin/python ]; then
  python3 -m venv .venv-bench
fi
stamp=.venv-bench/.requirements
if ! cmp -s benches/peers/requirements.txt "$stamp"; then
  .venv-bench/bin/pip install -q --disable-pip-version-check -r benches/peers/requirements.txt
  cp benches/peers/requirements.txt "$stamp"
fi
