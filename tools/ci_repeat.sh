#!/usr/bin/env bash
# Run CI N times in a row, each on a fresh clone with cold caches, and record every run in JSON: the
# record behind "the suite never flakes" (docs/RELIABILITY.md).
#
#   tools/ci_repeat.sh [-n 10] [-o ci-repeat.json] [--repo PATH|URL] [--ref REF] [--timeout S]
#                      [--venv | --no-install] [--keep] [-- PYTEST ARGS...]
#
# Each run: `git clone` REPO at REF into a new temporary folder, then, inside it, `bash .ci/run` (Chromium,
# Mesa and the two wheels it fetches, then exactly the README's test command). The caches a fresh
# machine would not have (numba, matplotlib, XDG, torch kernels) point into the run's own folder.
# pip's download cache is kept: it changes no test, only the time spent downloading.
# `.ci/run` pip-installs the clone (`-e .` in requirements.txt): on a machine you keep, add --venv
# (a new virtual environment per run, deleted with it; the whole install each time) or the Python
# environment's editable install is left pointing at a deleted clone.
# --no-install runs `python -m pytest` in the clone with PYTHONPATH set to it instead: nothing is
# installed, so it is safe on a development machine whose editable install must stay where it is.
# PYTEST ARGS (e.g. `-k audio`) reach pytest through PYTEST_ADDOPTS in both modes.
# The JSON is rewritten after every run, so an interrupted series keeps what it measured; each run's
# output is kept in OUT.logs/run-I.txt (OUT without .json).
set -euo pipefail

runs=10
out=ci-repeat.json
repo="$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)"
ref=HEAD
timeout_s=0
install=1
venv=0
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        -n) runs="$2"; shift 2 ;;
        -o) out="$2"; shift 2 ;;
        --repo) repo="$2"; shift 2 ;;
        --ref) ref="$2"; shift 2 ;;
        --timeout) timeout_s="$2"; shift 2 ;;
        --no-install) install=0; shift ;;
        --venv) venv=1; shift ;;
        --keep) keep=1; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        --) shift; break ;;
        *) echo "ci_repeat.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$runs" in ''|*[!0-9]*|0) echo "ci_repeat.sh: -n must be a positive whole number, got '$runs'" >&2; exit 2 ;; esac
case "$timeout_s" in ''|*[!0-9]*) echo "ci_repeat.sh: --timeout must be whole seconds, got '$timeout_s'" >&2; exit 2 ;; esac
if [ "$venv" = 1 ] && [ "$install" = 0 ]; then echo "ci_repeat.sh: --venv installs; it cannot go with --no-install" >&2; exit 2; fi
if [ -e "$out" ] && [ ! -f "$out" ]; then echo "ci_repeat.sh: -o '$out' is not a file" >&2; exit 2; fi
# The commit to test, resolved once: every run tests the same tree even if the branch moves meanwhile.
commit="$(git -C "$repo" rev-parse "$ref^{commit}" 2>/dev/null)" \
    || { echo "ci_repeat.sh: '$ref' is not a commit of '$repo'" >&2; exit 2; }
logs="${out%.json}.logs"  # each run's whole output, kept beside the record
addopts=""
for arg in "$@"; do addopts+=" $(printf '%q' "$arg")"; done

work="$(mktemp -d "${TMPDIR:-/tmp}/ci-repeat.XXXXXX")"
[ "$keep" = 1 ] || trap 'rm -rf "$work"' EXIT
records="$work/records.jsonl"
: > "$records"
echo "ci_repeat.sh: $runs run(s) of commit ${commit:0:12} from $repo; record in $out, logs in $logs"

for i in $(seq 1 "$runs"); do
    run="$work/run-$i"
    mkdir -p "$run/cache"
    git clone --quiet --no-hardlinks "$repo" "$run/repo"
    git -C "$run/repo" -c advice.detachedHead=false checkout --quiet "$commit"
    if [ "$install" = 1 ]; then cmd=(bash .ci/run); else cmd=(python -m pytest); fi
    if [ "$timeout_s" -gt 0 ]; then cmd=(timeout "$timeout_s" "${cmd[@]}"); fi
    started="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    load="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
    t0="$(date +%s%N)"
    set +e
    (
        cd "$run/repo"
        export XDG_CACHE_HOME="$run/cache/xdg" NUMBA_CACHE_DIR="$run/cache/numba" MPLCONFIGDIR="$run/cache/mpl" \
               PYTORCH_KERNEL_CACHE_PATH="$run/cache/torch" PYTEST_ADDOPTS="${PYTEST_ADDOPTS:-}$addopts"
        if [ "$install" = 0 ]; then export PYTHONPATH="$PWD"; fi
        if [ "$venv" = 1 ]; then python -m venv "$run/venv" && . "$run/venv/bin/activate"; fi
        "${cmd[@]}"
    ) > "$run/log.txt" 2>&1
    rc=$?
    set -e
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    mkdir -p "$logs"
    cp "$run/log.txt" "$logs/run-$i.txt"
    # pytest's last line: "653 passed, 9 skipped in 412.3s" (-q), or framed by "=" without -q.
    summary="$( { grep -E '(passed|failed|errors?|deselected|no tests ran).* in [0-9.]+s' "$run/log.txt" || true; } | tail -1 \
               | sed -E 's/^=+ //; s/ =+$//')"
    python - "$records" "$i" "$started" "$ms" "$rc" "$summary" "$load" "$logs/run-$i.txt" <<'EOF'
import json, sys
records, i, started, ms, rc, summary, load, log = sys.argv[1:]
with open(records, "a") as f:
    f.write(json.dumps({"run": int(i), "started_utc": started, "seconds": round(int(ms) / 1000, 1), "exit_code": int(rc),
                        "green": int(rc) == 0, "pytest": summary, "load_average_at_start": load, "log": log}) + "\n")
EOF
    python - "$records" "$out" "$commit" "$repo" "$install$venv" "$addopts" "$runs" <<'EOF'
import json, os, platform, sys
records, out, commit, repo, mode, addopts, planned = sys.argv[1:]
runs = [json.loads(line) for line in open(records)]
streak = 0
for r in runs:
    streak = streak + 1 if r["green"] else 0
command = {"10": "bash .ci/run", "11": "bash .ci/run (a new venv per run)", "00": "python -m pytest (--no-install)"}[mode]
report = {"commit": commit, "repo": repo, "command": command,
          "pytest_addopts": addopts.strip(), "planned": int(planned), "done": len(runs),
          "green": sum(r["green"] for r in runs), "green_in_a_row_at_end": streak,
          "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()},
          "runs": runs}
tmp = out + ".part"
with open(tmp, "w") as f:
    json.dump(report, f, indent=1)
os.replace(tmp, out)
EOF
    echo "run $i/$runs: exit $rc in $((ms / 1000)) s: ${summary:-no pytest summary (see $logs/run-$i.txt)}"
    [ "$keep" = 1 ] || rm -rf "$run"
done
python -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"{r['green']}/{r['done']} green, {r['green_in_a_row_at_end']} in a row at the end\")" "$out"
