#!/bin/sh
# Nightly regression of the lab's protocols on the simulated bench: queue them, run the queue
# at full simulated speed, and check the results; a drift exits non-zero, so cron mails it.
#   crontab: 0 1 * * * cd /srv/cycler && ./nightly-regression.sh >> nightly.log 2>&1
# CYCLER is the cycler command (default: the one on PATH); CYCLER_RUNS_DIR where the runs go.
# tests/test_overnight_recipes.py runs this file as it is.
set -eu
CYCLER=${CYCLER:-cycler}
CAPACITY_EXPECTED=${CAPACITY_EXPECTED:-2.04±1%}   # Ah: the sim bench's C/3 capacity check

$CYCLER queue add capacity-check --bench sim
$CYCLER queue run --until-empty --speed max
$CYCLER check capacity-check --newest --expect "capacity_Ah=$CAPACITY_EXPECTED" --expect state=completed
