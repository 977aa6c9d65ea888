#!/usr/bin/env bash
# Coverage-guided fuzzing of Magpie's parsers and decoders with cargo-fuzz (libFuzzer,
# AddressSanitizer). Target bodies and the properties they check: crates/fuzzing.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET ...]
#
# Defaults: 60 s each over the light targets (filter wal segment index_file sparse
# import_file). The heavy
# targets (torch image request) pull in candle and the server; name them, or pass
# `all`. Needs the nightly toolchain (rustup) and cargo-fuzz (installed here if absent).
#
# Seeds: fuzz/corpus/<target>/ (committed; regenerate with
# `cargo run -p magpie-fuzzing --example seeds`). What a run learns goes to
# fuzz/corpus-local/<target>/ (not committed). A crash stops the run with exit 1 and
# leaves the input in fuzz/artifacts/<target>/: fix the bug, then copy the input to
# fuzz/regressions/<target>/<what-it-was> so `cargo test` replays it from then on.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
shift || true
light=(filter wal segment index_file sparse import_file)
heavy=(torch image request)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then targets=("${light[@]}"); fi
if [ "${targets[0]}" = all ]; then targets=("${light[@]}" "${heavy[@]}"); fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi
features=()
for t in "${targets[@]}"; do
    case " ${heavy[*]} " in *" $t "*) features=(--features heavy) ;; esac
done
echo "== building ${targets[*]} (nightly, -O, AddressSanitizer)"
cargo +nightly fuzz build -O "${features[@]}"
for t in "${targets[@]}"; do
    mkdir -p "corpus-local/$t"
    echo "== fuzzing $t for ${secs}s"
    cargo +nightly fuzz run -O "${features[@]}" "$t" "corpus-local/$t" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=4096 -max_len=65536 -print_final_stats=1 \
        2>&1 | grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|Done|==[0-9]+==ERROR|thread .* panicked|SUMMARY|artifact_prefix|Test unit written)" || true
    # Any one kind of artifact is a failure (one `ls` of all three globs fails, and so
    # hid a crash, whenever one kind is absent).
    if compgen -G "artifacts/$t/crash-*" >/dev/null || compgen -G "artifacts/$t/oom-*" >/dev/null ||
        compgen -G "artifacts/$t/timeout-*" >/dev/null; then
        echo "FAILED: $t found an input that breaks it; see fuzz/artifacts/$t/" >&2
        exit 1
    fi
done
echo "== no crash in ${targets[*]} (${secs}s each)"
