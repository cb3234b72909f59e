#!/usr/bin/env bash
# install-packages.sh PACKAGE...: apt-get install the Debian packages scripts/test.sh found missing.
#
# It stops nothing it did not start. A package's service that this install started (sshd on 22,
# Squid on 3128, tinyproxy on 8888: the tests run their own on free loopback ports) is stopped right
# after the install, and named; a unit that was running before is the machine's own and is left
# alone. scripts/install_test.go runs this with stand-ins for apt-get, systemctl and sudo.
set -euo pipefail
[ $# -gt 0 ] || exit 0

# units_of names the systemd units a package's install may start.
units_of() {
  case "$1" in
    openssh-server) echo ssh.service ssh.socket ;;
    squid) echo squid.service ;;
    tinyproxy) echo tinyproxy.service ;;
  esac
}

if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
# systemd runs this machine (not a container without an init, where apt starts no service).
systemd=false
command -v systemctl >/dev/null 2>&1 && systemctl show-environment >/dev/null 2>&1 && systemd=true

units=() was_active=()
for pkg in "$@"; do
  for unit in $(units_of "$pkg"); do
    units+=("$unit")
    if $systemd && systemctl is-active --quiet "$unit"; then was_active+=(yes); else was_active+=(no); fi
  done
done

echo "installing: $*"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null

if $systemd; then
  for i in "${!units[@]}"; do
    unit=${units[$i]}
    if [ "${was_active[$i]}" = no ] && systemctl is-active --quiet "$unit"; then
      echo "stopping $unit: this run's apt-get install started it (on its default port); the tests start their own"
      $SUDO systemctl stop "$unit"
    fi
  done
fi
