# Sourced by tests/systemd/run.sh: the cached Debian bookworm root file system the service boots in.
# Built once with `debootstrap --variant=minbase` from the Debian mirror this machine's apt uses,
# and kept outside the repository (MDE_SYNC_CI_CACHE, default /var/cache/mde-sync-ci).

ROOTFS_PACKAGES="systemd,systemd-sysv,dbus,sudo,curl,jq,procps,ca-certificates"
CACHE_DIR="${MDE_SYNC_CI_CACHE:-/var/cache/mde-sync-ci}"
# Bump when ensure_rootfs changes what it puts into the root file system: a new cache is built.
ROOTFS_RECIPE=2
ROOTFS="$CACHE_DIR/bookworm-minbase-$(printf '%s;recipe=%s' "$ROOTFS_PACKAGES" "$ROOTFS_RECIPE" | sha256sum | cut -c1-12)"

# The first Debian archive URI for bookworm in the apt sources (one-line or deb822 format).
debian_mirror() {
    local files=() f
    [ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
    for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && files+=("$f")
    done
    [ "${#files[@]}" -gt 0 ] || return 1
    awk '
        # one-line format: deb [options] URI SUITE COMPONENTS...
        /^[[:space:]]*deb[[:space:]]/ {
            n = 2
            if ($2 ~ /^\[/) { while (n <= NF && $n !~ /\]$/) n++; n++ }
            if ($(n + 1) == "bookworm") { print $n; exit }
            next
        }
        # deb822 format: a stanza with Types: deb, URIs: and Suites: containing bookworm
        /^[[:space:]]*$/ { if (deb && uri != "" && suites ~ /(^|[[:space:]])bookworm([[:space:]]|$)/) { print uri; exit } deb = 0; uri = ""; suites = ""; next }
        tolower($1) == "types:" { deb = ($0 ~ /[[:space:]]deb([[:space:]]|$)/) }
        tolower($1) == "uris:" { uri = $2 }
        tolower($1) == "suites:" { suites = $0 }
        END { if (deb && uri != "" && suites ~ /(^|[[:space:]])bookworm([[:space:]]|$)/) print uri }
    ' "${files[@]}" | head -n 1
}

ensure_rootfs() {
    if [ -f "$ROOTFS/.mde-sync-ci-complete" ]; then
        echo "== root file system cached at $ROOTFS"
        return 0
    fi
    local mirror
    mirror="$(debian_mirror)" || true
    if [ -z "$mirror" ]; then
        echo "FAIL: no Debian bookworm mirror in /etc/apt/sources.list or /etc/apt/sources.list.d/: cannot build the root file system" >&2
        return 1
    fi
    echo "== building the root file system from $mirror into $ROOTFS (once; cached)"
    if ! curl -fsS --max-time 30 -o /dev/null "${mirror%/}/dists/bookworm/Release"; then
        echo "FAIL: the Debian mirror $mirror (from the apt sources) cannot be reached: the systemd test needs it once to build its root file system" >&2
        return 1
    fi
    mkdir -p "$CACHE_DIR"
    rm -rf "$ROOTFS.tmp"
    if ! debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" bookworm "$ROOTFS.tmp" "$mirror" \
        >"$CACHE_DIR/debootstrap.log" 2>&1; then
        tail -n 30 "$CACHE_DIR/debootstrap.log" >&2
        echo "FAIL: debootstrap from $mirror failed (log: $CACHE_DIR/debootstrap.log)" >&2
        rm -rf "$ROOTFS.tmp"
        return 1
    fi
    echo mde-sync-ci >"$ROOTFS.tmp/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 mde-sync-ci\n::1 localhost ip6-localhost ip6-loopback\n' >"$ROOTFS.tmp/etc/hosts"
    # No console login in a container booted without a terminal.
    ln -sf /dev/null "$ROOTFS.tmp/etc/systemd/system/console-getty.service"
    ln -sf /dev/null "$ROOTFS.tmp/etc/systemd/system/getty@.service"
    rm -rf "$ROOTFS.tmp/var/cache/apt/archives/"*.deb
    touch "$ROOTFS.tmp/.mde-sync-ci-complete"
    mv "$ROOTFS.tmp" "$ROOTFS"
}
