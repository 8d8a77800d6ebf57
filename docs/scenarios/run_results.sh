#!/usr/bin/env bash
# Reproduces docs/RESULTS.md (after docs/scenarios/build_fast.sh). Outputs under out/results/.
# Reads the full-year traces from ../shared/data (evaluation only; not shipped).
# M (default models) holds the bundles, R (default out/results) the outputs; ONLY (a list of
# scenario names, default all) runs just those, e.g.
#   M=/root/.cache/carboncp/eval R=/root/.cache/carboncp/eval/out/results ONLY="fast fast_us" docs/scenarios/run_results.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
S=../shared/data
D=runtime/data
M=${M:-models}
R=${R:-out/results}
ONLY=${ONLY:-}
ev() {
  name=$1; shift
  if [ -n "$ONLY" ]; then case " $ONLY " in *" $name "*) ;; *) return 0 ;; esac; fi
  carboncp evaluate "$@" --out "$R/$name" --quiet > "$R/$name.txt"; echo "== $name"; cat "$R/$name.txt"
}
mkdir -p "$R"
# Null scenarios: the shipped default bundle on slow links, where local is (almost) always right.
ev null_default $M/resnet18 --device-carbon $D/carbon/DE-LU_2023-09-11_8w.csv \
  --server-carbon $D/carbon/GB_2023-09-11_8w.csv --bandwidth $D/bandwidth/norway_bus_1
ev null_fcc $M/resnet18 --device-carbon $D/carbon/US-CAL-CISO_2023-09-11_8w.csv \
  --server-carbon $D/carbon/GB_2023-09-11_8w.csv --bandwidth $D/bandwidth/fcc_trace_28838_amazon
FY="--device-carbon $S/carbon/DE-LU_2023_hourly.csv --server-carbon $S/carbon/GB_2023_hourly.csv --events-per-hour 4"
B5G="--bandwidth $S/bandwidth/ucc5g_static_part1"
# The headline: Raspberry Pi 4 on DE-LU reaching a GB edge server over 5G, default objective.
ev fast $M/resnet18-5g $FY $B5G
for a in 0.05 0.2; do ev fast_alpha$a $M/resnet18-5g $FY $B5G --alpha $a; done
# Each zone's own test period (calibrated on the same zone's Jul-Sep by evaluate).
ev fast_us $M/resnet18-5g --device-carbon $S/carbon/US-CAL-CISO_2023_hourly.csv \
  --server-carbon $S/carbon/GB_2023_hourly.csv --events-per-hour 4 $B5G
ev fast_gb $M/resnet18-5g --device-carbon $S/carbon/GB_2023_hourly.csv \
  --server-carbon $S/carbon/DE-LU_2023_hourly.csv --events-per-hour 4 $B5G
for a in 0.05 0.2; do
  ev fast_us_alpha$a $M/resnet18-5g --device-carbon $S/carbon/US-CAL-CISO_2023_hourly.csv \
    --server-carbon $S/carbon/GB_2023_hourly.csv --events-per-hour 4 $B5G --alpha $a
  ev fast_gb_alpha$a $M/resnet18-5g --device-carbon $S/carbon/GB_2023_hourly.csv \
    --server-carbon $S/carbon/DE-LU_2023_hourly.csv --events-per-hour 4 $B5G --alpha $a
done
# Shift: calibrated on DE-LU (zone) or on the static 5G link (link), tested elsewhere.
ev shift_zone_us $M/resnet18-5g --device-carbon $S/carbon/US-CAL-CISO_2023_hourly.csv \
  --server-carbon $S/carbon/GB_2023_hourly.csv --events-per-hour 4 $B5G \
  --calibrate-device-carbon $S/carbon/DE-LU_2023_hourly.csv
ev shift_zone_gb $M/resnet18-5g --device-carbon $S/carbon/GB_2023_hourly.csv \
  --server-carbon $S/carbon/GB_2023_hourly.csv --events-per-hour 4 $B5G \
  --calibrate-device-carbon $S/carbon/DE-LU_2023_hourly.csv
ev shift_link $M/resnet18-5g $FY --bandwidth $S/bandwidth/ucc5g_driving_lte_5g \
  --calibrate-bandwidth $S/bandwidth/ucc5g_static_part1
# Alternatives: Q_θ's other objective, early abandonment off, the slack deadline rule.
ev fast_ce $M/resnet18-5g-ce $FY $B5G
ev fast_no_abandon $M/resnet18-5g-nab $FY $B5G
ev shift_link_no_abandon $M/resnet18-5g-nab $FY --bandwidth $S/bandwidth/ucc5g_driving_lte_5g \
  --calibrate-bandwidth $S/bandwidth/ucc5g_static_part1
ev fast_slack $M/resnet18-5g-slack $FY $B5G
