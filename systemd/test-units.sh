#!/bin/sh
# The units as built: `systemd-analyze verify` clean (with ExecStart pointed
# at the build's kvdrived, as the installed path does not exist yet), an
# exposure (`systemd-analyze security`) of at most $MAX_EXPOSURE, the NVIDIA
# device nodes allowed with no other device, and a config install that never
# overwrites an edited file. TAP; exits 77 without systemd-analyze.
# $1: build dir of the units, $2: kvdrived, $3: install-config.sh, $4: the example.
set -u
MAX_EXPOSURE=2.0
units=$1 kvdrived=$2 install_config=$3 example=$4
if ! command -v systemd-analyze >/dev/null 2>&1; then
        echo "1..0 # SKIP systemd-analyze is not installed"
        exit 77
fi
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
n=0 failed=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); failed=1; echo "not ok $n - $1"; }
check() { if eval "$2"; then ok "$1"; else not_ok "$1"; fi; }

echo "1..8"
sed "s|^ExecStart=[^ ]*|ExecStart=$kvdrived|" "$units/kvdrived.service" > "$tmp/kvdrived.service"
cp "$units/kvdrived.socket" "$tmp/"
out=$(systemd-analyze verify "$tmp/kvdrived.service" "$tmp/kvdrived.socket" 2>&1)
rc=$?
[ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/# /'
check "systemd-analyze verify is clean" '[ $rc -eq 0 ] && [ -z "$out" ]'

exposure=$(systemd-analyze security --offline=yes --no-pager "$units/kvdrived.service" 2>/dev/null |
           sed -n 's/.*Overall exposure level for kvdrived.service: \([0-9.]*\).*/\1/p')
echo "# exposure: ${exposure:-none}"
check "systemd-analyze security exposure ${exposure:-?} <= $MAX_EXPOSURE" \
      '[ -n "$exposure" ] && awk -v e="$exposure" -v m="$MAX_EXPOSURE" "BEGIN { exit !(e <= m) }"'

svc=$units/kvdrived.service
check "no PrivateDevices=yes (it hides /dev/nvidia*)" '! grep -q "^PrivateDevices=yes" "$svc"'
check "DevicePolicy=closed" 'grep -q "^DevicePolicy=closed$" "$svc"'
check "the NVIDIA nodes are allowed" \
      'grep -q "^DeviceAllow=char-nvidia-frontend rw$" "$svc" && grep -q "^DeviceAllow=char-nvidia-uvm rw$" "$svc" &&
       grep -q "^DeviceAllow=/dev/nvidiactl rw$" "$svc" && grep -q "^DeviceAllow=/dev/nvidia-uvm rw$" "$svc"'
check "the SSD drop-in is documented in the unit" 'grep -q "ReadWritePaths=" "$svc"'

conf=/etc/kvdrive/kvdrived.conf
DESTDIR=$tmp/dest sh "$install_config" "$example" "$conf" >/dev/null
check "the config is installed when absent" 'cmp -s "$example" "$tmp/dest$conf"'
echo "# edited" >> "$tmp/dest$conf"
DESTDIR=$tmp/dest sh "$install_config" "$example" "$conf" >/dev/null
check "a reinstall keeps an edited config" 'tail -n 1 "$tmp/dest$conf" | grep -q "^# edited$"'
exit $failed
