#!/bin/sh
# flotilla-agent installer: installs, upgrades in place, or removes the Flotilla agent on a
# systemd host.
#
#   curl -fsSL --proto '=https' https://relay.example.com/install.sh | sh -s -- --token <TOKEN>
#
# A relay serves this script at /install.sh with its address and its public key filled in. Run
# from a checkout, pass them yourself: --relay URL --fingerprint SHA256:... --public-key BASE64.
#
# What it does, after checking everything it needs before changing anything (root, systemd,
# curl or wget, the CPU architecture, an executable temporary directory, the relay and a build
# for this architecture there):
#   1. downloads the agent's signed release manifest, its signature and the binary from the
#      relay, checks the relay key against its fingerprint, the manifest's Ed25519 signature
#      against that key (openssl 3), the binary's size and SHA-256, and runs `--version`;
#   2. installs /usr/local/bin/flotilla-agent, the units flotilla-agent.service,
#      flotilla-agent-updater.service and flotilla-agent-updater.path in /etc/systemd/system,
#      /etc/flotilla/relay.pub (the relay key the root updater trusts) and
#      /etc/flotilla/agent.toml, and the system user flotilla-agent (in the docker group when
#      that group exists);
#   3. enrolls the agent with the token (handed over in the environment, never on a command
#      line, never printed, never written to a file) unless it is enrolled already;
#   4. enables and starts flotilla-agent.service and flotilla-agent-updater.path.
# Running it again is safe: what is identical is left alone (no restart), what changed is
# replaced (and the agent restarted), a locally edited agent.toml and the drop-ins in
# /etc/systemd/system/flotilla-agent.service.d/ are never touched. It also writes
# /usr/local/bin/flotilla-agent-uninstall, which is this script defaulting to --uninstall.
#
# POSIX sh, clean under `shellcheck -s sh`. Everything runs from `main` on the last line, so a
# truncated download runs nothing.

set -eu

# Filled in by the relay that serves this script (still starting with @@ when it did not).
RELAY_URL_DEFAULT='@@RELAY_URL@@'
RELAY_FINGERPRINT_DEFAULT='@@RELAY_FINGERPRINT@@'
RELAY_PUBLIC_KEY_DEFAULT='@@RELAY_PUBLIC_KEY@@'

# A line only this script holds: how a copy of it is recognised (the uninstaller is one).
INSTALLER_MARKER='# flotilla-agent installer: installs, upgrades in place, or removes'

INSTALL_DIR=/usr/local/bin
INSTALL_BIN=$INSTALL_DIR/flotilla-agent
UNINSTALLER=$INSTALL_DIR/flotilla-agent-uninstall
UNIT_DIR=/etc/systemd/system
DROPIN_DIR=$UNIT_DIR/flotilla-agent.service.d
AGENT_UNIT=flotilla-agent.service
UPDATER_UNIT=flotilla-agent-updater.service
UPDATER_PATH_UNIT=flotilla-agent-updater.path
UNITS="$AGENT_UNIT $UPDATER_UNIT $UPDATER_PATH_UNIT"
CONFIG_DIR=/etc/flotilla
CONFIG_FILE=$CONFIG_DIR/agent.toml
RELAY_PUB=$CONFIG_DIR/relay.pub
# Bind-mounted over /etc/nsswitch.conf for the agent's unit alone (BindReadOnlyPaths=): release
# builds link glibc statically, and static glibc crashes when it loads NSS modules of another
# glibc version (myhostname, resolve, mdns...); with "hosts: files dns" it loads none.
NSSWITCH=$CONFIG_DIR/nsswitch.conf
STATE_DIR=/var/lib/flotilla
LOGS_DIR=/var/log/flotilla-agent
# The root updater's own directory (the previous binary, kept for a revert).
UPDATER_DIR=/var/lib/flotilla-updater
SERVICE_USER=flotilla-agent
# Where the packaged units expect the binary; rewritten to INSTALL_BIN.
PACKAGED_DIR=/usr/bin
PACKAGED_BIN=$PACKAGED_DIR/flotilla-agent
# Domain prefix of a release manifest's signed bytes (followed by one NUL byte).
RELEASE_DOMAIN=flotilla/release/v1
# DER SubjectPublicKeyInfo of an Ed25519 key, up to the 32 raw key bytes.
ED25519_SPKI_PREFIX=302a300506032b6570032100
# The largest agent binary a relay publishes (64 MiB).
MAX_RELEASE_BYTES=67108864

# Settings (from the command line; see usage).
MODE=install
DRY_RUN=0
PURGE=0
SKIP_SIGNATURE_CHECK=0
ALLOW_INSECURE_HTTP=0
TOKEN=
LABELS=
AGENT_NAME=
VERSION=latest
RELAY_URL=
RELAY_FINGERPRINT=
RELAY_PUBLIC_KEY=
ORIGINAL_ARGS=

# Found by the checks.
ARCH=
DOWNLOADER=
WORK_DIR=
HTTP_CODE=
PROTO=
M_NAME=
M_VERSION=
M_ARCH=
M_SIZE=
M_SHA256=

# What changed in this run.
AGENT_CHANGED=
PATH_UNIT_CHANGED=0
UNITS_CHANGED=0
INSTALLED=0

# === output ===

say() {
    printf 'flotilla-install: %s\n' "$*"
}

warn() {
    printf 'flotilla-install: warning: %s\n' "$*" >&2
}

die() {
    printf 'flotilla-install: error: %s\n' "$*" >&2
    exit 1
}

# announce WHAT: prints what is about to change. In a dry run, prints "would WHAT" and returns
# 1, so `if announce ...; then CHANGE; fi` changes nothing.
announce() {
    if [ "$DRY_RUN" = 1 ]; then
        say "dry run: would $*"
        return 1
    fi
    say "$*"
}

# note_change WHY: the agent must be (re)started for WHY to take effect.
note_change() {
    if [ -z "$AGENT_CHANGED" ]; then
        AGENT_CHANGED=$1
    else
        AGENT_CHANGED="$AGENT_CHANGED, $1"
    fi
}

usage() {
    cat <<'EOF'
Install the Flotilla agent as a systemd service (or remove it).

Usage:
  curl -fsSL --proto '=https' https://RELAY/install.sh | sh -s -- --token TOKEN [OPTIONS]
  sh install.sh --relay URL --fingerprint SHA256:... --public-key BASE64 --token TOKEN [OPTIONS]
  sh install.sh --uninstall [--purge]       (or: flotilla-agent-uninstall [--purge])

Options:
  --token TOKEN          enrollment token (`flotilla token create`); or set
                         FLOTILLA_ENROLL_TOKEN. Needed for the first install only.
  --labels k=v,k2=v2     labels the agent asks for at enrollment
  --name NAME            the agent's display name (default: the hostname)
  --version V            agent version to install (default: latest)
  --relay URL            the relay's base URL (default: the relay that served this script)
  --fingerprint FP       the relay key's fingerprint, SHA256:... (default: from the relay)
  --public-key B64       the relay's Ed25519 public key, base64 (default: from the relay)
  --allow-insecure-http  allow a plain http:// relay that is not on this host (the token and
                         the agent's traffic then travel unencrypted)
  --skip-signature-check install without checking the release signature when openssl 3 is
                         missing (HTTPS and the SHA-256 from the manifest remain)
  --dry-run              check everything and print what would be done; change nothing
  --uninstall            stop and remove the agent: binary, units, uninstaller, agent.toml and
                         relay.pub; keeps /var/lib/flotilla (state, backups) and the user
  --purge                with --uninstall: also remove /var/lib/flotilla, the logs and the user
  -h, --help             this text
EOF
}

# === arguments ===

# quote WORD: WORD as the shell would need it to read it back.
quote() {
    case $1 in
        '' | *[!A-Za-z0-9_./:=,@%+-]*)
            printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"
            ;;
        *) printf '%s' "$1" ;;
    esac
}

# remember_args ARGS...: the arguments, quoted, with the token's value replaced by <TOKEN>.
remember_args() {
    redact=0
    for arg in "$@"; do
        if [ "$redact" = 1 ]; then
            arg='<TOKEN>'
            redact=0
        fi
        case $arg in
            --token) redact=1 ;;
            --token=*) arg='--token=<TOKEN>' ;;
        esac
        ORIGINAL_ARGS="$ORIGINAL_ARGS $(quote "$arg")"
    done
}

parse_args() {
    case ${0##*/} in
        flotilla-agent-uninstall) MODE=uninstall ;;
    esac
    while [ $# -gt 0 ]; do
        opt=$1
        shift
        value=
        inline=0
        case $opt in
            --*=*)
                value=${opt#*=}
                opt=${opt%%=*}
                inline=1
                ;;
        esac
        case $opt in
            --token | --labels | --name | --version | --relay | --fingerprint | --public-key)
                if [ "$inline" = 0 ]; then
                    [ $# -gt 0 ] || die "$opt needs a value"
                    value=$1
                    shift
                fi
                ;;
            --*) [ "$inline" = 0 ] || die "$opt takes no value" ;;
        esac
        case $opt in
            --token) TOKEN=$value ;;
            --labels) LABELS=$value ;;
            --name) AGENT_NAME=$value ;;
            --version) VERSION=$value ;;
            --relay) RELAY_URL=$value ;;
            --fingerprint) RELAY_FINGERPRINT=$value ;;
            --public-key) RELAY_PUBLIC_KEY=$value ;;
            --allow-insecure-http) ALLOW_INSECURE_HTTP=1 ;;
            --skip-signature-check) SKIP_SIGNATURE_CHECK=1 ;;
            --dry-run) DRY_RUN=1 ;;
            --uninstall) MODE=uninstall ;;
            --purge)
                PURGE=1
                MODE=uninstall
                ;;
            -h | --help)
                usage
                exit 0
                ;;
            --*) die "unknown option $opt (see --help)" ;;
            # Not echoed: a value given without its option may be the token.
            *) die "unexpected argument (every value follows its option, e.g. --token TOKEN; see --help)" ;;
        esac
    done
    if [ -z "$TOKEN" ]; then
        TOKEN=${FLOTILLA_ENROLL_TOKEN:-}
    fi
    # Only the enrollment gets the token (see enroll), not every program this script runs.
    unset FLOTILLA_ENROLL_TOKEN
}

# unfilled VALUE: true when VALUE is a placeholder the relay did not replace.
unfilled() {
    case $1 in
        @@*) return 0 ;;
        *) return 1 ;;
    esac
}

validate_args() {
    if [ -z "$RELAY_URL" ] && ! unfilled "$RELAY_URL_DEFAULT"; then
        RELAY_URL=$RELAY_URL_DEFAULT
    fi
    if [ -z "$RELAY_FINGERPRINT" ] && ! unfilled "$RELAY_FINGERPRINT_DEFAULT"; then
        RELAY_FINGERPRINT=$RELAY_FINGERPRINT_DEFAULT
    fi
    if [ -z "$RELAY_PUBLIC_KEY" ] && ! unfilled "$RELAY_PUBLIC_KEY_DEFAULT"; then
        RELAY_PUBLIC_KEY=$RELAY_PUBLIC_KEY_DEFAULT
    fi
    [ -n "$RELAY_URL" ] ||
        die "--relay URL is required (this copy of install.sh was not served by a relay)"
    [ -n "$RELAY_FINGERPRINT" ] ||
        die "--fingerprint SHA256:... is required (this copy of install.sh was not served by a relay; \`flotilla-relay\` prints the fingerprint at start)"
    [ -n "$RELAY_PUBLIC_KEY" ] ||
        die "--public-key BASE64 is required (this copy of install.sh was not served by a relay)"

    RELAY_URL=${RELAY_URL%/}
    case $RELAY_URL in
        *'"'* | *\\* | *' '* | *"'"*) die "--relay: invalid URL $RELAY_URL" ;;
        https://?*) PROTO='=https' ;;
        http://?*)
            PROTO='=http,https'
            if ! is_loopback_url "$RELAY_URL" && [ "$ALLOW_INSECURE_HTTP" = 0 ]; then
                die "refusing plain http:// to $RELAY_URL, which is not on this host: the token and the agent's traffic would travel unencrypted. Use https://, or pass --allow-insecure-http"
            fi
            ;;
        *) die "--relay: expected an http:// or https:// URL, got $RELAY_URL" ;;
    esac
    case $RELAY_FINGERPRINT in
        SHA256:?*) ;;
        *) die "--fingerprint: expected SHA256:<base64>, got $RELAY_FINGERPRINT" ;;
    esac
    case $RELAY_PUBLIC_KEY in
        *[!A-Za-z0-9+/=]*) die "--public-key: not base64" ;;
    esac
    case $VERSION in
        latest) ;;
        '' | *[!0-9A-Za-z.+-]*) die "--version: invalid version $VERSION (e.g. 1.4.2 or latest)" ;;
        [0-9]*.[0-9]*.[0-9]*) ;;
        *) die "--version: invalid version $VERSION (e.g. 1.4.2 or latest)" ;;
    esac
    if [ -n "$LABELS" ]; then
        old_ifs=$IFS
        IFS=,
        for label in $LABELS; do
            case $label in
                ?*=*) ;;
                *)
                    IFS=$old_ifs
                    die "--labels: expected k=v[,k2=v2...], got $LABELS"
                    ;;
            esac
        done
        IFS=$old_ifs
    fi
}

# is_loopback_url URL: the URL's host is this host (127.x, ::1, localhost).
is_loopback_url() {
    rest=${1#*://}
    rest=${rest%%/*}
    rest=${rest##*@}
    case $rest in
        \[::1\] | \[::1\]:*) return 0 ;;
    esac
    host=${rest%%:*}
    case $host in
        localhost | 127.*) return 0 ;;
    esac
    return 1
}

# === checks ===

check_root() {
    [ "$(id -u)" -eq 0 ] && return 0
    if [ "$DRY_RUN" = 1 ]; then
        warn "not running as root: the dry run checks what it can; the real run needs root"
        return 0
    fi
    if [ -f "$0" ] && grep -qF "$INSTALLER_MARKER" "$0" 2>/dev/null; then
        how="sudo sh $(quote "$0")$ORIGINAL_ARGS"
    elif [ -n "$RELAY_URL" ]; then
        how="curl -fsSL $(quote "$RELAY_URL/install.sh") | sudo sh -s --$ORIGINAL_ARGS"
    else
        how="sudo sh install.sh$ORIGINAL_ARGS"
    fi
    die "the installer must run as root. Run it with sudo:
    $how
(sudo does not pass FLOTILLA_ENROLL_TOKEN on; use --token, or sudo --preserve-env=FLOTILLA_ENROLL_TOKEN)"
}

check_systemd() {
    command -v systemctl >/dev/null 2>&1 ||
        die "systemctl not found: the agent runs as a systemd service and this host has no systemd"
    [ -d /run/systemd/system ] ||
        die "systemd is not running on this host (no /run/systemd/system): the agent runs as a systemd service"
}

check_tools() {
    if command -v curl >/dev/null 2>&1; then
        DOWNLOADER=curl
    elif command -v wget >/dev/null 2>&1 && wget --version 2>/dev/null | grep -q 'GNU Wget'; then
        DOWNLOADER=wget
    else
        die "neither curl nor GNU wget is installed; install one (e.g. apt-get install curl)"
    fi
    for tool in uname mktemp sed grep id chmod chown mv cp rm; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (it is part of every base system)"
    done
    if ! command -v sha256sum >/dev/null 2>&1 && ! command -v openssl >/dev/null 2>&1; then
        die "neither sha256sum (coreutils) nor openssl is installed: the download cannot be checked"
    fi
    if ! command -v base64 >/dev/null 2>&1 && ! command -v openssl >/dev/null 2>&1; then
        die "neither base64 (coreutils) nor openssl is installed: the relay key cannot be checked"
    fi
    if [ "$MODE" = install ] && ! getent passwd "$SERVICE_USER" >/dev/null 2>&1; then
        command -v useradd >/dev/null 2>&1 ||
            die "useradd is missing: it creates the service user $SERVICE_USER (Debian/Ubuntu: apt-get install passwd; RHEL: shadow-utils)"
    fi
    if [ "$SKIP_SIGNATURE_CHECK" = 1 ]; then
        warn "--skip-signature-check: the release signature is NOT checked; only HTTPS and the SHA-256 in the (unverified) manifest protect the download"
        return 0
    fi
    command -v openssl >/dev/null 2>&1 ||
        die "openssl is missing: it checks the release signature. Install it (Debian/Ubuntu: apt-get install openssl; RHEL/Fedora: dnf install openssl), or pass --skip-signature-check to rely on HTTPS alone"
    openssl pkeyutl -help 2>&1 | grep -q -- '-rawin' ||
        die "$(openssl version 2>/dev/null || echo openssl) cannot check Ed25519 signatures (pkeyutl -rawin needs OpenSSL 3.0 or newer): install OpenSSL 3, or pass --skip-signature-check to rely on HTTPS alone"
}

# An upgrade the root updater is carrying out would race with replacing the binary here.
check_no_upgrade_running() {
    if systemctl is-active --quiet "$UPDATER_UNIT" 2>/dev/null ||
        [ -e "$STATE_DIR/upgrade/request.json" ] || [ -e "$UPDATER_DIR/inflight.json" ]; then
        die "an agent upgrade is in progress ($UPDATER_UNIT); run install.sh again once it has finished (systemctl status $UPDATER_UNIT)"
    fi
}

check_arch() {
    machine=$(uname -m)
    case $machine in
        x86_64 | amd64) ARCH=x86_64 ;;
        aarch64 | arm64) ARCH=aarch64 ;;
        *) die "unsupported CPU architecture $machine: Flotilla agent builds exist for x86_64 and aarch64" ;;
    esac
}

# An executable temporary directory: the downloaded binary runs `--version` from it before it is
# installed. /tmp is often mounted noexec; then a directory under /var/lib is used.
make_work_dir() {
    WORK_DIR=$(mktemp -d 2>/dev/null) || WORK_DIR=
    if [ -n "$WORK_DIR" ] && ! can_execute_in "$WORK_DIR"; then
        rm -rf "$WORK_DIR"
        WORK_DIR=
    fi
    if [ -z "$WORK_DIR" ] && [ "$(id -u)" -eq 0 ]; then
        WORK_DIR=$(mktemp -d /var/lib/flotilla-install.XXXXXX 2>/dev/null) || WORK_DIR=
        if [ -n "$WORK_DIR" ] && ! can_execute_in "$WORK_DIR"; then
            rm -rf "$WORK_DIR"
            WORK_DIR=
        fi
        if [ -n "$WORK_DIR" ]; then
            say "${TMPDIR:-/tmp} does not allow running programs (noexec): working in $WORK_DIR"
        fi
    fi
    [ -n "$WORK_DIR" ] ||
        die "no temporary directory allows running programs (${TMPDIR:-/tmp} and /var/lib are noexec or not writable): set TMPDIR to a directory that does"
    chmod 0700 "$WORK_DIR"
}

can_execute_in() {
    printf '#!/bin/sh\nexit 0\n' >"$1/exec-check" 2>/dev/null || return 1
    chmod 0700 "$1/exec-check"
    "$1/exec-check" 2>/dev/null || return 1
    rm -f "$1/exec-check"
}

cleanup() {
    if [ -n "$WORK_DIR" ]; then
        rm -rf "$WORK_DIR"
    fi
}

# === downloads ===

# http_get URL FILE: fetches URL into FILE and sets HTTP_CODE; returns 1 when no HTTP answer
# came (the reason is in $WORK_DIR/http.err).
http_get() {
    HTTP_CODE=
    if [ "$DOWNLOADER" = curl ]; then
        HTTP_CODE=$(curl --silent --show-error --location --proto "$PROTO" --proto-redir "$PROTO" \
            --connect-timeout 15 --retry 2 --max-time 600 \
            --output "$2" --write-out '%{http_code}' "$1" 2>"$WORK_DIR/http.err") || return 1
        [ "$HTTP_CODE" != 000 ] || return 1
    else
        if [ "$PROTO" = '=https' ]; then
            wget --no-verbose --server-response --content-on-error --tries=3 --timeout=15 \
                --https-only --output-document="$2" "$1" 2>"$WORK_DIR/http.err" || true
        else
            wget --no-verbose --server-response --content-on-error --tries=3 --timeout=15 \
                --output-document="$2" "$1" 2>"$WORK_DIR/http.err" || true
        fi
        HTTP_CODE=$(sed -n 's|^ *HTTP/[0-9.]* \([0-9][0-9][0-9]\).*|\1|p' "$WORK_DIR/http.err" | tail -n 1)
        [ -n "$HTTP_CODE" ] || return 1
    fi
}

# error_message FILE: the relay's JSON error message in FILE, else its first 300 bytes.
error_message() {
    message=$(sed -n 's/.*"message" *: *"\([^"]*\)".*/\1/p' "$1" 2>/dev/null | head -n 1)
    if [ -z "$message" ]; then
        message=$(head -c 300 "$1" 2>/dev/null | tr '\n' ' ')
    fi
    printf '%s' "$message"
}

# fetch URL FILE WHAT: http_get that must answer 200.
fetch() {
    if ! http_get "$1" "$2"; then
        die "cannot download $3 from $1: $(cat "$WORK_DIR/http.err" 2>/dev/null)"
    fi
    [ "$HTTP_CODE" = 200 ] ||
        die "cannot download $3: $1 answered HTTP $HTTP_CODE: $(error_message "$2")"
}

check_relay_reachable() {
    if ! http_get "$RELAY_URL/healthz" "$WORK_DIR/healthz"; then
        die "cannot reach the relay at $RELAY_URL: $(cat "$WORK_DIR/http.err" 2>/dev/null)"
    fi
    case $HTTP_CODE in
        2??) ;;
        *) die "the relay at $RELAY_URL answered HTTP $HTTP_CODE to /healthz: is this a Flotilla relay?" ;;
    esac
}

# The relay's manifest for VERSION and ARCH: also how we learn that it has a build for this host.
fetch_manifest() {
    url="$RELAY_URL/download/agent/$VERSION/$ARCH/manifest"
    if ! http_get "$url" "$WORK_DIR/manifest"; then
        die "cannot download the release manifest from $url: $(cat "$WORK_DIR/http.err" 2>/dev/null)"
    fi
    case $HTTP_CODE in
        200) ;;
        404) die "the relay has no agent build for $ARCH (version $VERSION): $(error_message "$WORK_DIR/manifest")" ;;
        410) die "the agent build $VERSION for $ARCH is marked broken on the relay: $(error_message "$WORK_DIR/manifest")" ;;
        *) die "cannot download the release manifest: $url answered HTTP $HTTP_CODE: $(error_message "$WORK_DIR/manifest")" ;;
    esac
    M_NAME=$(json_string name "$WORK_DIR/manifest")
    M_VERSION=$(json_string version "$WORK_DIR/manifest")
    M_ARCH=$(json_string arch "$WORK_DIR/manifest")
    M_SHA256=$(json_string sha256 "$WORK_DIR/manifest")
    M_SIZE=$(json_number size "$WORK_DIR/manifest")
    [ "$M_NAME" = flotilla-agent ] ||
        die "the release manifest names \"$M_NAME\", not flotilla-agent"
    [ "$M_ARCH" = "$ARCH" ] ||
        die "the release manifest is for architecture \"$M_ARCH\", not $ARCH"
    case $M_VERSION in
        '' | *[!0-9A-Za-z.+-]*) die "the release manifest holds an invalid version \"$M_VERSION\"" ;;
    esac
    if [ "$VERSION" != latest ] && [ "$M_VERSION" != "$VERSION" ]; then
        die "asked for version $VERSION, the relay's manifest is for $M_VERSION"
    fi
    case $M_SIZE in
        '' | *[!0-9]*) die "the release manifest holds no valid size" ;;
    esac
    if [ "$M_SIZE" -eq 0 ] || [ "$M_SIZE" -gt "$MAX_RELEASE_BYTES" ]; then
        die "the release manifest's size $M_SIZE is not between 1 and $MAX_RELEASE_BYTES bytes"
    fi
    case $M_SHA256 in
        *[!0-9a-f]*) die "the release manifest's sha256 is not lower-case hex" ;;
    esac
    [ "${#M_SHA256}" -eq 64 ] || die "the release manifest's sha256 is not 64 hex digits"
    fetch "$url.sig" "$WORK_DIR/manifest.sig" "the release manifest's signature"
}

# json_string KEY FILE / json_number KEY FILE: a field of the flat manifest JSON.
json_string() {
    sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\"\([^\"]*\)\".*/\1/p" "$2" | head -n 1
}

json_number() {
    sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\([0-9][0-9]*\).*/\1/p" "$2" | head -n 1
}

fetch_binary() {
    url="$RELAY_URL/download/agent/$M_VERSION/$ARCH"
    fetch "$url" "$WORK_DIR/flotilla-agent" "the agent binary $M_VERSION ($ARCH)"
    size=$(wc -c <"$WORK_DIR/flotilla-agent" | tr -d ' ')
    [ "$size" = "$M_SIZE" ] ||
        die "the downloaded binary is $size bytes, the signed manifest says $M_SIZE: refusing it"
    actual=$(sha256_of "$WORK_DIR/flotilla-agent")
    [ "$actual" = "$M_SHA256" ] ||
        die "the downloaded binary's SHA-256 is $actual, the signed manifest says $M_SHA256: refusing it"
    chmod 0755 "$WORK_DIR/flotilla-agent"
    # The smoke test: the build runs here and is the version the manifest names.
    if command -v timeout >/dev/null 2>&1; then
        reported=$(timeout 10 "$WORK_DIR/flotilla-agent" --version 2>&1) || reported="(failed: $reported)"
    else
        reported=$("$WORK_DIR/flotilla-agent" --version 2>&1) || reported="(failed: $reported)"
    fi
    [ "$reported" = "flotilla-agent $M_VERSION" ] ||
        die "the downloaded binary does not run here as flotilla-agent $M_VERSION: \`flotilla-agent --version\` printed: $reported"
    say "downloaded and verified flotilla-agent $M_VERSION ($ARCH, $M_SIZE bytes, sha256 $M_SHA256)"
}

# === cryptography ===

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d ' ' -f 1
    else
        openssl dgst -sha256 -r "$1" | cut -d ' ' -f 1
    fi
}

# base64_decode: stdin → stdout.
base64_decode() {
    if command -v openssl >/dev/null 2>&1; then
        openssl base64 -d -A
    else
        base64 -d
    fi
}

# base64_encode: stdin → stdout, one line, no newline.
base64_encode() {
    if command -v openssl >/dev/null 2>&1; then
        openssl base64 -A
    else
        base64 | tr -d '\n'
    fi
}

# hex_to_bin HEX: the bytes HEX spells, on stdout.
hex_to_bin() {
    hex=$1
    while [ -n "$hex" ]; do
        byte=${hex%"${hex#??}"}
        hex=${hex#??}
        printf '%b' "\\0$(printf '%o' "0x$byte")"
    done
}

# The public key must be 32 bytes whose SHA-256 (base64, unpadded) is the fingerprint: the
# fingerprint is what an operator compares, the key is what signatures are checked with.
check_relay_key() {
    printf '%s' "$RELAY_PUBLIC_KEY" | base64_decode >"$WORK_DIR/relay.key" 2>/dev/null ||
        die "--public-key: not valid base64"
    key_size=$(wc -c <"$WORK_DIR/relay.key" | tr -d ' ')
    [ "$key_size" = 32 ] || die "the relay public key is $key_size bytes, not 32 (Ed25519)"
    sha256_of "$WORK_DIR/relay.key" >"$WORK_DIR/relay.key.sha256"
    actual="SHA256:$(hex_to_bin "$(cat "$WORK_DIR/relay.key.sha256")" | base64_encode | tr -d '=')"
    [ "$actual" = "$RELAY_FINGERPRINT" ] ||
        die "the relay public key has fingerprint $actual, not the expected $RELAY_FINGERPRINT: refusing to trust it"
}

# Ed25519 over "flotilla/release/v1" NUL manifest, with the relay key.
verify_manifest_signature() {
    if [ "$SKIP_SIGNATURE_CHECK" = 1 ]; then
        warn "not checking the signature of the release manifest (--skip-signature-check)"
        return 0
    fi
    {
        printf '%s\000' "$RELEASE_DOMAIN"
        cat "$WORK_DIR/manifest"
    } >"$WORK_DIR/signed"
    {
        hex_to_bin "$ED25519_SPKI_PREFIX"
        cat "$WORK_DIR/relay.key"
    } >"$WORK_DIR/relay.der"
    tr -d ' \n\r' <"$WORK_DIR/manifest.sig" | base64_decode >"$WORK_DIR/manifest.sig.bin" 2>/dev/null ||
        die "the release manifest's signature is not base64"
    if ! openssl pkeyutl -verify -pubin -inkey "$WORK_DIR/relay.der" -keyform DER -rawin \
        -in "$WORK_DIR/signed" -sigfile "$WORK_DIR/manifest.sig.bin" >"$WORK_DIR/verify.out" 2>&1; then
        die "the release manifest's signature does not verify with the relay key $RELAY_FINGERPRINT: refusing the download ($(tr '\n' ' ' <"$WORK_DIR/verify.out"))"
    fi
    say "release manifest signature verified (relay key $RELAY_FINGERPRINT)"
}

# === changes ===

same_content() {
    [ -f "$1" ] && [ -f "$2" ] || return 1
    if command -v cmp >/dev/null 2>&1; then
        cmp -s "$1" "$2"
    else
        [ "$(sha256_of "$1")" = "$(sha256_of "$2")" ]
    fi
}

# install_file SRC DEST MODE OWNER:GROUP: puts SRC at DEST atomically (a temporary file in the
# same directory, then rename) unless DEST already holds the same bytes. Sets INSTALLED=1 when it
# changed (or would change) DEST.
install_file() {
    INSTALLED=0
    if same_content "$1" "$2"; then
        if [ "$DRY_RUN" = 0 ]; then
            chmod "$3" "$2"
            chown "$4" "$2"
        fi
        say "$2 is up to date"
        return 0
    fi
    INSTALLED=1
    if [ -e "$2" ]; then
        what="replace $2"
    else
        what="install $2"
    fi
    if announce "$what"; then
        staged="${2%/*}/.${2##*/}.flotilla-install.$$"
        cp "$1" "$staged"
        chmod "$3" "$staged"
        chown "$4" "$staged"
        mv -f "$staged" "$2"
    fi
}

ensure_user() {
    if getent passwd "$SERVICE_USER" >/dev/null 2>&1; then
        say "system user $SERVICE_USER exists"
    elif announce "create the system user $SERVICE_USER"; then
        nologin=/usr/sbin/nologin
        [ -x "$nologin" ] || nologin=/sbin/nologin
        [ -x "$nologin" ] || nologin=/bin/false
        useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
            --shell "$nologin" "$SERVICE_USER"
    fi
    if getent group docker >/dev/null 2>&1; then
        if getent passwd "$SERVICE_USER" >/dev/null 2>&1 &&
            id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx docker; then
            say "$SERVICE_USER is in the docker group"
        else
            note_change "docker group membership"
            if announce "add $SERVICE_USER to the docker group (access to the Docker socket)"; then
                usermod -aG docker "$SERVICE_USER"
            fi
        fi
    else
        warn "there is no docker group: the agent can reach the Docker engine only through a docker_host in $CONFIG_FILE (or once the group exists and install.sh runs again)"
    fi
    if [ ! -d "$STATE_DIR" ]; then
        if announce "create $STATE_DIR (0700, $SERVICE_USER)"; then
            mkdir -p "$STATE_DIR"
            chmod 0700 "$STATE_DIR"
            chown "$SERVICE_USER:$SERVICE_USER" "$STATE_DIR"
        fi
    fi
}

install_binary() {
    if [ ! -d "$INSTALL_DIR" ] && announce "create $INSTALL_DIR"; then
        mkdir -p "$INSTALL_DIR"
    fi
    if [ -x "$INSTALL_BIN" ] && ! same_content "$WORK_DIR/flotilla-agent" "$INSTALL_BIN"; then
        installed=$(installed_version)
        say "$INSTALL_BIN is ${installed:-an unknown version}; the relay's build is $M_VERSION"
    fi
    install_file "$WORK_DIR/flotilla-agent" "$INSTALL_BIN" 0755 root:root
    if [ "$INSTALLED" = 1 ]; then
        note_change "binary $M_VERSION"
    fi
}

# The version the installed binary reports (empty when it does not run).
installed_version() {
    if command -v timeout >/dev/null 2>&1; then
        version_line=$(timeout 10 "$INSTALL_BIN" --version 2>/dev/null) || version_line=
    else
        version_line=$("$INSTALL_BIN" --version 2>/dev/null) || version_line=
    fi
    case $version_line in
        'flotilla-agent '*) printf '%s' "${version_line#flotilla-agent }" ;;
    esac
}

config_text() {
    cat <<EOF
# $CONFIG_FILE: written by the Flotilla installer (install.sh). Every setting, with its
# default, is described in packaging/agent.toml of the Flotilla sources; local changes are
# welcome: install.sh leaves this file alone once it differs from what it writes.
relay_url = "$RELAY_URL"
EOF
    if [ "$ALLOW_INSECURE_HTTP" = 1 ] && ! is_loopback_url "$RELAY_URL"; then
        echo 'allow_insecure_ws = true'
    fi
}

install_config() {
    if [ ! -d "$CONFIG_DIR" ] && announce "create $CONFIG_DIR"; then
        mkdir -p "$CONFIG_DIR"
        chmod 0755 "$CONFIG_DIR"
    fi
    printf '%s\n' "$RELAY_PUBLIC_KEY" >"$WORK_DIR/relay.pub"
    install_file "$WORK_DIR/relay.pub" "$RELAY_PUB" 0644 root:root
    printf '%s\n' "# flotilla-agent's name resolution (see BindReadOnlyPaths= in $AGENT_UNIT)" \
        'hosts: files dns' >"$WORK_DIR/nsswitch.conf"
    install_file "$WORK_DIR/nsswitch.conf" "$NSSWITCH" 0644 root:root
    config_text >"$WORK_DIR/agent.toml"
    if [ -f "$CONFIG_FILE" ] && ! same_content "$WORK_DIR/agent.toml" "$CONFIG_FILE"; then
        say "keeping the locally edited $CONFIG_FILE (it differs from what install.sh writes: relay_url = \"$RELAY_URL\")"
        return 0
    fi
    install_file "$WORK_DIR/agent.toml" "$CONFIG_FILE" 0640 "root:$SERVICE_USER"
    if [ "$INSTALLED" = 1 ]; then
        note_change "agent.toml"
    fi
}

install_units() {
    for unit in $UNITS; do
        fetch "$RELAY_URL/download/systemd/$unit" "$WORK_DIR/$unit.packaged" "the unit $unit"
        grep -q -e '^\[Service\]' -e '^\[Path\]' "$WORK_DIR/$unit.packaged" ||
            die "the relay's $unit is not a systemd unit file"
        # The binary's path, and the updater's write access to its directory (ReadWritePaths).
        sed -e "s|$PACKAGED_BIN|$INSTALL_BIN|g" \
            -e "s|^ReadWritePaths=$PACKAGED_DIR |ReadWritePaths=$INSTALL_DIR |" \
            "$WORK_DIR/$unit.packaged" >"$WORK_DIR/$unit"
        install_file "$WORK_DIR/$unit" "$UNIT_DIR/$unit" 0644 root:root
        if [ "$INSTALLED" = 1 ]; then
            UNITS_CHANGED=1
            case $unit in
                "$AGENT_UNIT") note_change "$unit" ;;
                "$UPDATER_PATH_UNIT") PATH_UNIT_CHANGED=1 ;;
            esac
        fi
    done
    if [ -d "$DROPIN_DIR" ]; then
        say "local drop-ins in $DROPIN_DIR are left as they are"
    fi
}

# The uninstaller is this script itself (run under that name it defaults to --uninstall): the
# file it runs from, or, when it was piped into sh, the copy the relay serves.
install_uninstaller() {
    if [ -f "$0" ] && grep -qF "$INSTALLER_MARKER" "$0" 2>/dev/null; then
        cp "$0" "$WORK_DIR/uninstaller"
    else
        fetch "$RELAY_URL/install.sh" "$WORK_DIR/uninstaller" "install.sh (for $UNINSTALLER)"
    fi
    grep -qF "$INSTALLER_MARKER" "$WORK_DIR/uninstaller" ||
        die "the relay's install.sh is not this installer"
    # shellcheck disable=SC2016 # the literal last line of a complete copy
    [ "$(tail -n 1 "$WORK_DIR/uninstaller")" = 'main "$@"' ] ||
        die "the relay's install.sh is cut short (its last line is not the call of main)"
    install_file "$WORK_DIR/uninstaller" "$UNINSTALLER" 0755 root:root
}

# Enrolls as the service user (so agent.db is its own), the token in the environment only.
enroll() {
    if [ -f "$STATE_DIR/agent.db" ] && [ -z "$TOKEN" ]; then
        say "$STATE_DIR/agent.db exists: not enrolling (pass --token to enroll if it holds no identity)"
        return 0
    fi
    [ -n "$TOKEN" ] || die "--token is required to enroll this host (or set FLOTILLA_ENROLL_TOKEN)"
    if ! announce "enroll with $RELAY_URL as $SERVICE_USER (relay key $RELAY_FINGERPRINT)"; then
        return 0
    fi
    set -- "$INSTALL_BIN" enroll --relay "$RELAY_URL" --relay-fingerprint "$RELAY_FINGERPRINT" \
        --state-dir "$STATE_DIR"
    if [ -n "$LABELS" ]; then
        set -- "$@" --labels "$LABELS"
    fi
    if [ -n "$AGENT_NAME" ]; then
        set -- "$@" --name "$AGENT_NAME"
    fi
    if [ "$ALLOW_INSECURE_HTTP" = 1 ]; then
        set -- "$@" --allow-insecure
    fi
    # As the service user (so agent.db is its own), with the agent's nsswitch.conf.
    if command -v setpriv >/dev/null 2>&1; then
        set -- setpriv --reuid="$SERVICE_USER" --regid="$SERVICE_USER" --init-groups -- "$@"
    elif command -v runuser >/dev/null 2>&1; then
        set -- runuser -u "$SERVICE_USER" -- "$@"
    fi
    # Else enrolled as root; the state directory is chowned below.
    if [ -f "$NSSWITCH" ] && command -v unshare >/dev/null 2>&1 &&
        unshare --mount --propagation private true 2>/dev/null; then
        # A static glibc build must not load the host's NSS modules while it resolves the
        # relay's name (the unit does the same with BindReadOnlyPaths=): bind the agent's
        # nsswitch.conf over the host's in a private mount namespace for this one command.
        # Best effort: where the bind fails, the command runs with the host's file.
        # shellcheck disable=SC2016 # expanded by the inner sh, on purpose
        set -- unshare --mount --propagation private -- sh -c \
            'mount --bind "$1" /etc/nsswitch.conf 2>/dev/null || :; shift; exec "$@"' \
            sh "$NSSWITCH" "$@"
    fi
    if agent_id=$(
        FLOTILLA_ENROLL_TOKEN=$TOKEN
        HOME=$STATE_DIR
        export FLOTILLA_ENROLL_TOKEN HOME
        "$@" 2>"$WORK_DIR/enroll.err"
    ); then
        TOKEN=
        chown -R "$SERVICE_USER:$SERVICE_USER" "$STATE_DIR"
        say "enrolled as agent $agent_id"
        return 0
    fi
    TOKEN=
    if grep -q 'already holds an enrolled agent' "$WORK_DIR/enroll.err"; then
        say "already enrolled ($STATE_DIR/agent.db holds an identity): not enrolling again"
        return 0
    fi
    cat "$WORK_DIR/enroll.err" >&2
    die "enrollment failed (above); nothing is started. Fix the cause and run install.sh again with a valid token"
}

start_units() {
    if [ "$UNITS_CHANGED" = 1 ] && announce "reload systemd (units changed)"; then
        systemctl daemon-reload
    fi
    for unit in $AGENT_UNIT $UPDATER_PATH_UNIT; do
        if ! systemctl is-enabled --quiet "$unit" 2>/dev/null && announce "enable $unit"; then
            systemctl enable --quiet "$unit"
        fi
    done
    if systemctl is-active --quiet "$UPDATER_PATH_UNIT"; then
        if [ "$PATH_UNIT_CHANGED" = 1 ] && announce "restart $UPDATER_PATH_UNIT (its unit changed)"; then
            systemctl restart "$UPDATER_PATH_UNIT"
        fi
    elif announce "start $UPDATER_PATH_UNIT"; then
        systemctl start "$UPDATER_PATH_UNIT"
    fi
    if systemctl is-active --quiet "$AGENT_UNIT"; then
        if [ -z "$AGENT_CHANGED" ]; then
            say "$AGENT_UNIT is running and nothing it uses changed: not restarting it"
            return 0
        fi
        if announce "restart $AGENT_UNIT ($AGENT_CHANGED changed)"; then
            systemctl restart "$AGENT_UNIT" || agent_failed
        fi
    elif announce "start $AGENT_UNIT"; then
        systemctl reset-failed "$AGENT_UNIT" 2>/dev/null || true
        systemctl start "$AGENT_UNIT" || agent_failed
    fi
    if [ "$DRY_RUN" = 0 ]; then
        systemctl is-active --quiet "$AGENT_UNIT" || agent_failed
        say "$AGENT_UNIT is running ($(systemctl show --property=MainPID --value "$AGENT_UNIT" 2>/dev/null | sed 's/^/pid /'))"
    fi
}

agent_failed() {
    systemctl --no-pager status "$AGENT_UNIT" >&2 || true
    journalctl --no-pager --lines=30 --unit="$AGENT_UNIT" >&2 2>/dev/null || true
    die "$AGENT_UNIT did not start (its status and log are above)"
}

# === uninstall ===

uninstall() {
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        for unit in $UPDATER_PATH_UNIT $UPDATER_UNIT $AGENT_UNIT; do
            if [ -f "$UNIT_DIR/$unit" ] || systemctl is-active --quiet "$unit" ||
                systemctl is-enabled --quiet "$unit" 2>/dev/null; then
                if announce "stop and disable $unit"; then
                    systemctl disable --now --quiet "$unit" 2>/dev/null || systemctl stop "$unit" 2>/dev/null || true
                fi
            fi
        done
    fi
    removed_unit=0
    for unit in $UNITS; do
        if [ -e "$UNIT_DIR/$unit" ]; then
            removed_unit=1
            if announce "remove $UNIT_DIR/$unit"; then
                rm -f "$UNIT_DIR/$unit"
            fi
        fi
    done
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ] && [ "$removed_unit" = 1 ] &&
        announce "reload systemd"; then
        systemctl daemon-reload
        for unit in $UNITS; do
            systemctl reset-failed "$unit" 2>/dev/null || true
        done
    fi
    for file in "$INSTALL_BIN" "$UNINSTALLER" "$CONFIG_FILE" "$RELAY_PUB" "$NSSWITCH"; do
        if [ -e "$file" ] && announce "remove $file"; then
            rm -f "$file"
        fi
    done
    # Leftovers of interrupted runs of install_file, and of the updater's copy (.new-*).
    for file in "$INSTALL_DIR"/.flotilla-agent.flotilla-install.* "$INSTALL_DIR"/.flotilla-agent.new-* \
        "$CONFIG_DIR"/.*.flotilla-install.*; do
        if [ -e "$file" ] && announce "remove $file"; then
            rm -f "$file"
        fi
    done
    if [ -d "$UPDATER_DIR" ] && announce "remove $UPDATER_DIR (the updater's copy of the previous binary)"; then
        rm -rf "$UPDATER_DIR"
    fi
    if [ -d "$CONFIG_DIR" ] && [ -z "$(ls -A "$CONFIG_DIR")" ] && announce "remove the empty $CONFIG_DIR"; then
        rmdir "$CONFIG_DIR"
    fi
    if [ -d "$DROPIN_DIR" ]; then
        say "kept your drop-ins in $DROPIN_DIR (remove them yourself if you no longer want them)"
    fi
    if [ "$PURGE" = 0 ]; then
        say "kept $STATE_DIR (the agent's identity, state and backups) and the user $SERVICE_USER; --purge removes them"
        return 0
    fi
    for dir in "$STATE_DIR" "$LOGS_DIR"; do
        if [ -d "$dir" ] && announce "remove $dir"; then
            rm -rf "$dir"
        fi
    done
    if getent passwd "$SERVICE_USER" >/dev/null 2>&1 && announce "remove the user $SERVICE_USER"; then
        userdel "$SERVICE_USER"
    fi
    if getent group "$SERVICE_USER" >/dev/null 2>&1 && announce "remove the group $SERVICE_USER"; then
        groupdel "$SERVICE_USER"
    fi
}

# === main ===

install() {
    check_systemd
    check_tools
    check_no_upgrade_running
    check_arch
    make_work_dir
    check_relay_key
    if [ ! -f "$STATE_DIR/agent.db" ] && [ -z "$TOKEN" ]; then
        die "--token is required for the first install (or set FLOTILLA_ENROLL_TOKEN): create one with \`flotilla token create\`"
    fi
    check_relay_reachable
    fetch_manifest
    say "checks passed: $(if [ "$(id -u)" -eq 0 ]; then echo root; else echo 'not root (dry run)'; fi), systemd running, downloads with $DOWNLOADER, architecture $ARCH, working directory $WORK_DIR, relay $RELAY_URL reachable with build $M_VERSION for $ARCH"
    verify_manifest_signature
    fetch_binary
    # Everything checked: from here on the system changes (in a dry run, it is only described).
    ensure_user
    install_binary
    install_config
    install_units
    install_uninstaller
    enroll
    start_units
    if [ "$DRY_RUN" = 1 ]; then
        say "dry run: nothing was changed"
    else
        say "done: flotilla-agent $M_VERSION is installed; remove it with $UNINSTALLER"
    fi
}

main() {
    remember_args "$@"
    parse_args "$@"
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    # The enrollment runs as the service user, which may not read the caller's directory.
    cd /
    # Piped into `sh -s`, stdin is the rest of this script: no program run here may read it.
    exec </dev/null
    umask 022
    if [ "$MODE" = uninstall ]; then
        check_root
        uninstall
        if [ "$DRY_RUN" = 1 ]; then
            say "dry run: nothing was changed"
        fi
        return 0
    fi
    validate_args
    check_root
    install
}

main "$@"
