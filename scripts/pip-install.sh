#!/usr/bin/env bash
# pip-install.sh PYTHON ARGS...: `PYTHON -m pip install ARGS` for `make setup`, tried up to
# three times. A package registry reached over a shared network sometimes drops a large
# download half-way (CI once failed on pyarrow's 55 MB wheel after pip's own resume
# attempts); a second try, which keeps what pip has cached, is what a person would do.
set -u
python="$1"; shift
resume=()
# pip learnt --resume-retries in 25.1; the venv's first pip may be older.
if "$python" -m pip install --help 2>/dev/null | grep -q -- --resume-retries; then
  resume=(--resume-retries 20)
fi
for attempt in 1 2 3; do
  if "$python" -m pip install --quiet --retries 10 "${resume[@]}" "$@"; then
    exit 0
  fi
  if [ "$attempt" -lt 3 ]; then
    echo "setup: pip install failed (attempt $attempt of 3); trying again in 20 s" >&2
    sleep 20
  fi
done
echo "setup: pip install $* failed 3 times; check the network or the package index" >&2
exit 1
