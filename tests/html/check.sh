#!/usr/bin/env bash
# Renders `oomdoc snapshot --format html` pages in headless Chromium and checks that the inline
# script drew every chart without errors (body data-ready="1", no data-jserror, chart elements present).
# Skips (exit 0, prints SKIP) where Chromium is not installed. Usage: tests/html/check.sh [OOMDOC_BIN]
# Optional: SCREENSHOT_DIR=dir writes a PNG of each page there for a person to look at.
set -euo pipefail
cd "$(dirname "$0")/../.."

CHROME=""
for c in chromium chromium-browser google-chrome; do
  if command -v "$c" >/dev/null 2>&1; then CHROME=$(command -v "$c"); break; fi
done
if [ -z "$CHROME" ]; then
  echo "SKIP: tests/html/check.sh: no chromium installed (apt-get install -y chromium)"
  exit 0
fi

BIN=${1:-}
if [ -z "$BIN" ]; then
  cargo build --quiet
  BIN=target/debug/oomdoc
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
FLAGS=(--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update
       --disable-sync --no-first-run --disable-dev-shm-usage --user-data-dir="$WORK/profile"
       --virtual-time-budget=5000)

fail=0
for snap in tests/fixtures/snapshots/*.pickle.gz tests/fixtures/snapshots/*.pickle; do
  name=$(basename "$snap")
  for lang in en zh; do
    page="$WORK/$name.$lang.html"
    "$BIN" snapshot "$snap" --format html --lang "$lang" -o "$page"
    dom="$WORK/$name.$lang.dom"
    timeout 120 "$CHROME" "${FLAGS[@]}" --dump-dom "file://$page" > "$dom" 2>"$WORK/chrome.log" || true
    problems=()
    body=$(grep -o '<body[^>]*>' "$dom" | head -1 || true)
    case "$body" in *'data-ready="1"'*) ;; *) problems+=("script did not finish: ${body:-no body}") ;; esac
    case "$body" in *data-jserror*) problems+=("script error: $body") ;; esac
    grep -q 'id="jserror"' "$dom" && problems+=("error box shown")
    grep -q 'id="timeline-svg"' "$dom" || problems+=("no timeline chart")
    grep -q 'id="sites-svg"' "$dom" || problems+=("no sites chart")
    grep -q 'id="segmap-svg"' "$dom" || problems+=("no segment map")
    grep -q 'class="block"' "$dom" || problems+=("segment map has no blocks")
    case "$name" in
      *oom*|*history*)
        grep -q 'class="area"' "$dom" || problems+=("timeline has no stacked areas")
        grep -q 'class="site-bar"' "$dom" || problems+=("no site bars") ;;
    esac
    if [ ${#problems[@]} -eq 0 ]; then
      echo "ok   $name ($lang)"
    else
      echo "FAIL $name ($lang): ${problems[*]}"
      fail=1
    fi
    if [ -n "${SCREENSHOT_DIR:-}" ]; then
      mkdir -p "$SCREENSHOT_DIR"
      timeout 120 "$CHROME" "${FLAGS[@]}" --window-size=1100,1900 \
        --screenshot="$SCREENSHOT_DIR/$name.$lang.png" "file://$page" >/dev/null 2>&1 || true
    fi
  done
done
exit $fail
