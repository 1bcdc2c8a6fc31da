#!/usr/bin/env bash
# CI step before pytest: install SLURM + munge (Debian packages slurm-wlm,
# munge; needs root and the Debian mirror) so tests/test_slurm.py runs instead
# of skipping. The test itself starts and stops the one-node cluster
# (tests/slurm/cluster.sh up/down); run it with ADVSS_REQUIRE_SLURM=1 so a
# cluster that cannot start fails the job rather than skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/slurm/cluster.sh install
sbatch --version
