#!/usr/bin/env bash
# Reproduces docs/RESULTS.md (after the three builds listed there). Outputs under out/results/.
# Reads the full-year traces from ../shared/data (evaluation only; not shipped).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
S=../shared/data
D=runtime/data
R=out/results
ev() { name=$1; shift; carboncp evaluate "$@" --out "$R/$name" --quiet > "$R/$name.txt"; echo "== $name"; cat "$R/$name.txt"; }
mkdir -p "$R"
ev null_default models/resnet18 --device-carbon $D/carbon/DE-LU_2023-09-11_8w.csv \
  --server-carbon $D/carbon/GB_2023-09-11_8w.csv --bandwidth $D/bandwidth/norway_bus_1
ev null_fcc models/resnet18 --device-carbon $D/carbon/US-CAL-CISO_2023-09-11_8w.csv \
  --server-carbon $D/carbon/GB_2023-09-11_8w.csv --bandwidth $D/bandwidth/fcc_trace_28838_amazon
FY="--device-carbon $S/carbon/DE-LU_2023_hourly.csv --server-carbon $S/carbon/GB_2023_hourly.csv --events-per-hour 4"
ev fast_fixed models/resnet18-5g $FY --bandwidth $S/bandwidth/ucc5g_static_part1
ev fast_ea models/resnet18-5g-ea $FY --bandwidth $S/bandwidth/ucc5g_static_part1
for a in 0.05 0.2; do
  ev fast_ea_alpha$a models/resnet18-5g-ea $FY --bandwidth $S/bandwidth/ucc5g_static_part1 --alpha $a
done
ev fast_ea_us models/resnet18-5g-ea --device-carbon $S/carbon/US-CAL-CISO_2023_hourly.csv \
  --server-carbon $S/carbon/GB_2023_hourly.csv --events-per-hour 4 --bandwidth $S/bandwidth/ucc5g_static_part1
ev fast_ea_gb models/resnet18-5g-ea --device-carbon $S/carbon/GB_2023_hourly.csv \
  --server-carbon $S/carbon/DE-LU_2023_hourly.csv --events-per-hour 4 --bandwidth $S/bandwidth/ucc5g_static_part1
ev shift_zone_us models/resnet18-5g-ea --device-carbon $S/carbon/US-CAL-CISO_2023_hourly.csv \
  --server-carbon $S/carbon/GB_2023_hourly.csv --events-per-hour 4 --bandwidth $S/bandwidth/ucc5g_static_part1 \
  --calibrate-device-carbon $S/carbon/DE-LU_2023_hourly.csv
ev shift_zone_gb models/resnet18-5g-ea --device-carbon $S/carbon/GB_2023_hourly.csv \
  --server-carbon $S/carbon/GB_2023_hourly.csv --events-per-hour 4 --bandwidth $S/bandwidth/ucc5g_static_part1 \
  --calibrate-device-carbon $S/carbon/DE-LU_2023_hourly.csv
ev shift_link models/resnet18-5g-ea $FY --bandwidth $S/bandwidth/ucc5g_driving_lte_5g \
  --calibrate-bandwidth $S/bandwidth/ucc5g_static_part1
ev shift_link_fixed models/resnet18-5g $FY --bandwidth $S/bandwidth/ucc5g_driving_lte_5g \
  --calibrate-bandwidth $S/bandwidth/ucc5g_static_part1
ev fast_ea_ce models/resnet18-5g-ea-ce $FY --bandwidth $S/bandwidth/ucc5g_static_part1
ev fast_abandon models/resnet18-5g-ab $FY --bandwidth $S/bandwidth/ucc5g_static_part1
for a in 0.05 0.2; do
  ev fast_abandon_alpha$a models/resnet18-5g-ab $FY --bandwidth $S/bandwidth/ucc5g_static_part1 --alpha $a
done
ev abandon_shift_zone_us models/resnet18-5g-ab --device-carbon $S/carbon/US-CAL-CISO_2023_hourly.csv \
  --server-carbon $S/carbon/GB_2023_hourly.csv --events-per-hour 4 --bandwidth $S/bandwidth/ucc5g_static_part1 \
  --calibrate-device-carbon $S/carbon/DE-LU_2023_hourly.csv
ev abandon_shift_link models/resnet18-5g-ab $FY --bandwidth $S/bandwidth/ucc5g_driving_lte_5g \
  --calibrate-bandwidth $S/bandwidth/ucc5g_static_part1
