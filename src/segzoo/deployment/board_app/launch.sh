#!/bin/sh
# segzoo bundle launcher: check every file against manifest.json, then run the bundle's app (segment.py, or
# pose.py in a pose bundle) with the arguments given.
#   ./launch.sh --input /path/to/images --output /path/to/results
#   ./launch.sh --camera /dev/video0 --show
# segment.py finds its model and settings beside itself, so relative paths in the arguments stay relative to
# the directory you call this from. PYTHON selects the interpreter (default python3).
set -eu
here=$(cd -- "$(dirname -- "$0")" && pwd)
PYTHON="${PYTHON:-python3}"
"$PYTHON" "$here/segment.py" --verify
app=segment.py
[ -f "$here/pose_config.json" ] && app=pose.py   # a pose bundle
exec "$PYTHON" "$here/$app" "$@"
