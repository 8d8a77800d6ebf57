#!/usr/bin/env bash
# The fast-link bundles of docs/RESULTS.md. They copy models/resnet18 (built first, which
# profiles this machine for the rpi4 device profile) and keep that profile (--reuse-profile),
# so that the scenarios differ only in their traces and objective, not in a re-measurement.
# A build keeps the objective a bundle already records unless --objective names one, so each
# build names its objective (docs/objective.example.toml holds the defaults).
#
# M (default models) is where the bundles go; ONLY (default "5g 5g-ce 5g-nab 5g-slack") picks
# the variants, e.g. M=/root/.cache/carboncp/eval ONLY=5g docs/scenarios/build_fast.sh
# (docs/RESULTS.md, "Transfer ...", re-measures 'fast' under the carbon-first default).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
M=${M:-models}
ONLY=${ONLY:-"5g 5g-ce 5g-nab 5g-slack"}
S=../shared/data
TR="--device-carbon $S/carbon/DE-LU_2023_hourly.csv --server-carbon $S/carbon/GB_2023_hourly.csv --bandwidth $S/bandwidth/ucc5g_static_part1 --events-per-hour 4"
[ -f $M/resnet18/profile.json ] || carboncp build --model resnet18 --out $M/resnet18 --device-profile rpi4
has() { case " $ONLY " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
for v in $ONLY; do
  rm -rf $M/resnet18-$v && cp -r $M/resnet18 $M/resnet18-$v
done
# The default objective (early abandonment after 50 ms, fixed 300 ms deadline).
! has 5g || carboncp build --model resnet18 --out $M/resnet18-5g --reuse-profile \
  --objective docs/objective.example.toml $TR
# The same with Q_θ forced to cross-entropy (the build keeps the better of the two: regression).
! has 5g-ce || carboncp build --model resnet18 --out $M/resnet18-5g-ce --reuse-profile --q-objective ce \
  --objective docs/objective.example.toml $TR
# Early abandonment off: a failed upload is waited for until the deadline.
! has 5g-nab || carboncp build --model resnet18 --out $M/resnet18-5g-nab --reuse-profile \
  --objective docs/scenarios/no_early_abandon_objective.toml $TR
# The slack deadline rule on top of the defaults.
! has 5g-slack || carboncp build --model resnet18 --out $M/resnet18-5g-slack --reuse-profile \
  --objective docs/scenarios/slack_deadline_objective.toml $TR
