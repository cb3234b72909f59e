#!/usr/bin/env bash
# The whole test suite: installs what the end-to-end tests need (Debian packages, Go tools) when it is
# missing, then runs formatting, vet, staticcheck and every test with the race detector.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the end-to-end tests use as real clients, servers and network tools.
need=()
for pair in curl:curl ssh:openssh-client sshd:openssh-server git:git pip3:python3-pip \
            npm:npm node:nodejs ip:iproute2 iptables:iptables nft:nftables squid:squid tinyproxy:tinyproxy \
            docker-compose:docker-compose fish:fish; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  echo "installing: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Packaged services must not keep running on their default ports after install: tests start their own.
for svc in squid tinyproxy ssh; do
  command -v systemctl >/dev/null 2>&1 && systemctl stop "$svc" >/dev/null 2>&1 || true
  pkill -x "$svc" >/dev/null 2>&1 || true
done

export PATH="$(go env GOPATH)/bin:$PATH"
command -v staticcheck >/dev/null || go install honnef.co/go/tools/cmd/staticcheck@v0.8.2

unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then echo "gofmt needed:"; echo "$unformatted"; exit 1; fi
go vet ./...
staticcheck ./...
go test -race -count=1 -timeout 25m ./...
