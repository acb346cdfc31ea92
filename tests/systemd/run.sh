#!/usr/bin/env bash
# The service under a real systemd: boots a Debian bookworm root file system (systemd 252 as PID 1)
# with systemd-nspawn, installs the Debian package exactly as README.md's "Running as a service"
# says, points it at `mde-sync simulate` (a transient unit inside the container, on the container's
# own loopback: --private-network) and checks what an operator relies on. Run as root:
#
#   bash tests/systemd/run.sh [PATH/TO/mde-sync_*.deb]
#
# Without an argument the package is built with systemd/build-deb.sh. The root file system is
# built once with debootstrap from this machine's Debian mirror and cached outside the repository
# (MDE_SYNC_CI_CACHE, default /var/cache/mde-sync-ci). The container is torn down on every exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO="$PWD"
# shellcheck source=tests/systemd/rootfs.sh
source tests/systemd/rootfs.sh

STARTED=$SECONDS
CHECKS=0
FAILURES=0
pass() {
    CHECKS=$((CHECKS + 1))
    echo "ok   - $*"
}
fail() {
    CHECKS=$((CHECKS + 1))
    FAILURES=$((FAILURES + 1))
    echo "FAIL - $*"
}
check() { # check "description" command...: passes when the command succeeds
    local what="$1"
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}
die() {
    echo "FAIL: $*" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || die "the systemd test needs root (debootstrap, systemd-nspawn, nsenter)"

# --- tools ---------------------------------------------------------------------------------------
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
command -v curl >/dev/null || missing+=(curl)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "== apt-get install ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi
command -v nsenter >/dev/null || die "nsenter (util-linux) is missing"

ensure_rootfs || exit 1

# --- the package ---------------------------------------------------------------------------------
DEB="${1:-}"
if [ -z "$DEB" ]; then
    DEB="$(bash systemd/build-deb.sh | tail -n 1)"
fi
[ -f "$DEB" ] || die "no package at $DEB"
DEB="$(realpath "$DEB")"
echo "== package $DEB"

# --- the container -------------------------------------------------------------------------------
RUN="$(mktemp -d /var/tmp/mde-sync-systemd.XXXXXX)"
ROOT="$RUN/root"
NSPAWN_PID=""
CPID=""
# Runs a command inside the container, as root, with a clean environment.
ct() {
    nsenter -t "$CPID" -a -r -w -- /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 TERM=dumb "$@"
}
# A shell command line inside the container, from /srv/ci.
sh_ct() { ct /bin/bash -c "cd /srv/ci && $1"; }

journal_dump() { ct journalctl --no-pager -o short-precise >"$RUN/journal.txt" 2>&1 || true; }
teardown() {
    local code=$?
    if [ "$code" != 0 ] && [ -n "$CPID" ] && kill -0 "$CPID" 2>/dev/null; then journal_dump; fi
    if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        # SIGTERM asks the container's systemd to power off; SIGKILL if it does not.
        kill -TERM "$NSPAWN_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$NSPAWN_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$NSPAWN_PID" 2>/dev/null || true
        wait "$NSPAWN_PID" 2>/dev/null || true
    fi
    if [ "$code" != 0 ] && [ -f "$RUN/journal.txt" ]; then
        echo "--- the container's journal (last 60 lines) ---"
        tail -n 60 "$RUN/journal.txt"
    fi
    rm -rf "$RUN"
    exit "$code"
}
trap teardown EXIT
trap 'exit 130' INT TERM

cp -a "$ROOTFS" "$ROOT"
mkdir -p "$ROOT/srv/ci"
DEB_NAME="$(basename "$DEB")"
cp "$DEB" "$ROOT/srv/ci/$DEB_NAME"

systemd-nspawn -b --register=no --keep-unit --private-network --console=read-only \
    -D "$ROOT" >"$RUN/console.log" 2>&1 </dev/null &
NSPAWN_PID=$!
for _ in $(seq 1 100); do
    for p in $(pgrep -P "$NSPAWN_PID" 2>/dev/null); do
        if [ "$(cat "/proc/$p/comm" 2>/dev/null)" = systemd ]; then CPID=$p; fi
    done
    [ -n "$CPID" ] && break
    kill -0 "$NSPAWN_PID" 2>/dev/null || break
    sleep 0.1
done
[ -n "$CPID" ] || {
    cat "$RUN/console.log"
    die "the container did not boot"
}

state=""
for _ in $(seq 1 120); do
    # (systemctl fails until PID 1's private socket exists; then it says starting, running, …)
    state="$(ct systemctl is-system-running 2>/dev/null || true)"
    case "$state" in running | degraded) break ;; esac
    sleep 0.5
done
case "$state" in
    running | degraded) echo "== container booted ($state) in $((SECONDS - STARTED)) s" ;;
    *) die "the container's systemd did not finish booting: $state" ;;
esac

# Waits up to $1 seconds for a shell condition inside the container.
wait_ct() {
    local secs="$1" cond="$2"
    for _ in $(seq 1 $((secs * 5))); do
        sh_ct "$cond" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}
show() { ct systemctl show -p "$1" --value mde-sync; }

# --- README: Install -----------------------------------------------------------------------------
echo "== README: install the package"
# exactly as README shows it: no -y (nothing else needs installing, so apt does not ask)
if sh_ct "sudo apt install ./$DEB_NAME </dev/null" >"$RUN/apt.log" 2>&1; then
    pass "sudo apt install ./$DEB_NAME"
else
    cat "$RUN/apt.log"
    die "the package does not install"
fi
check "the package created the system user mde-sync (no login shell, home /var/lib/mde-sync)" \
    sh_ct 'getent passwd mde-sync | grep -q ":/var/lib/mde-sync:/usr/sbin/nologin$"'
check "the installed service is neither enabled nor started" \
    sh_ct '[ "$(systemctl is-enabled mde-sync)" = disabled ] && ! systemctl is-active --quiet mde-sync'
check "/etc/mde-sync is root:mde-sync 0750, its files 0640, and both are conffiles" \
    sh_ct '[ "$(stat -c "%U:%G %a" /etc/mde-sync)" = "root:mde-sync 750" ] &&
           [ "$(stat -c "%U:%G %a" /etc/mde-sync/config.toml)" = "root:mde-sync 640" ] &&
           dpkg-query -W -f="\${Conffiles}" mde-sync | grep -q "/etc/mde-sync/config.toml" &&
           dpkg-query -W -f="\${Conffiles}" mde-sync | grep -q "/etc/mde-sync/tenants.toml"'
check "the package ships no secret" \
    sh_ct '! dpkg -L mde-sync | grep -q secret'
check "man page and bash, zsh and fish completions are installed" \
    sh_ct 'gzip -dc /usr/share/man/man1/mde-sync.1.gz | grep -q "^\.TH mde-sync" &&
           grep -q "complete .*mde-sync" /usr/share/bash-completion/completions/mde-sync &&
           grep -q "#compdef mde-sync" /usr/share/zsh/vendor-completions/_mde-sync &&
           grep -q "complete -c mde-sync" /usr/share/fish/vendor_completions.d/mde-sync.fish'

# Now that the binary is installed, start the simulator.
ct systemctl stop mde-sync-sim >/dev/null 2>&1 || true
ct systemctl reset-failed mde-sync-sim >/dev/null 2>&1 || true
ct systemd-run --quiet --unit=mde-sync-sim --collect \
    /usr/bin/mde-sync simulate --listen 127.0.0.1:8089 --tenants 3 --alerts 40 --write-config /srv/ci/sim
wait_ct 20 '[ -f /srv/ci/sim/tenants.toml ] && curl -s -o /dev/null http://127.0.0.1:8089/' ||
    die "the simulator did not start"
CLIENT_ID="$(sh_ct "sed -n 's/^client_id = \"\\(.*\\)\"$/\\1/p' /srv/ci/sim/config.toml")"
SECRET="$(sh_ct "sed -n 's/^client_secret = \"\\(.*\\)\"$/\\1/p' /srv/ci/sim/config.toml")"
[ -n "$CLIENT_ID" ] && [ -n "$SECRET" ] || die "cannot read the simulator's client id and secret"
TENANTS=()
while read -r id; do TENANTS+=("$id"); done < <(sh_ct "sed -n 's/^id = \"\\(.*\\)\"$/\\1/p' /srv/ci/sim/tenants.toml")
[ "${#TENANTS[@]}" = 3 ] || die "expected 3 simulated tenants, got ${#TENANTS[@]}"

# What an operator would type into the editor: the package's example with the app's client id,
# the simulator's hosts (on the container's loopback), a 5 s schedule and the metrics listener.
sed -e "s/^client_id = .*/client_id = \"$CLIENT_ID\"/" \
    -e 's|^# login_url = .*|login_url = "http://127.0.0.1:8089"|' \
    -e 's|^# api_url = .*|api_url = "http://127.0.0.1:8089"|' \
    -e 's|^schedule = .*|schedule = "*/5 * * * * *"|' \
    -e 's|^lag_allowance = .*|lag_allowance = "1s"|' \
    -e 's|^# listen = .*|listen = "127.0.0.1:9464"|' \
    "$ROOT/etc/mde-sync/config.toml" >"$ROOT/srv/ci/config.toml"
for line in "client_id = \"$CLIENT_ID\"" 'login_url = "http://127.0.0.1:8089"' 'api_url = "http://127.0.0.1:8089"' \
    'schedule = "*/5 * * * * *"' 'lag_allowance = "1s"' 'listen = "127.0.0.1:9464"'; do
    grep -qxF "$line" "$ROOT/srv/ci/config.toml" || die "the example config has no line to turn into: $line"
done
tenant_entry() { printf '\n[[tenant]]\nid = "%s"\nname = "Customer %s"\n' "$1" "$2"; }
{
    echo "# tenants of the systemd test"
    tenant_entry "${TENANTS[0]}" 1
    tenant_entry "${TENANTS[1]}" 2
} >"$ROOT/srv/ci/tenants.toml"
printf '%s\n' "$SECRET" >"$ROOT/srv/ci/client-secret"

echo "== README: configure"
# sudoedit runs $SUDO_EDITOR on a copy of the file and installs the result: the "editor" here
# copies the prepared file over it.
check "sudoedit /etc/mde-sync/config.toml" sh_ct 'SUDO_EDITOR="cp /srv/ci/config.toml" sudoedit /etc/mde-sync/config.toml'
check "sudoedit /etc/mde-sync/tenants.toml" sh_ct 'SUDO_EDITOR="cp /srv/ci/tenants.toml" sudoedit /etc/mde-sync/tenants.toml'
check "sudo install -m 0600 -o root -g root /dev/null /etc/mde-sync/client-secret" \
    sh_ct 'sudo install -m 0600 -o root -g root /dev/null /etc/mde-sync/client-secret'
check "sudoedit /etc/mde-sync/client-secret" sh_ct 'SUDO_EDITOR="cp /srv/ci/client-secret" sudoedit /etc/mde-sync/client-secret'
check "sudo CREDENTIALS_DIRECTORY=/etc/mde-sync mde-sync --config /etc/mde-sync/config.toml validate" \
    sh_ct 'sudo CREDENTIALS_DIRECTORY=/etc/mde-sync mde-sync --config /etc/mde-sync/config.toml validate | grep -q "configuration ok: 2 tenant"'
check "sudo CREDENTIALS_DIRECTORY=/etc/mde-sync mde-sync --config /etc/mde-sync/config.toml check" \
    sh_ct 'sudo CREDENTIALS_DIRECTORY=/etc/mde-sync mde-sync --config /etc/mde-sync/config.toml check >/srv/ci/check.txt && [ "$(grep -c " OK " /srv/ci/check.txt)" = 2 ]'

echo "== README: start"
T0=$SECONDS
if sh_ct 'sudo systemctl enable --now mde-sync'; then
    pass "sudo systemctl enable --now mde-sync (returns once READY=1 was sent)"
else
    fail "sudo systemctl enable --now mde-sync (returns once READY=1 was sent)"
    exit 1
fi
check "the service is active (running) after READY, within 30 s" \
    sh_ct '[ "$(systemctl show -p ActiveState,SubState --value mde-sync | paste -sd/)" = active/running ]'
[ $((SECONDS - T0)) -le 30 ] || fail "enable --now took $((SECONDS - T0)) s"
check "systemctl status mde-sync" sh_ct 'systemctl status --no-pager mde-sync >/srv/ci/status.txt; grep -q "active (running)" /srv/ci/status.txt'
wait_ct 30 'sudo -u mde-sync mde-sync --config /etc/mde-sync/config.toml status | grep -c " ok " | grep -qx 2' ||
    fail "two tenants synced within 30 s"
check "systemd's STATUS= line reports the tenants" \
    sh_ct 'systemctl show -p StatusText --value mde-sync | grep -q "2 tenant(s) ok"'
check "the database is /var/lib/mde-sync/mde-sync.db, owner mde-sync, mode 0600; the directory 0700" \
    sh_ct '[ "$(stat -c "%U %a" /var/lib/mde-sync/mde-sync.db)" = "mde-sync 600" ] &&
           [ "$(stat -c "%U %a" /var/lib/mde-sync)" = "mde-sync 700" ]'
check "/etc/mde-sync is read-only inside the service's sandbox" \
    sh_ct 'pid=$(systemctl show -p MainPID --value mde-sync);
           ! nsenter -t "$pid" -m -- /bin/sh -c "touch /etc/mde-sync/.written" 2>/dev/null &&
           [ ! -e /etc/mde-sync/.written ]'

echo "== README: day to day"
check "sudo -u mde-sync mde-sync --config /etc/mde-sync/config.toml status (from the service's database, read only)" \
    sh_ct "cd / && sudo -u mde-sync mde-sync --config /etc/mde-sync/config.toml status >/srv/ci/status-cmd.txt &&
           grep -q '${TENANTS[0]}' /srv/ci/status-cmd.txt && grep -q '${TENANTS[1]}' /srv/ci/status-cmd.txt"
check "status with the default database.url (no url line) reads the service's database and creates none" \
    sh_ct "sed '/^url = /d' /etc/mde-sync/config.toml >/srv/ci/config-default-db.toml && chmod 0644 /srv/ci/config-default-db.toml &&
           cd / && sudo -u mde-sync mde-sync --config /srv/ci/config-default-db.toml status | grep -q '${TENANTS[0]}' &&
           [ ! -e /mde-sync.db ] && [ ! -e /srv/ci/mde-sync.db ]"
check "status runs beside the daemon (5 times) and the daemon keeps syncing" \
    sh_ct 'for i in 1 2 3 4 5; do sudo -u mde-sync mde-sync --config /etc/mde-sync/config.toml status >/dev/null || exit 1; done; systemctl is-active --quiet mde-sync'
check "journalctl -u mde-sync -o json --since -1h | jq … (README: the synced tenants from MESSAGE)" \
    sh_ct "journalctl -u mde-sync -o json --since -1h \
             | jq -r '.MESSAGE | fromjson? | select(.message == \"tenant synced\") | [.timestamp, .tenant_name, .alerts, .written] | @tsv' \
             | grep -q 'Customer 1'"

# Journal priority per level and the JSON fields.
check "info lines are PRIORITY=6 JSON objects with timestamp, level, message and target" \
    sh_ct 'journalctl -u mde-sync -o json | jq -e -s "
        [ .[] | select(.MESSAGE | type == \"string\" and startswith(\"{\")) ] as \$lines
        | (\$lines | length) > 0 and all(\$lines[];
            (.MESSAGE | fromjson) as \$m
            | (\$m | has(\"timestamp\") and has(\"message\") and has(\"target\"))
            and ((\$m.level == \"INFO\" and .PRIORITY == \"6\") or (\$m.level == \"WARN\" and .PRIORITY == \"4\")
                 or (\$m.level == \"ERROR\" and .PRIORITY == \"3\") or (\$m.level == \"DEBUG\" and .PRIORITY == \"7\")))" >/dev/null'
check "journalctl -u mde-sync -f -o cat (the JSON lines as written, without a priority prefix)" \
    sh_ct 'timeout 2 journalctl -u mde-sync -f -o cat >/srv/ci/follow.txt; grep -q "^{\"timestamp\":" /srv/ci/follow.txt && ! grep -q "^<[0-9]>" /srv/ci/follow.txt'

echo "== reload"
MAIN_BEFORE="$(show MainPID)"
tenant_entry "${TENANTS[2]}" 3 >>"$ROOT/etc/mde-sync/tenants.toml"
check "sudo systemctl reload mde-sync (a tenant added)" sh_ct 'sudo systemctl reload mde-sync'
wait_ct 20 "journalctl -u mde-sync -o cat | grep '\"configuration reloaded\"' | grep -q '${TENANTS[2]}'" ||
    fail "the reload logs the added tenant"
wait_ct 30 "sudo -u mde-sync mde-sync --config /etc/mde-sync/config.toml status | grep '${TENANTS[2]}' | grep -q ' ok '" &&
    pass "the added tenant synced after the reload" || fail "the added tenant synced after the reload"
check "the reload kept the process (same MainPID) and counts as applied in /metrics" \
    sh_ct "[ \"\$(systemctl show -p MainPID --value mde-sync)\" = $MAIN_BEFORE ] &&
           curl -fsS -o /srv/ci/metrics-applied.txt http://127.0.0.1:9464/metrics &&
           grep -q '^mde_sync_config_reloads_total{result=\"applied\"} 1$' /srv/ci/metrics-applied.txt"
cp "$ROOT/etc/mde-sync/tenants.toml" "$RUN/tenants.good"
printf '\n[[tenant]]\nid = "not-a-guid"\n' >>"$ROOT/etc/mde-sync/tenants.toml"
check "systemctl reload with a broken tenants file does not kill the service" sh_ct 'sudo systemctl reload mde-sync'
wait_ct 20 'journalctl -u mde-sync -p err | grep -q "\"message\":\"reload rejected"' &&
    pass "the rejected reload is in journalctl -u mde-sync -p err, naming the problem" ||
    fail "the rejected reload is in journalctl -u mde-sync -p err, naming the problem"
check "the rejected reload names the bad tenant id" \
    sh_ct 'journalctl -u mde-sync -p err -o cat | grep "reload rejected" | grep -q "not-a-guid"'
check "after the rejected reload: same MainPID, still active, 3 tenants, rejected counted in /metrics" \
    sh_ct "[ \"\$(systemctl show -p MainPID --value mde-sync)\" = $MAIN_BEFORE ] && systemctl is-active --quiet mde-sync &&
           curl -fsS http://127.0.0.1:9464/metrics >/srv/ci/metrics.txt &&
           grep -q '^mde_sync_config_reloads_total{result=\"rejected\"} 1$' /srv/ci/metrics.txt &&
           grep -q '^mde_sync_tenants 3$' /srv/ci/metrics.txt"
check "systemctl status shows the rejected reload in the STATUS= line" \
    sh_ct 'systemctl status --no-pager mde-sync | grep -q "last reload rejected, running configuration kept"'
cp "$RUN/tenants.good" "$ROOT/etc/mde-sync/tenants.toml"
# The live /metrics output, for `promtool check metrics` in .ci/run.
if [ -n "${MDE_SYNC_METRICS_OUT:-}" ]; then
    check "GET /metrics answers" sh_ct 'curl -fsS http://127.0.0.1:9464/metrics >/srv/ci/metrics.txt'
    cp "$ROOT/srv/ci/metrics.txt" "$MDE_SYNC_METRICS_OUT"
fi

echo "== upgrade"
MAIN_BEFORE="$(show MainPID)"
check "reinstalling the package keeps the edited configuration and restarts the running service" \
    sh_ct "sudo apt install -y --reinstall ./$DEB_NAME >/dev/null 2>&1 &&
           grep -qx 'client_id = \"$CLIENT_ID\"' /etc/mde-sync/config.toml &&
           [ \"\$(stat -c '%U:%G %a' /etc/mde-sync/config.toml)\" = 'root:mde-sync 640' ] &&
           systemctl is-active --quiet mde-sync && [ \"\$(systemctl show -p MainPID --value mde-sync)\" != $MAIN_BEFORE ]"

echo "== stop"
T0=$(date +%s%N)
check "sudo systemctl stop mde-sync exits 0" sh_ct 'sudo systemctl stop mde-sync'
MS=$((($(date +%s%N) - T0) / 1000000))
[ "$MS" -le 2000 ] && pass "stop took $MS ms (<= 2000)" || fail "stop took $MS ms (> 2000)"
check "the daemon exited 0 (Result=success)" \
    sh_ct '[ "$(systemctl show -p Result --value mde-sync)" = success ] && [ "$(systemctl show -p ExecMainStatus --value mde-sync)" = 0 ]'

echo "== watchdog"
# A test-only drop-in: a short watchdog and restart delay so the check takes seconds, not minutes.
mkdir -p "$ROOT/etc/systemd/system/mde-sync.service.d"
printf '[Service]\nWatchdogSec=4s\nRestartSec=1s\nTimeoutAbortSec=5s\n' >"$ROOT/etc/systemd/system/mde-sync.service.d/ci-watchdog.conf"
ct systemctl daemon-reload
check "the service starts again" sh_ct 'systemctl start mde-sync'
PID_STOPPED="$(show MainPID)"
[ "${PID_STOPPED:-0}" -gt 1 ] || die "no main process to stop (MainPID=$PID_STOPPED)"
ct /bin/kill -STOP "$PID_STOPPED"
wait_ct 30 "p=\$(systemctl show -p MainPID --value mde-sync); [ \"\$p\" != 0 ] && [ \"\$p\" != $PID_STOPPED ] && systemctl is-active --quiet mde-sync" &&
    pass "a SIGSTOPped daemon is killed by the watchdog and restarted" ||
    fail "a SIGSTOPped daemon is killed by the watchdog and restarted"
check "the journal says the watchdog fired" sh_ct 'journalctl -u mde-sync -o cat | grep -qi "watchdog timeout"'
rm -f "$ROOT/etc/systemd/system/mde-sync.service.d/ci-watchdog.conf"
ct systemctl daemon-reload
ct systemctl stop mde-sync

echo "== configuration error: exit 78, every problem once, no restart loop"
cp "$ROOT/etc/mde-sync/config.toml" "$RUN/config.good"
sed -i -e 's/^page_size = .*/page_size = 0/' -e 's/^\[sync\]$/[sync]\npage_sise = 10/' "$ROOT/etc/mde-sync/config.toml"
ct systemctl reset-failed mde-sync >/dev/null 2>&1 || true
CURSOR="$(ct journalctl -u mde-sync -n 0 --show-cursor -q | sed -n 's/^-- cursor: //p')"
sh_ct 'systemctl start mde-sync' >/dev/null 2>&1 && fail "start with a broken config fails" || pass "start with a broken config fails"
sleep 3
check "exit status 78, failed, not restarted" \
    sh_ct '[ "$(systemctl show -p ExecMainStatus --value mde-sync)" = 78 ] && [ "$(systemctl show -p NRestarts --value mde-sync)" = 0 ] &&
           [ "$(systemctl show -p ActiveState --value mde-sync)" = failed ]'
sh_ct "journalctl -u mde-sync --after-cursor='$CURSOR' -o json" >"$RUN/config-error.json"
check "both problems (an unknown key does not hide the other) are logged once each, as JSON at priority err" \
    sh_ct "journalctl -u mde-sync --after-cursor='$CURSOR' -o json | jq -e -s '
        [ .[] | select(.MESSAGE | type == \"string\" and startswith(\"{\")) | {p: .PRIORITY, m: (.MESSAGE | fromjson)}
          | select(.m.message == \"configuration problem\") ] as \$p
        | (\$p | length) == 2 and all(\$p[]; .p == \"3\" and .m.level == \"ERROR\")
        and ([\$p[].m.key] | sort) == [\"sync.page_sise\", \"sync.page_size\"]
        and (\$p | map(.m.error) | all(contains(\"\`\`\") | not))' >/dev/null"
cp "$RUN/config.good" "$ROOT/etc/mde-sync/config.toml"

echo "== missing credential: exit 78 with the fix, no 243/CREDENTIALS loop"
mv "$ROOT/etc/mde-sync/client-secret" "$RUN/client-secret.saved"
ct systemctl reset-failed mde-sync >/dev/null 2>&1 || true
CURSOR="$(ct journalctl -u mde-sync -n 0 --show-cursor -q | sed -n 's/^-- cursor: //p')"
sh_ct 'systemctl start mde-sync' >/dev/null 2>&1 && fail "start without the secret fails" || pass "start without the secret fails"
sleep 3
check "exit status 78 (not 243/CREDENTIALS), failed, not restarted" \
    sh_ct '[ "$(systemctl show -p ExecMainStatus --value mde-sync)" = 78 ] && [ "$(systemctl show -p NRestarts --value mde-sync)" = 0 ] &&
           [ "$(systemctl show -p ActiveState --value mde-sync)" = failed ]'
check "the journal names the secret's file at priority err" \
    sh_ct "journalctl -u mde-sync --after-cursor='$CURSOR' -p err -o cat | grep '\"key\":\"app.client_secret\"' | grep -q /etc/mde-sync/client-secret"
mv "$RUN/client-secret.saved" "$ROOT/etc/mde-sync/client-secret"
ct systemctl reset-failed mde-sync >/dev/null 2>&1 || true
check "with the secret back the service starts" sh_ct 'systemctl start mde-sync && systemctl is-active --quiet mde-sync'

echo "== README: the secret encrypted at rest"
printf '[Service]\nLoadCredential=\nLoadCredentialEncrypted=client-secret:/etc/mde-sync/client-secret.cred\n' >"$ROOT/srv/ci/override.conf"
check "sudo systemd-creds encrypt --name=client-secret /etc/mde-sync/client-secret /etc/mde-sync/client-secret.cred" \
    sh_ct 'sudo systemd-creds encrypt --name=client-secret /etc/mde-sync/client-secret /etc/mde-sync/client-secret.cred'
check "sudo shred -u /etc/mde-sync/client-secret" sh_ct 'sudo shred -u /etc/mde-sync/client-secret && [ ! -e /etc/mde-sync/client-secret ]'
# systemctl edit wants a terminal: `script` gives it one; SYSTEMD_EDITOR "types" the drop-in.
check "sudo systemctl edit mde-sync (the drop-in above)" \
    sh_ct 'script -qec "sudo SYSTEMD_EDITOR=\"cp /srv/ci/override.conf\" systemctl edit mde-sync" /dev/null >/dev/null &&
           systemctl cat mde-sync | grep -q "^LoadCredentialEncrypted=client-secret:/etc/mde-sync/client-secret.cred$"'
check "sudo systemctl restart mde-sync: running on the encrypted secret" \
    sh_ct "sudo systemctl restart mde-sync && systemctl is-active --quiet mde-sync"
wait_ct 30 "journalctl -u mde-sync -o cat --since '-20s' | grep -q '\"tenant synced\"'" &&
    pass "tenants sync with the encrypted secret" || fail "tenants sync with the encrypted secret"

echo "== sandbox"
EXPOSURE="$(ct systemd-analyze security --no-pager mde-sync | sed -n 's/.*Overall exposure level for mde-sync.service: \([0-9.]*\).*/\1/p')"
awk -v e="$EXPOSURE" 'BEGIN { exit !(e != "" && e + 0 <= 2.0) }' &&
    pass "systemd-analyze security mde-sync: $EXPOSURE (<= 2.0)" ||
    fail "systemd-analyze security mde-sync: '$EXPOSURE' (want <= 2.0)"
check "the unit caps memory (MemoryMax=1G, MemoryHigh=768M)" \
    sh_ct 'systemctl show -p MemoryMax --value mde-sync | grep -qx 1073741824 &&
           systemctl show -p MemoryHigh --value mde-sync | grep -qx 805306368'

echo "== remove and purge"
check "sudo apt remove -y mde-sync stops the service and keeps configuration, data and user" \
    sh_ct 'sudo apt remove -y mde-sync >/dev/null 2>&1 && ! systemctl is-active --quiet mde-sync && [ ! -e /usr/bin/mde-sync ] &&
           [ -f /etc/mde-sync/config.toml ] && [ -f /etc/mde-sync/client-secret.cred ] && [ -f /var/lib/mde-sync/mde-sync.db ] && getent passwd mde-sync >/dev/null'
check "sudo apt purge -y mde-sync removes configuration and data, keeps the user" \
    sh_ct 'sudo apt purge -y mde-sync >/dev/null 2>&1 && [ ! -e /etc/mde-sync ] && [ ! -e /var/lib/mde-sync ] && getent passwd mde-sync >/dev/null &&
           ! systemctl cat mde-sync >/dev/null 2>&1'

journal_dump
echo "== systemd test finished in $((SECONDS - STARTED)) s"
echo "systemd: $((CHECKS - FAILURES)) passed, $FAILURES failed"
[ "$FAILURES" = 0 ]
