#!/usr/bin/env bash
# The fast-link bundles of docs/RESULTS.md. models/resnet18-5g is profiled once (rpi4); the
# other scenarios copy it and keep that profile (--reuse-profile), so that they differ only in
# the objective, not in a re-measurement on a shared, noisy host.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
S=../shared/data
TR="--device-carbon $S/carbon/DE-LU_2023_hourly.csv --server-carbon $S/carbon/GB_2023_hourly.csv --bandwidth $S/bandwidth/ucc5g_static_part1 --events-per-hour 4"
REUSE=${REUSE:-}
if [ -z "$REUSE" ] || [ ! -f models/resnet18-5g/profile.json ]; then
  [ -d models/resnet18-5g ] || cp -r models/resnet18 models/resnet18-5g
  carboncp build --model resnet18 --out models/resnet18-5g --device-profile rpi4 $TR
else
  carboncp build --model resnet18 --out models/resnet18-5g --reuse-profile $TR
fi
for v in ea ea-ce ab; do
  rm -rf models/resnet18-5g-$v && cp -r models/resnet18-5g models/resnet18-5g-$v
done
carboncp build --model resnet18 --out models/resnet18-5g-ea --reuse-profile \
  --objective docs/scenarios/fast_link_objective.toml $TR
carboncp build --model resnet18 --out models/resnet18-5g-ea-ce --reuse-profile --q-objective ce \
  --objective docs/scenarios/fast_link_objective.toml $TR
carboncp build --model resnet18 --out models/resnet18-5g-ab --reuse-profile \
  --objective docs/scenarios/fast_link_abandon_objective.toml $TR
