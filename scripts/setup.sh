#!/usr/bin/env bash
# Set up a fresh Debian 12 machine (as root) for pykata: Debian tools, then the Python packages.
# Safe to run again; it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  # guest images
  cpio kmod busybox-static e2fsprogs fdisk mkosi systemd-container debootstrap zstd xz-utils lz4
  binutils python3.11 python3-minimal libcap-dev
  # booting guests
  qemu-system-x86 qemu-utils socat
  # container baselines and host plumbing
  runc crun iproute2 iptables util-linux
  # a reference D-Bus peer for the systemd cgroup driver's client tests
  dbus-daemon
  # rootless pykata-runc with subordinate ids (newuidmap, newgidmap)
  uidmap
  # a static test program that makes 32-bit system calls (the seccomp compiler's SCMP_ARCH_X86 rules)
  gcc libc6-dev
)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
echo "setup: installing pykata and its Python dependencies with $("$PYTHON" --version)"
"$PYTHON" -m pip install -q --disable-pip-version-check -e '.[dev]'
# pip's pykata-runc runs python's site start-up (every .pth hook in site-packages) on each call, a
# large part of a short container command: put a launcher that runs python -S in its place
# (agent/container/cli_client.py, launcher_text), under the system's python of the same version when
# it loads the installed packages (it starts faster: cli_client.launcher_python).
scripts=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
launcher_python=$("$PYTHON" -c 'import sys; from agent.container.cli_client import install_launcher; print(install_launcher(sys.argv[1]))' \
  "$scripts/pykata-runc")
echo "setup: $scripts/pykata-runc runs $launcher_python -S"
# Bytecode ahead, as a distribution's packages have it: where PYTHONDONTWRITEBYTECODE is set (CI
# images, containers) nothing would ever write it, and each cold command would compile every module it
# loads (~115-200 ms against ~35 for a run here).
"$launcher_python" -m compileall -q -j 0 agent
echo "setup: done"
