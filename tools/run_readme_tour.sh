#!/usr/bin/env bash
# Run the README's "Prune the embedded model" block as printed, top to bottom, on a fresh clone.
#
#   tools/run_readme_tour.sh [WORKDIR]        # default: a new folder under ${TMPDIR:-/tmp}
#
# The block is extracted from README.md (the first ```bash fence after "### Prune the embedded model"), so
# the tour that runs is the one users read. The clone is `git clone` of this repository's HEAD (commit first)
# into WORKDIR/clone; WORKDIR/shared points at the data's parent folder so that the block's
# `export RCPU_DATA_DIR=../shared/data` works as printed. `.venv` in the clone is made by `make setup`, or is
# a link to VENV when VENV=/path/to/venv is set (no download). Each command is echoed with the time it
# starts; the script stops at the first line that fails and exits with its status.
# Environment: DATA_DIR (default ../shared/data of this repository), VENV, OMP_NUM_THREADS (default 2).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
data="$(cd "${DATA_DIR:-$repo/../shared/data}" && pwd)"
work="${1:-$(mktemp -d "${TMPDIR:-/tmp}/readme-tour.XXXXXX")}"
mkdir -p "$work"
test ! -e "$work/clone" || { echo "$work/clone exists: give a new WORKDIR" >&2; exit 2; }
test "$(basename "$data")" = data || { echo "DATA_DIR must be a folder named data (the tour says ../shared/data)" >&2; exit 2; }

tour="$work/tour.sh"
awk '/^### Prune the embedded model/ {found = 1} found && /^```bash$/ {inside = 1; next}
     inside && /^```$/ {exit} inside {print}' "$repo/README.md" > "$tour.block"
test -s "$tour.block" || { echo "no bash block after '### Prune the embedded model' in README.md" >&2; exit 2; }
{  # echo each line with its start time and load (bash takes no PS4 from the environment when run as root)
  echo 'set -eo pipefail'
  echo "PS4='+ [\$(date +%T), load \$(cut -d\" \" -f1 /proc/loadavg)] '"
  echo 'set -x'
  cat "$tour.block"
} > "$tour"

git clone --quiet "$repo" "$work/clone"
ln -sfn "$(dirname "$data")" "$work/shared"
cd "$work/clone"
if [ -n "${VENV:-}" ]; then ln -s "$VENV" .venv; else make setup; fi
echo "README tour at commit $(git rev-parse --short HEAD) in $work/clone; $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
start=$(date +%s)
bash "$tour"
echo "README tour: every line ran in $(( $(date +%s) - start )) s; load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
