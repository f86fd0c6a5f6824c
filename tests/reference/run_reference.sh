#!/bin/sh
# Runs a reference-data generator once: run_reference.sh PYTHON SCRIPT OUT_DIR "MODULES..."
# Skips (exit 77) when PYTHON cannot import MODULES; keeps OUT_DIR when its DONE stamp matches the
# Python the generators can import (every tests/reference/*.py, which import each other, and the
# experiment's tokenizer writer, which make_umt5_reference.py imports) and requirements.txt.
python=$1 script=$2 out=$3 modules=$4
dir=$(dirname "$script")
want=$(cat "$script" "$dir/requirements.txt" "$dir"/*.py "$dir/../../scripts/experiment/make_tiny_encoders.py" |
  sha256sum | cut -c1-64)
if [ -f "$out/DONE" ] && [ "$(head -n1 "$out/DONE")" = "$want" ]; then
  echo "reference data in $out is up to date"
  exit 0
fi
if ! "$python" -c "import $(echo "$modules" | tr ' ' ',')" >/dev/null 2>&1; then
  echo "SKIP: '$python' cannot import $modules; install tests/reference/requirements.txt into it"
  echo "      or configure with -DWANHOST_TEST_PYTHON=<python with those packages>"
  exit 77
fi
rm -f "$out/DONE"
"$python" "$script" "$out" || exit 1
# The tests skip themselves without DONE; its first line is the stamp compared above.
printf '%s\nreference data from %s\n' "$want" "$(basename "$script")" >"$out/DONE"
