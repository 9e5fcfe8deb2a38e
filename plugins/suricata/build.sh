#!/usr/bin/env bash
# Builds the packet-ipc capture plugin (packet-ipc.so) for the Suricata installed from Debian
# bookworm-backports, against a configured source tree of exactly that version.
#
#   plugins/suricata/build.sh [CACHE_DIR]
#
# Steps (each skipped when already done; the configured tree is cached, so a second run takes ~1 s):
#   1. bookworm-backports in apt's sources, both deb and deb-src (added only if missing)
#   2. suricata installed from that suite
#   3. `apt-get source suricata=<installed version>`: the source of the same version as the binary
#   4. `apt-get build-dep suricata=<version>`: the headers configure and the plugin need
#   5. configure with Debian's flags: debian/rules when the source package provides it, else flags
#      reconstructed from `suricata --build-info`; the resulting feature summary is checked against the binary's
#   6. compile the plugin (Makefile) with `packet-ipc config --cflags --libs`
# Prints the path of the built plugin on stdout (progress and timings go to stderr).
#
# Environment: SURICATA_SUITE (default bookworm-backports), PACKET_IPC (the packet-ipc command, default: found
# on PATH), SURICATA_ALLOW_MISMATCH=1 (continue when the configured features differ from the binary's).
# Needs root for apt (uses sudo when not root). Cache: CACHE_DIR, else $PACKET_IPC_SURICATA_CACHE, else
# ${XDG_CACHE_HOME:-$HOME/.cache}/packet-ipc.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_ROOT=${1:-${PACKET_IPC_SURICATA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/packet-ipc}}
SUITE=${SURICATA_SUITE:-bookworm-backports}
export DEBIAN_FRONTEND=noninteractive
START=$(date +%s.%N)
STEP_START=$START

elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
log() { printf '[suricata-plugin %6ss] %s\n' "$(elapsed "$START")" "$*" >&2; }
step_done() { log "  done in $(elapsed "$STEP_START") s"; STEP_START=$(date +%s.%N); }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }

SUDO=
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "not root and no sudo: apt steps need root"
    SUDO=sudo
fi
APT_GET() { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -q -o Dpkg::Use-Pty=0 "$@"; }

PACKET_IPC=${PACKET_IPC:-$(command -v packet-ipc || true)}
[ -n "$PACKET_IPC" ] || die "the packet-ipc command is not on PATH (pip install packet-ipc, or set PACKET_IPC=...)"
"$PACKET_IPC" config --cflags --libs >/dev/null || die "'$PACKET_IPC config --cflags --libs' failed"

# ---- 1. apt sources -------------------------------------------------------------------------------------
log "1/6 apt sources: $SUITE (deb + deb-src)"
targets=$(apt-get indextargets --format '$(CREATED_BY) $(RELEASE)' 2>/dev/null | sort -u || true)
missing=()
grep -qx "Packages $SUITE" <<<"$targets" || missing+=(deb)
grep -qx "Sources $SUITE" <<<"$targets" || missing+=(deb-src)
need_update=0
if [ ${#missing[@]} -gt 0 ]; then
    # shellcheck disable=SC1091
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [ "$SUITE" != bookworm-backports ] || [ "$codename" = bookworm ] ||
        die "$SUITE is for Debian 12 (bookworm); this is '${codename:-unknown}': set SURICATA_SUITE"
    list=/etc/apt/sources.list.d/packet-ipc-$SUITE.sources
    log "  adding ${missing[*]} for $SUITE in $list"
    printf 'Types: %s\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "${missing[*]}" "$SUITE" | $SUDO tee "$list" >/dev/null
    need_update=1
fi
# an index never downloaded (or stale): update once
if [ $need_update = 0 ] && ! grep -q "$SUITE/main .*Sources" <<<"$(apt-cache madison suricata 2>/dev/null)"; then
    need_update=1
fi
if [ $need_update = 1 ]; then
    APT_GET update >&2
fi
step_done

# ---- 2. suricata from the suite ---------------------------------------------------------------------------
candidate=$(apt-cache madison suricata | awk -F' [|] ' -v s="$SUITE/main" '$3 ~ s && $3 ~ /Packages/ { gsub(/ /, "", $2); print $2; exit }')
[ -n "$candidate" ] || die "no suricata binary package in $SUITE"
installed=$(dpkg-query -W -f='${db:Status-Abbrev} ${Version}' suricata 2>/dev/null | awk '$1 == "ii" { print $2 }' || true)
log "2/6 suricata: installed '${installed:-none}', $SUITE has $candidate"
if [ "$installed" != "$candidate" ]; then
    APT_GET install -y --no-install-recommends -t "$SUITE" "suricata=$candidate" >&2
    installed=$(dpkg-query -W -f='${Version}' suricata)
fi
VERSION=$installed                   # e.g. 1:7.0.10-1~bpo12+1
UPSTREAM=${VERSION#*:}; UPSTREAM=${UPSTREAM%-*}   # 7.0.10
# (captured first: `cmd | grep -q` under pipefail fails when grep exits early and cmd gets SIGPIPE)
sv=$(suricata -V); BUILD_INFO=$(suricata --build-info)
grep -q "version $UPSTREAM " <<<"$sv" || die "suricata -V does not report $UPSTREAM: $sv"
grep -Eq 'Plugin support.*: *yes' <<<"$BUILD_INFO" || die "this suricata was built without plugin support"
case "$UPSTREAM" in 7.*) ;; *) die "the plugin is written for Suricata 7.0's plugin API, not $UPSTREAM" ;; esac
step_done

WORK=$CACHE_ROOT/suricata-${VERSION//:/_}
TREE=$WORK/suricata-$UPSTREAM
STAMP=$WORK/configured.stamp
mkdir -p "$WORK"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$VERSION" ] && [ -f "$TREE/src/autoconf.h" ]; then
    log "3-5/6 configured tree cached: $TREE"
else
    rm -f "$STAMP"
    # ---- 3. the source of the same version ---------------------------------------------------------------
    log "3/6 apt-get source suricata=$VERSION"
    DL=$WORK/download
    mkdir -p "$DL"
    # as root apt fetches unsandboxed (a warning); a missing .dsc/.debian.tar (seen on some mirrors) makes
    # apt-get fail after fetching the upstream tarball: what we have is checked below
    (cd "$DL" && APT_GET source --download-only "suricata=$VERSION" >&2) || log "  apt-get source reported errors; checking what was fetched"
    dsc=$(ls "$DL"/suricata_*.dsc 2>/dev/null | head -1 || true)
    rm -rf "$TREE"
    if [ -n "$dsc" ] && [ -n "$(ls "$DL"/suricata_*.debian.tar.* 2>/dev/null)" ]; then
        dsc_version=$(awk '/^Version:/ { print $2; exit }' "$dsc")
        [ "$dsc_version" = "$VERSION" ] || die "source package is $dsc_version, installed binary is $VERSION"
        command -v dpkg-source >/dev/null || APT_GET install -y --no-install-recommends dpkg-dev >&2
        dpkg-source -x "$dsc" "$TREE" >&2
        SOURCE_KIND=debian
    else
        orig=$(ls "$DL"/suricata_"$UPSTREAM".orig.tar.* 2>/dev/null | head -1 || true)
        [ -n "$orig" ] || die "apt-get source fetched neither the source package nor suricata_$UPSTREAM.orig.tar.*"
        log "  the Debian packaging (.dsc, .debian.tar) is not downloadable: using the upstream tarball of the"
        log "  same version ($(basename "$orig"), checked by apt against the signed Sources index)"
        tar -xf "$orig" -C "$WORK"
        SOURCE_KIND=orig
    fi
    tree_version=$(sed -n 's/^ *AC_INIT(\[suricata\], *\[\([^]]*\)\].*/\1/p' "$TREE/configure.ac" | head -1)
    [ "$tree_version" = "$UPSTREAM" ] || die "source tree is Suricata '$tree_version', binary is $UPSTREAM"
    step_done

    # ---- 4. build dependencies ---------------------------------------------------------------------------
    log "4/6 apt-get build-dep suricata=$VERSION"
    APT_GET build-dep -y -t "$SUITE" "suricata=$VERSION" >&2
    step_done

    # ---- 5. configure with Debian's flags ----------------------------------------------------------------
    cd "$TREE"
    if [ "$SOURCE_KIND" = debian ] && [ -f debian/rules ]; then
        log "5/6 configure: Debian's own flags (debian/rules)"
        if grep -q '^override_dh_auto_configure' debian/rules; then
            debian/rules override_dh_auto_configure >"$WORK/configure.log" 2>&1 || { tail -30 "$WORK/configure.log" >&2; die "configure failed"; }
        else
            dh_auto_configure >"$WORK/configure.log" 2>&1 || { tail -30 "$WORK/configure.log" >&2; die "configure failed"; }
        fi
    else
        log "5/6 configure: flags reconstructed from 'suricata --build-info' (debian/rules unavailable)"
        has() { grep -Eq "^ *$1: *yes" <<<"$BUILD_INFO"; }
        flags=(--build="$(dpkg-architecture -qDEB_BUILD_GNU_TYPE)" --prefix=/usr --sysconfdir=/etc --localstatedir=/var
               --libdir="/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH)" --runstatedir=/run
               --disable-maintainer-mode --disable-dependency-tracking --disable-silent-rules
               --disable-suricata-update)
        has 'NFQueue support' && flags+=(--enable-nfqueue)
        has 'NFLOG support' && flags+=(--enable-nflog)
        has 'DPDK support' && flags+=(--enable-dpdk)
        has 'eBPF support' && flags+=(--enable-ebpf)
        has 'PF_RING support' && flags+=(--enable-pfring)
        has 'Netmap support' && flags+=(--enable-netmap)
        has 'IPFW support' && flags+=(--enable-ipfw)
        has 'DAG enabled' && flags+=(--enable-dag)
        has 'Napatech enabled' && flags+=(--enable-napatech)
        has 'libluajit' && flags+=(--enable-luajit)
        has 'LUA support' && ! has 'libluajit' && flags+=(--enable-lua)
        has 'GeoIP2 support' && flags+=(--enable-geoip)
        has 'hiredis support' && flags+=(--enable-hiredis)
        has 'Non-bundled htp' && flags+=(--enable-non-bundled-htp)
        has 'Python support' && flags+=(--enable-python)
        has 'GCC Protect enabled' && flags+=(--enable-gccprotect)
        has 'GCC march native enabled' || flags+=(--disable-gccmarch-native)
        has 'Position Independent Executable enabled' && flags+=(--enable-pie)
        has 'Profiling enabled' && flags+=(--enable-profiling)
        has 'Profiling locks enabled' && flags+=(--enable-profiling-locks)
        has 'Profiling rules enabled' && flags+=(--enable-profiling-rules)
        has 'Unit tests enabled' && flags+=(--enable-unittests)
        has 'Debug output enabled' && flags+=(--enable-debug)
        has 'Debug validation enabled' && flags+=(--enable-debug-validation)
        [ -d /usr/include/nspr ] && flags+=(--with-libnspr-includes=/usr/include/nspr)
        [ -d /usr/include/nss ] && flags+=(--with-libnss-includes=/usr/include/nss)
        printf '%s\n' "${flags[@]}" >"$WORK/configure.flags"
        (eval "$(dpkg-buildflags --export=sh)"; export CFLAGS="$CFLAGS -fPIC";
         ./configure "${flags[@]}") >"$WORK/configure.log" 2>&1 || { tail -30 "$WORK/configure.log" >&2; die "configure failed (log: $WORK/configure.log)"; }
    fi
    # the configured feature set must be the binary's: it decides structure layouts (Packet, LiveDevice...)
    summary() { sed -n '/^Suricata Configuration:/,/^Generic build parameters:/p' |
        grep -E ':[[:space:]]+(yes|no)\b' | grep -Ev 'Rust|Cargo|Python|suricatactl|suricatasc|suricata-update|Coccinelle' |
        sed -E 's/[[:space:]]+/ /g; s/ $//' | sort; }
    if ! diff <(summary <<<"$BUILD_INFO") <(summary <"$WORK/configure.log") >"$WORK/features.diff"; then
        log "  configured features differ from the installed binary's (< binary, > tree):"
        sed 's/^/    /' "$WORK/features.diff" >&2
        [ "${SURICATA_ALLOW_MISMATCH:-0}" = 1 ] || die "feature mismatch (structure layouts may differ); SURICATA_ALLOW_MISMATCH=1 to continue"
    else
        log "  configured features match 'suricata --build-info'"
    fi
    echo "$VERSION" >"$STAMP"
    step_done
fi

# ---- 6. the plugin ---------------------------------------------------------------------------------------
log "6/6 compile packet-ipc.so (packet-ipc config: $PACKET_IPC)"
build() { make -s -B -C "$HERE" SURICATA_SRC="$TREE" OUT="$WORK" PACKET_IPC_CONFIG="$PACKET_IPC config" >&2; }
if ! build; then
    # a cached tree on a machine without the build dependencies (their headers are needed too)
    log "  compile failed: installing the build dependencies and retrying"
    APT_GET build-dep -y -t "$SUITE" "suricata=$VERSION" >&2
    build
fi
syms=$(nm -D "$WORK/packet-ipc.so"); libs=$(ldd "$WORK/packet-ipc.so")
grep -q ' T SCPluginRegister$' <<<"$syms" || die "packet-ipc.so does not export SCPluginRegister"
grep -q 'libpacketipc.*=> /' <<<"$libs" || die "packet-ipc.so: libpacketipc not resolvable: $libs"
step_done
log "built $WORK/packet-ipc.so for suricata $VERSION in $(elapsed "$START") s"
echo "$WORK/packet-ipc.so"
