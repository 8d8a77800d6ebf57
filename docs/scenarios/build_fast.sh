#!/usr/bin/env bash
# The fast-link bundles of docs/RESULTS.md. They copy models/resnet18 (built first, which
# profiles this machine for the rpi4 device profile) and keep that profile (--reuse-profile),
# so that the scenarios differ only in their traces and objective, not in a re-measurement.
# A build keeps the objective a bundle already records unless --objective names one, so each
# build names its objective (docs/objective.example.toml holds the defaults).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
S=../shared/data
TR="--device-carbon $S/carbon/DE-LU_2023_hourly.csv --server-carbon $S/carbon/GB_2023_hourly.csv --bandwidth $S/bandwidth/ucc5g_static_part1 --events-per-hour 4"
[ -f models/resnet18/profile.json ] || carboncp build --model resnet18 --out models/resnet18 --device-profile rpi4
for v in 5g 5g-ce 5g-nab 5g-slack; do
  rm -rf models/resnet18-$v && cp -r models/resnet18 models/resnet18-$v
done
# The default objective (early abandonment after 50 ms, fixed 300 ms deadline).
carboncp build --model resnet18 --out models/resnet18-5g --reuse-profile \
  --objective docs/objective.example.toml $TR
# The same with Q_θ forced to cross-entropy (the build keeps the better of the two: regression).
carboncp build --model resnet18 --out models/resnet18-5g-ce --reuse-profile --q-objective ce \
  --objective docs/objective.example.toml $TR
# Early abandonment off: a failed upload is waited for until the deadline.
carboncp build --model resnet18 --out models/resnet18-5g-nab --reuse-profile \
  --objective docs/scenarios/no_early_abandon_objective.toml $TR
# The slack deadline rule on top of the defaults.
carboncp build --model resnet18 --out models/resnet18-5g-slack --reuse-profile \
  --objective docs/scenarios/slack_deadline_objective.toml $TR
