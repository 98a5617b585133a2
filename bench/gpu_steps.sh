# Sourced by bench/gpu_check.sh and bench/gpu_export_check.sh (not run on its own).
# run_step NAME LIMIT_SECONDS CMD...: runs CMD with a time limit, output to $OUT_DIR/NAME.log; a failure is
# reported (tail of the log) and appended to the caller's `failures` array. When the caller defines a
# `remaining` function (seconds left of its overall budget), the limit is capped to it and the step is skipped
# when less than 20 s would be left.
run_step() {
  local name="$1" limit="$2"
  shift 2
  local start rc left
  if declare -F remaining >/dev/null; then
    left=$(($(remaining) - 15))
    [ "$left" -lt "$limit" ] && limit="$left"
    if [ "$limit" -lt 20 ]; then
      echo "=== $name: SKIPPED, the time budget is spent"
      failures+=("$name")
      return 1
    fi
  fi
  start=$(date +%s)
  echo "=== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  rc=$?
  if [ "$rc" -eq 0 ]; then
    echo "    ok in $(($(date +%s) - start)) s"
  else
    [ "$rc" -eq 124 ] && echo "    TIMED OUT after ${limit}s" || echo "    FAILED (exit $rc) after $(($(date +%s) - start)) s"
    tail -n 25 "$OUT_DIR/$name.log" | sed 's/^/    | /'
    failures+=("$name")
  fi
  return "$rc"
}
