#!/usr/bin/env bash
# Issue 9 item 5: variants of the default mixture that each leave out one zone or one link
# family, each evaluated on what it left out. docs/RESULTS.md, "Transfer ...", "Leave-one-out".
#
#   docs/scenarios/leave_one_out.sh                 # every variant, zones first
#   VARIANTS="zone-US-CAL-CISO links-norway" docs/scenarios/leave_one_out.sh
#
# Needs the default bundle and derived traces of docs/scenarios/transfer.sh ($E/r18-default,
# $E/data). Each variant copies the default bundle (same export, profile and objective) and
# retrains Q_θ and the table on the default mixture minus the left-out components
# (docs/scenarios/loo_build.py), with EPC events per component (default 300, the default
# build's own density; the variants have fewer components, so fewer events in all).
#
# Evaluation (same carbon period as the transfer grid: 2023-01-01 .. 09-10, test Jul 10 -
# Sep 10, 4 events/hour):
#   zone Z left out: Z on the device side and on the server side (one pair each), on
#     norway_bus_1 x1 (3G), x3 (marginal), x30 (WiFi-like) and the measured static 5G
#     uplink ucc5g_static_part1 (a link no variant was built on);
#   link family left out: each of its traces at x1, x3 and x30, DE-LU device -> GB server.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
E=${E:-/root/.cache/carboncp/eval}
EPC=${EPC:-300}
EPH=${EPH:-4}
B=$E/r18-default
O=$E/out/loo
PY=${PY:-.venv/bin/python}
CCP=${CCP:-.venv/bin/carboncp}
VARIANTS=${VARIANTS:-"zone-US-CAL-CISO zone-GB zone-DE-LU links-norway links-fcc links-oboe"}
mkdir -p "$O"
[ -f "$B/table/table.json" ] && [ -f "$E/data/norway_bus_1_x3" ] || { echo "run docs/scenarios/transfer.sh first (PART=all)"; exit 2; }

ev() { # name bundle device-zone server-zone trace
  local name=$1 bundle=$2 dz=$3 sz=$4 tr=$5 bw
  bw=$E/data/$tr; [ -f "$bw" ] || bw=../shared/data/bandwidth/$tr
  [ -f "$O/$name/metrics.json" ] && return 0
  echo "== $name ($(date +%H:%M:%S))"
  nice "$CCP" evaluate "$bundle" --events-per-hour "$EPH" \
    --device-carbon "$E/data/${dz}_2023-01-01_09-10.csv" --server-carbon "$E/data/${sz}_2023-01-01_09-10.csv" \
    --bandwidth "$bw" --out "$O/$name" --quiet > "$O/$name.txt" 2> "$O/$name.err" \
    || echo "   failed: $O/$name.err"
}

for v in $VARIANTS; do
  V=$E/r18-loo-$v
  case $v in
    zone-*) arg=(--zone "${v#zone-}") ;;
    links-norway) arg=(--links norway_bus_1,norway_metro_2,norway_train_13) ;;
    links-fcc) arg=(--links fcc_trace_7190_yahoo,fcc_trace_28838_amazon) ;;
    links-oboe) arg=(--links oboe_trace_0) ;;
    *) echo "unknown variant $v"; exit 2 ;;
  esac
  if [ ! -f "$V/.loo-done" ]; then
    echo "== build $v ($(date +%H:%M:%S))"
    nice "$PY" docs/scenarios/loo_build.py "$B" "$V" "${arg[@]}" --events-per-component "$EPC" > "$E/build-loo-$v.log" 2>&1
    touch "$V/.loo-done"
  fi
  case $v in
    zone-US-CAL-CISO) pairs="US-CAL-CISO:GB DE-LU:US-CAL-CISO"; traces="norway_bus_1_x1 norway_bus_1_x3 norway_bus_1_x30 ucc5g_static_part1" ;;
    zone-GB) pairs="GB:US-CAL-CISO DE-LU:GB"; traces="norway_bus_1_x1 norway_bus_1_x3 norway_bus_1_x30 ucc5g_static_part1" ;;
    zone-DE-LU) pairs="DE-LU:GB US-CAL-CISO:DE-LU"; traces="norway_bus_1_x1 norway_bus_1_x3 norway_bus_1_x30 ucc5g_static_part1" ;;
    links-norway) pairs="DE-LU:GB"; traces="norway_bus_1_x1 norway_bus_1_x3 norway_bus_1_x30 norway_metro_2_x1 norway_metro_2_x3 norway_metro_2_x30 norway_train_13_x1 norway_train_13_x3 norway_train_13_x30" ;;
    links-fcc) pairs="DE-LU:GB"; traces="fcc_trace_7190_yahoo_x1 fcc_trace_7190_yahoo_x3 fcc_trace_7190_yahoo_x30 fcc_trace_28838_amazon_x1 fcc_trace_28838_amazon_x3 fcc_trace_28838_amazon_x30" ;;
    links-oboe) pairs="DE-LU:GB"; traces="oboe_trace_0_x1 oboe_trace_0_x3 oboe_trace_0_x30" ;;
  esac
  for pair in $pairs; do
    for tr in $traces; do
      ev "$v.${pair%%:*}_${pair##*:}_$tr" "$V" "${pair%%:*}" "${pair##*:}" "$tr"
    done
  done
done
"$PY" docs/scenarios/summarise.py "$O"/*/ | tee "$O/loo.md"
