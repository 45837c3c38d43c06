#!/usr/bin/env bash
# Fetch real genomic example data for dna-mamba from Debian packages.
#
# Usage: scripts/fetch-data.sh [TARGET...]
#
# Targets (default: lambda reads):
#   lambda   phage lambda genome            -> $DATA/lambda.fa.gz
#   ecoli    E. coli K-12 MG1655 genome     -> $DATA/ecoli.fa (+ $DATA/ecoli.gbk.gz, GenBank with CDS)
#   chr20    human GRCh37 chr20 (BGZF)      -> $DATA/chr20.fa.gz (+ .fai, .gzi)
#   reads    real Illumina + ONT FASTQ      -> $DATA/reads_illumina.fq.gz, $DATA/reads_ont.fq.gz
#   yeast    S. cerevisiae chrI+chrII + GFF3 -> $DATA/yeast.fa, $DATA/yeast.gff3
#   all      lambda ecoli chr20 reads yeast
#   small    regenerate the committed files in data/ (lambda.fa.gz, reads.fq.gz, ont_reads.fq.gz)
#
# $DATA is ${DNA_MAMBA_DATA:-<repo>/.data}. Downloaded .debs are cached in $DATA/debs;
# every target skips work whose output already exists, so reruns are cheap.
# Needs: apt-get (Debian 12 lists; `apt-get update` needs root or sudo), dpkg-deb, gzip, awk.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA=${DNA_MAMBA_DATA:-$ROOT/.data}
mkdir -p "$DATA"
DATA=$(cd "$DATA" && pwd)
DEBS=$DATA/debs
mkdir -p "$DEBS"

# Pinned versions (Debian 12 "bookworm"), see /work/shared/reference/data-sources.md.
declare -A PIN=(
  [bowtie2-examples]=2.5.0-3
  [cct-examples]=1:1.0.3-1
  [ragout-examples]=2.3-4
  [vt-examples]=0.57721+ds-3
  [any2fasta-examples]=0.4.2-2
  [qcat-examples]=1.1.0-6
  [gbrowse-data]=2.56+dfsg-11
)

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
landed() { printf 'landed: %s (%s bytes)\n' "$1" "$(stat -c %s "$1")"; }

SUDO=
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi
# As root, apt would try (and warn about) dropping to user _apt for downloads into $DEBS.
APT_DL_OPTS=()
if [ "$(id -u)" -eq 0 ]; then APT_DL_OPTS=(-o APT::Sandbox::User=root); fi
UPDATED=0
apt_update() {
  [ "$UPDATED" -eq 1 ] && return 0
  log "running apt-get update"
  $SUDO apt-get update -qq >&2
  UPDATED=1
}

# Versions that apt knows for a package (from `apt-cache policy`'s version table).
known_versions() {
  apt-cache policy "$1" 2>/dev/null | awk '
    /Version table:/ { t = 1; next }
    !t { next }
    $1 == "***" { print $2; next }
    NF == 2 && $2 ~ /^-?[0-9]+$/ { print $1 }'
}
candidate() {
  apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }'
}

# resolve_version PKG: sets RV to the pinned version if apt offers it, else to the
# candidate (i.e. what the unversioned name gives). Returns 1 if apt has no such package.
RV=
resolve_version() {
  local pkg=$1 pin=${PIN[$1]:-} v attempt
  RV=
  for attempt in 1 2; do
    if [ -n "$pin" ] && known_versions "$pkg" | grep -qxF -- "$pin"; then
      RV=$pin; return 0
    fi
    v=$(candidate "$pkg")
    if [ -n "$v" ] && [ "$v" != "(none)" ] && { [ "$UPDATED" -eq 1 ] || [ -z "$pin" ]; }; then
      log "warning: $pkg${pin:+=$pin} not available, using $pkg=$v"
      RV=$v; return 0
    fi
    [ "$attempt" -eq 1 ] && { apt_update || return 1; }
  done
  log "apt knows no package $pkg"
  return 1
}

# fetch_deb PKG: sets DEB to the cached .deb of PKG (downloading it first if needed)
# and VER[PKG] to its version. Returns 1 (does not exit) if it cannot be had.
declare -A VER=()
DEB=
fetch_deb() {
  local pkg=$1
  DEB=$(ls "$DEBS/${pkg}_"*.deb 2>/dev/null | head -n 1 || true)
  if [ -z "$DEB" ]; then
    resolve_version "$pkg" || return 1
    log "downloading $pkg=$RV"
    if ! (cd "$DEBS" && apt-get download -q "${APT_DL_OPTS[@]}" "$pkg=$RV" >&2); then
      apt_update || return 1
      (cd "$DEBS" && apt-get download -q "${APT_DL_OPTS[@]}" "$pkg=$RV" >&2) || { log "apt-get download $pkg=$RV failed"; return 1; }
    fi
    DEB=$(ls "$DEBS/${pkg}_"*.deb 2>/dev/null | head -n 1 || true)
    [ -n "$DEB" ] || return 1
  fi
  VER[$pkg]=$(dpkg-deb -f "$DEB" Version) || return 1
}

# extract PKG DEST: DEST holds the unpacked package (dpkg-deb -x), fresh each call.
extract() {
  local pkg=$1 dest=$2
  fetch_deb "$pkg" || die "cannot get package $pkg"
  rm -rf "$dest"; mkdir -p "$dest"
  dpkg-deb -x "$DEB" "$dest"
  log "using $pkg ${VER[$pkg]} ($(basename "$DEB"))"
}

TMP=$(mktemp -d "$DATA/.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# First N records of a 4-line FASTQ (gzipped) -> stdout (uncompressed).
# awk reads the whole input (no SIGPIPE under pipefail) and checks the layout.
fastq_head() {
  gzip -dc "$1" | awk -v n="$2" '
    NR % 4 == 1 && substr($0, 1, 1) != "@" { print "bad FASTQ header at line " NR > "/dev/stderr"; exit 1 }
    NR % 4 == 3 && substr($0, 1, 1) != "+" { print "bad FASTQ separator at line " NR > "/dev/stderr"; exit 1 }
    NR <= 4 * n { print }'
}

# ---------------------------------------------------------------- targets
do_lambda() {
  local out=$DATA/lambda.fa.gz
  if [ ! -s "$out" ]; then
    extract bowtie2-examples "$TMP/bt2"
    cp "$TMP/bt2/usr/share/doc/bowtie2/examples/reference/lambda_virus.fa.gz" "$out.part"
    mv "$out.part" "$out"
    rm -rf "$TMP/bt2"
  fi
  landed "$out"
}

# GenBank (possibly several records) -> FASTA, 70 columns, header "VERSION DEFINITION".
gbk2fa() {
  awk '
    /^LOCUS/      { name = $2; def = "" }
    /^VERSION/    { name = $2 }
    /^DEFINITION/ { def = substr($0, 13); sub(/\.$/, "", def) }
    /^ORIGIN/     { print ">" name (def != "" ? " " def : ""); inseq = 1; buf = ""; next }
    /^\/\//       { if (length(buf)) print buf; buf = ""; inseq = 0; next }
    inseq {
      for (i = 2; i <= NF; i++) buf = buf toupper($i)
      while (length(buf) >= 70) { print substr(buf, 1, 70); buf = substr(buf, 71) }
    }'
}

do_ecoli() {
  local out=$DATA/ecoli.fa gbk=$DATA/ecoli.gbk.gz
  if [ ! -s "$out" ]; then
    # Primary: cct-examples GenBank NC_000913 (sequence + 4,254 CDS), converted to FASTA.
    if fetch_deb cct-examples; then
      extract cct-examples "$TMP/cct"
      local src=$TMP/cct/usr/share/doc/cct/examples/sample_projects/sample_project_3/comparison_genomes/NC_000913.gbk.gz
      cp "$src" "$gbk.part" && mv "$gbk.part" "$gbk"
      gzip -dc "$src" | gbk2fa > "$out.part"
      rm -rf "$TMP/cct"
    else
      # Fallback: ragout-examples plain FASTA (identical sequence, header ">K-12-MG1655").
      log "cct-examples unavailable, falling back to ragout-examples"
      extract ragout-examples "$TMP/rag"
      gzip -dc "$TMP/rag/usr/share/doc/ragout/examples/E.Coli/references/MG1655-K12.fasta.gz" > "$out.part"
      rm -rf "$TMP/rag"
    fi
    mv "$out.part" "$out"
  fi
  landed "$out"
  [ -s "$gbk" ] && landed "$gbk"
  return 0
}

do_chr20() {
  local out=$DATA/chr20.fa.gz
  if [ ! -s "$out" ] || [ ! -s "$out.gzi" ] || [ ! -s "$out.fai" ]; then
    extract vt-examples "$TMP/vt"
    local d=$TMP/vt/usr/share/doc/vt/examples/ref
    cp "$d/20.fa.gz.fai" "$out.fai"                 # faidx for record "20"
    gzip -dc "$d/20.fa.gz.gzi.gz" > "$out.gzi"       # BGZF index (shipped gzipped)
    cp "$d/20.fa.gz" "$out.part" && mv "$out.part" "$out"
    rm -rf "$TMP/vt"
  fi
  landed "$out"; landed "$out.fai"; landed "$out.gzi"
}

do_reads() {
  local il=$DATA/reads_illumina.fq.gz ont=$DATA/reads_ont.fq.gz
  if [ ! -s "$il" ]; then
    # MiSeq 2x251 run ERR1163317, 1,000 reads.
    extract any2fasta-examples "$TMP/a2f"
    cp "$TMP/a2f/usr/share/doc/any2fasta/examples/test.fq.gz" "$il.part" && mv "$il.part" "$il"
    rm -rf "$TMP/a2f"
  fi
  if [ ! -s "$ont" ]; then
    # Oxford Nanopore reads without barcodes, 989 reads.
    extract qcat-examples "$TMP/qcat"
    cp "$TMP/qcat/usr/share/doc/qcat/examples/qcat/test/data/nobarcode_1k.fastq.gz" "$ont.part" && mv "$ont.part" "$ont"
    rm -rf "$TMP/qcat"
  fi
  landed "$il"; landed "$ont"
}

do_yeast() {
  local fa=$DATA/yeast.fa gff=$DATA/yeast.gff3
  if [ ! -s "$fa" ] || [ ! -s "$gff" ]; then
    extract gbrowse-data "$TMP/gb"
    local d=$TMP/gb/var/lib/gbrowse/databases
    cat "$d/yeast_scaffolds/chr1.fa" "$d/yeast_scaffolds/chr2.fa" > "$fa.part" && mv "$fa.part" "$fa"
    cp "$d/yeast_chr1+2/yeast_chr1+2.gff3" "$gff.part" && mv "$gff.part" "$gff"
    rm -rf "$TMP/gb"
  fi
  landed "$fa"; landed "$gff"
}

# Committed, commit-sized subsets in data/. Always rebuilt (byte-identical: gzip -n, fixed level).
do_small() {
  local out=$ROOT/data n
  mkdir -p "$out"
  do_lambda >/dev/null
  do_reads >/dev/null
  cp "$DATA/lambda.fa.gz" "$out/lambda.fa.gz"                       # verbatim from the package
  fastq_head "$DATA/reads_illumina.fq.gz" 300 | gzip -9n > "$out/reads.fq.gz"
  for n in 50 20; do
    fastq_head "$DATA/reads_ont.fq.gz" "$n" | gzip -9n > "$out/ont_reads.fq.gz"
    [ "$(stat -c %s "$out/ont_reads.fq.gz")" -lt 512000 ] && break
  done
  for f in lambda.fa.gz reads.fq.gz ont_reads.fq.gz; do landed "$out/$f"; done
  (cd "$out" && sha256sum lambda.fa.gz reads.fq.gz ont_reads.fq.gz)
}

[ "$#" -eq 0 ] && set -- lambda reads
for t in "$@"; do
  case "$t" in
    lambda|ecoli|chr20|reads|yeast|small) "do_$t" ;;
    all) do_lambda; do_ecoli; do_chr20; do_reads; do_yeast ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown target '$t' (lambda ecoli chr20 reads yeast all small)" ;;
  esac
done
