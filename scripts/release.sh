#!/usr/bin/env bash
# Build the release tarball: the binary, its manual pages and shell completions, the systemd
# unit, the container recipe, the Kubernetes manifests, the Grafana dashboard, the Prometheus
# rules, a sample config, the README, and SHA256SUMS over all of it.
#
#   scripts/release.sh                  # cargo build --release --locked, then package
#   AIBRIDGE_BIN=path scripts/release.sh   # package an already built binary (the tests do)
#   OUT_DIR=dist scripts/release.sh     # where the tarball goes (default target/dist)
#
# Prints the tarball's path. The archive is reproducible for a given binary: sorted entries,
# owner 0, mtime of the last commit (or SOURCE_DATE_EPOCH).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
target=$(rustc -vV | sed -n 's/^host: //p')
name="aibridge-proxy-${version}-${target}"
out="${OUT_DIR:-target/dist}"
stage="$out/$name"

bin="${AIBRIDGE_BIN:-}"
if [ -z "$bin" ]; then
    cargo build --release --locked --bin aibridge-proxy >&2
    bin=target/release/aibridge-proxy
fi
"$bin" --version >/dev/null

rm -rf "$stage" "$out/$name.tar.gz"
mkdir -p "$stage"/{bin,man,completions,deploy}
install -m 0755 "$bin" "$stage/bin/aibridge-proxy"
"$stage/bin/aibridge-proxy" man --dir "$stage/man"
for shell in bash zsh fish; do
    "$stage/bin/aibridge-proxy" completions "$shell" >"$stage/completions/aibridge-proxy.$shell"
done
cp -R deploy/systemd deploy/container deploy/kubernetes deploy/grafana deploy/prometheus "$stage/deploy/"
cp deploy/aibridge-proxy.toml "$stage/aibridge-proxy.toml.sample"
cp README.md "$stage/"
[ -f LICENSE ] && cp LICENSE "$stage/"
[ -f certs/README.md ] && cp certs/README.md "$stage/CERTS.md"

(cd "$stage" && find . -type f ! -name SHA256SUMS | LC_ALL=C sort | sed 's|^\./||' | xargs sha256sum >SHA256SUMS)

mtime="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$mtime" \
    -C "$out" -czf "$out/$name.tar.gz" "$name"
(cd "$out" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
echo "$out/$name.tar.gz"
