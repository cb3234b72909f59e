#!/usr/bin/env bash
# The whole test suite: installs what the end-to-end tests need (Debian packages, Go tools) when it is
# missing, then runs formatting, vet, staticcheck and every test with the race detector, and ends with
# the line "N passed, N failed, N skipped".
#
# It never stops or kills a process it did not start: the tests run their own sshd, Squid and
# tinyproxy on ports the kernel picks and stop them by PID, so a system service on a default port
# does not matter to them. The one exception is a service that this run's apt-get install started
# itself: it is stopped right after the install, and the script says so.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the end-to-end tests use as real clients, servers and network tools: command:package.
need=()
for pair in curl:curl ssh:openssh-client sshd:openssh-server git:git pip3:python3-pip \
            npm:npm node:nodejs ip:iproute2 iptables:iptables nft:nftables squid:squid tinyproxy:tinyproxy \
            docker-compose:docker-compose fish:fish openssl:openssl python3:python3 dig:dnsutils setpriv:util-linux; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need+=("$pkg")
done
# Python modules the end-to-end tests import (an SDK-style client): module:package.
for pair in requests:python3-requests; do
  python3 -c "import ${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done

if [ ${#need[@]} -gt 0 ]; then
  ./scripts/install-packages.sh "${need[@]}"
fi

export PATH="$(go env GOPATH)/bin:$PATH"
command -v staticcheck >/dev/null || go install honnef.co/go/tools/cmd/staticcheck@v0.8.2

unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then echo "gofmt needed:"; echo "$unformatted"; exit 1; fi
go vet ./...
staticcheck ./...
# A developer's Mac runs everything; Windows at least the commands (connect, forward, env, ticket).
GOOS=darwin go build ./...
GOOS=windows go build -o /dev/null ./cmd/...

# go test -json carries every test's outcome, skips included (invisible in go test's own output without
# -v); testsummary prints each package's line, the output of failed tests, the skip reasons and the counts.
summary=$(mktemp -d)
trap 'rm -rf "$summary"' EXIT
go build -o "$summary/testsummary" ./scripts/testsummary
go test -json -race -count=1 -timeout 25m ./... 2>&1 | "$summary/testsummary"
