#!/usr/bin/env bash
# System tools some tests need, installed from Debian when this runs as root with apt-get.
# Run by `make test` (and so by .ci/run). Never fails the build by itself: a test whose tool
# is still missing skips with the reason, or fails under CI=true (tests/conftest.py).
#   openssh-server, openssh-client   the ssh:// device-profiling tests (a real sshd on loopback)
#   cmake, g++                       the native runner built against the executorch wheel
#   default-jdk-headless, junit4,    android-demo's plain-Java core module and its JUnit tests
#   libandroid-json-java (org.json)
set -u
need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -e "$1" ]; }
have /usr/sbin/sshd || need+=(openssh-server)
have ssh || need+=(openssh-client)
have cmake || need+=(cmake)
have g++ || need+=(g++)
have javac || need+=(default-jdk-headless)
have /usr/share/java/junit4.jar || need+=(junit4)
have /usr/share/java/com.android.json.jar || need+=(libandroid-json-java)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: not root or no apt-get; tests needing ${need[*]} will skip (or fail under CI=true)" >&2
  exit 0
fi
echo "installing test tools from Debian: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1; } ||
  echo "warning: could not install ${need[*]}; the tests that need them will skip (or fail under CI=true)" >&2
exit 0
