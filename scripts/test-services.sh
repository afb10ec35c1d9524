# Services the test suite needs, on loopback, in a private folder: a Postgres
# cluster and a container registry. Sourced by scripts/test; each function is safe
# to call again.
#
# Exports DATABASE_URL (a superuser, so that each database test gets a fresh
# database), SLIPWAY_TEST_REGISTRY, SLIPWAY_TEST_BUSYBOX, SLIPWAY_TEST_MOTO_SERVER
# and SLIPWAY_TEST_SCHEMATHESIS. Prometheus is installed
# for the tests to start their own.

SLIPWAY_TEST_PG_PORT="${SLIPWAY_TEST_PG_PORT:-55432}"
# moto, the AWS emulator the ECS, ECR and CloudWatch tests start (one server per
# test, so that no test sees another's tasks), in a virtualenv of its own.
SLIPWAY_MOTO_VENV="${SLIPWAY_MOTO_VENV:-/opt/slipway-moto}"
SLIPWAY_MOTO_VERSION="5.2.5"
SLIPWAY_TEST_REGISTRY="${SLIPWAY_TEST_REGISTRY:-127.0.0.1:5000}"
export SLIPWAY_TEST_CHROMEDRIVER="${SLIPWAY_TEST_CHROMEDRIVER:-/usr/bin/chromedriver}"
# schemathesis, which fuzzes the HTTP API against its OpenAPI document.
SLIPWAY_SCHEMATHESIS_VENV="${SLIPWAY_SCHEMATHESIS_VENV:-/opt/slipway-schemathesis}"
SLIPWAY_SCHEMATHESIS_VERSION="4.32.5"

# Debian packages the tests use, by the file each provides.
ensure_packages() {
    local missing=()
    pg_bin >/dev/null || missing+=(postgresql)
    command -v docker-registry >/dev/null || missing+=(docker-registry)
    dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
    [ -x /usr/lib/git-core/git-daemon ] || command -v git-daemon >/dev/null || missing+=(git)
    command -v curl >/dev/null || missing+=(curl)
    command -v prometheus >/dev/null || missing+=(prometheus)
    # What the build needs: a C compiler, pkg-config and OpenSSL's headers (git2).
    command -v cc >/dev/null || missing+=(gcc)
    command -v pkg-config >/dev/null || missing+=(pkg-config)
    dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
    # sshd serves the tests' private repositories over ssh.
    [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
    # A real browser for the dashboard's tests.
    command -v chromium >/dev/null || missing+=(chromium)
    command -v chromedriver >/dev/null || missing+=(chromium-driver)
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "missing packages: ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root" >&2
        return 1
    fi
    echo "installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The Docker engine the tests build and run with. An engine that is still
# starting gets a minute; one that is not running is started (as root), and
# installed from Debian's packages first if it is missing.
ensure_docker() {
    docker_answers() { docker info >/dev/null 2>&1; }
    wait_for_docker() {
        local i
        for i in $(seq 1 "$1"); do docker_answers && return 0; sleep 1; done
        return 1
    }
    docker_answers && return 0
    if pgrep -x dockerd >/dev/null; then
        echo "waiting for the Docker engine to answer" >&2
        wait_for_docker 60 && return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "the Docker engine is not reachable (docker info failed); start it, or run as root" >&2
        return 1
    fi
    if ! command -v dockerd >/dev/null; then
        echo "installing docker.io" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
    fi
    if ! pgrep -x dockerd >/dev/null; then
        echo "starting the Docker engine (log: /var/log/slipway-test-dockerd.log)" >&2
        (setsid dockerd >>/var/log/slipway-test-dockerd.log 2>&1 &)
    fi
    wait_for_docker 90 && return 0
    echo "the Docker engine did not answer within 90 s; see /var/log/slipway-test-dockerd.log" >&2
    return 1
}

# Installs a PyPI package at a pinned version into a virtualenv of its own, unless
# it is there: `ensure_pip_tool VENV PACKAGE VERSION [EXTRAS]`.
ensure_pip_tool() {
    local venv="$1" package="$2" version="$3" extras="${4:-}"
    local installed=""
    [ -x "$venv/bin/pip" ] && installed="$("$venv/bin/pip" show "$package" 2>/dev/null || true)"
    grep -qx "Version: $version" <<<"$installed" && return 0
    echo "installing $package $version into $venv" >&2
    python3 -m venv "$venv" 2>/dev/null || {
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$venv"
    }
    "$venv/bin/pip" install -q "$package$extras==$version"
}

# moto's server, from PyPI; exports its path.
ensure_moto() {
    ensure_pip_tool "$SLIPWAY_MOTO_VENV" moto "$SLIPWAY_MOTO_VERSION" "[server]"
    export SLIPWAY_TEST_MOTO_SERVER="$SLIPWAY_MOTO_VENV/bin/moto_server"
}

# schemathesis, from PyPI; exports its path.
ensure_schemathesis() {
    ensure_pip_tool "$SLIPWAY_SCHEMATHESIS_VENV" schemathesis "$SLIPWAY_SCHEMATHESIS_VERSION"
    export SLIPWAY_TEST_SCHEMATHESIS="$SLIPWAY_SCHEMATHESIS_VENV/bin/st"
}

pg_bin() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
        [ -x "$dir/pg_ctl" ] && [ -x "$dir/initdb" ] && { echo "$dir"; return 0; }
    done
    return 1
}

# Runs a command as the postgres user when we are root (Postgres refuses root).
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start_postgres() {
    local bin; bin="$(pg_bin)"
    export SLIPWAY_TEST_DIR="${SLIPWAY_TEST_DIR:-/tmp/slipway-test}"
    mkdir -p "$SLIPWAY_TEST_DIR"; chmod 755 "$SLIPWAY_TEST_DIR"
    local data="$SLIPWAY_TEST_DIR/pg"
    if [ ! -f "$data/PG_VERSION" ]; then
        mkdir -p "$data"
        [ "$(id -u)" = 0 ] && chown postgres: "$data"
        as_pg "$bin/initdb" -D "$data" -U slipway --auth=trust -E UTF8 --no-instructions >/dev/null
    fi
    if ! as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        as_pg "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
            -o "-p $SLIPWAY_TEST_PG_PORT -h 127.0.0.1 -k '' -c max_connections=400" start >/dev/null
    fi
    export DATABASE_URL="postgres://slipway@127.0.0.1:$SLIPWAY_TEST_PG_PORT/postgres"
}

stop_postgres() {
    local bin; bin="$(pg_bin)"
    as_pg "$bin/pg_ctl" -D "$SLIPWAY_TEST_DIR/pg" -m fast -w stop >/dev/null 2>&1 || true
}

start_registry() {
    export SLIPWAY_TEST_REGISTRY
    if curl -fs "http://$SLIPWAY_TEST_REGISTRY/v2/" >/dev/null 2>&1; then
        return 0
    fi
    local dir="$SLIPWAY_TEST_DIR/registry"
    mkdir -p "$dir/data"
    cat > "$dir/config.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: $SLIPWAY_TEST_REGISTRY
YAML
    docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
    echo $! > "$dir/pid"
    for _ in $(seq 1 50); do
        curl -fs "http://$SLIPWAY_TEST_REGISTRY/v2/" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "the registry did not start; see $dir/registry.log" >&2
    return 1
}

stop_registry() {
    local pidfile="$SLIPWAY_TEST_DIR/registry/pid"
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
}

# The tools the build and the test run need besides Debian's packages: cargo (the
# README names how to install Rust) and cargo-nextest, installed when missing.
ensure_rust_tools() {
    if ! command -v cargo >/dev/null; then
        echo "cargo is missing: install Rust (https://rustup.rs), then run scripts/test again" >&2
        return 1
    fi
    if ! cargo nextest --version >/dev/null 2>&1; then
        echo "installing cargo-nextest" >&2
        cargo install --locked cargo-nextest >/dev/null
    fi
}

# What the tests start and must stop: their processes, their job containers.
leftover_snapshot() {
    {
        pgrep -x git-daemon || true
        pgrep -f "target/debug/slipway( |$)" || true
        pgrep -f moto_server || true
        pgrep -x prometheus || true
        pgrep -f "docker-registry serve" || true
        pgrep -f "sshd -D -e -f" || true
        pgrep -f "slipway-schemathesis/bin/st" || true
        pgrep -x chromedriver || true
    } | sort -n
}

# Fails, naming them, if processes or job containers are left that were not
# there before the run (`before`: a leftover_snapshot taken then).
check_leftovers() {
    local before="$1" left containers
    left="$(comm -13 <(echo "$before") <(leftover_snapshot) | sed '/^$/d')"
    containers="$(docker ps -aq --filter label=slipway.job_id)"
    [ -z "$left" ] && [ -z "$containers" ] && return 0
    echo "the tests left these behind:" >&2
    [ -n "$left" ] && ps -o pid,args -p $(echo $left) >&2
    [ -n "$containers" ] && docker ps -a --filter label=slipway.job_id >&2
    return 1
}
