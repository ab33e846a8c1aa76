#!/bin/sh
# segzoo bundle launcher: check every file against manifest.json, then run the bundle's app (the manifest's
# "entry": segment.py, pose.py in a pose bundle, sam2_point.py in a SAM2 bundle) with the arguments given.
#   ./launch.sh --input /path/to/images --output /path/to/results
#   ./launch.sh --camera /dev/video0 --show
#   ./launch.sh --input /path/to/images --point 320,240 --output /path/to/results     (SAM2 bundle)
# The app finds its models and settings beside itself, so relative paths in the arguments stay relative to
# the directory you call this from. PYTHON selects the interpreter (default python3).
set -eu
here=$(cd -- "$(dirname -- "$0")" && pwd)
PYTHON="${PYTHON:-python3}"
"$PYTHON" "$here/segment.py" --verify
app=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1])).get("entry") or "segment.py")' \
      "$here/manifest.json")
case "$app" in
  */* | .* | "") echo "launch.sh: manifest.json names an unusable entry '$app'" >&2; exit 1 ;;
esac
[ -f "$here/$app" ] || { echo "launch.sh: the entry $app is not in the bundle" >&2; exit 1; }
exec "$PYTHON" "$here/$app" "$@"
