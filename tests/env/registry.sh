#!/usr/bin/env bash
# Starts and stops CNCF distribution registries (Debian's `docker-registry`) on
# 127.0.0.1 for the integration tests. Each registry gets its own YAML config,
# storage and logs under a work directory. The packaged
# /etc/docker/registry/config.yml is not used, because it listens on port 5000
# on all interfaces.
#
# Kinds:
#   plain  HTTP, no auth, access log enabled (written to KIND/access.log)
#   auth   HTTP with htpasswd basic auth (bcrypt)
#   tls    HTTPS with a generated CA and leaf certificate, plus basic auth
#   token  HTTP with Bearer token auth: clients fetch a JWT from token-server.py,
#          which runs under WORKDIR/token-server and logs each request to
#          token-server/requests.log (one JSON object per line)
#
# Run as a script:
#   registry.sh start KIND WORKDIR   start one registry, print 127.0.0.1:PORT
#   registry.sh stop WORKDIR         stop every registry started under WORKDIR
# or source it and call registry_start / registry_stop (see with-registries.sh).

REGISTRY_USER_DEFAULT=testuser
REGISTRY_PASSWORD_DEFAULT=testpass
REGISTRY_REALM=agentkernel-test
REGISTRY_TOKEN_SERVICE=agentkernel-test
REGISTRY_TOKEN_ISSUER=agentkernel-test-issuer
REGISTRY_TOKEN_SERVER=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/token-server.py

# Ports are picked at random from this range, which lies below Linux's default
# ephemeral range (32768-60999) so outgoing connections do not take them.
REGISTRY_PORT_MIN=20000
REGISTRY_PORT_MAX=32767
REGISTRY_START_ATTEMPTS=20
REGISTRY_READY_TIMEOUT_SECONDS=15

registry_log() {
	printf 'registry.sh: %s\n' "$*" >&2
}

# Quote a string as a single-quoted YAML scalar.
registry_yaml_quote() {
	local s=${1//\'/\'\'}
	printf "'%s'" "$s"
}

# Print the inode of the TCP socket listening on PORT (IPv4 or IPv6), if any.
registry_listen_inode() {
	local port_hex
	port_hex=$(printf '%04X' "$1")
	# /proc/net/tcp columns: 2 local address (HEXIP:HEXPORT), 4 state (0A is
	# LISTEN), 10 inode.
	awk -v port="$port_hex" '$4 == "0A" && $2 ~ (":" port "$") { print $10; exit }' \
		/proc/net/tcp /proc/net/tcp6 2>/dev/null
}

registry_port_in_use() {
	[ -n "$(registry_listen_inode "$1")" ]
}

# Succeed when process PID owns the socket listening on PORT. This proves that
# a /v2/ answer came from our registry and not from another server that took
# the port first.
registry_pid_owns_port() {
	local pid=$1 port=$2 inode fd
	inode=$(registry_listen_inode "$port")
	[ -n "$inode" ] || return 1
	for fd in /proc/"$pid"/fd/*; do
		if [ "$(readlink "$fd" 2>/dev/null)" = "socket:[$inode]" ]; then
			return 0
		fi
	done
	return 1
}

registry_pick_port() {
	local port i
	for ((i = 0; i < 100; i++)); do
		port=$((REGISTRY_PORT_MIN + RANDOM % (REGISTRY_PORT_MAX - REGISTRY_PORT_MIN + 1)))
		if ! registry_port_in_use "$port"; then
			echo "$port"
			return 0
		fi
	done
	registry_log "no free port found in $REGISTRY_PORT_MIN-$REGISTRY_PORT_MAX after 100 tries"
	return 1
}

# Create WORKDIR/pki (CA key and certificate, leaf key and certificate for
# 127.0.0.1 and localhost) and WORKDIR/ca/ca.crt, a directory holding only the
# CA certificate, in the form `skopeo --dest-cert-dir` expects. The leaf is
# signed by the CA because rustls rejects a self-signed CA certificate used as
# a server certificate (CaUsedAsEndEntity). Does nothing if they exist.
registry_make_pki() {
	local work=$1 pki=$1/pki
	[ -f "$work/ca/ca.crt" ] && return 0
	mkdir -p "$pki" "$work/ca"
	openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=agentkernel test CA" \
		-addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign" \
		-keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
	openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
		-keyout "$pki/registry.key" -out "$pki/registry.csr" 2>/dev/null
	cat >"$pki/leaf.ext" <<-'EOF'
		basicConstraints=critical,CA:FALSE
		keyUsage=critical,digitalSignature,keyEncipherment
		extendedKeyUsage=serverAuth
		subjectAltName=IP:127.0.0.1,DNS:localhost
	EOF
	openssl x509 -req -in "$pki/registry.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
		-CAcreateserial -days 3650 -extfile "$pki/leaf.ext" -out "$pki/registry.crt" 2>/dev/null
	cp "$pki/ca.crt" "$work/ca/ca.crt"
}

# Write WORKDIR/auth/htpasswd for USER and PASSWORD. distribution 2.8 accepts
# only bcrypt entries (htpasswd -B); an MD5 entry always gives 401.
registry_make_htpasswd() {
	local work=$1 user=${2:-$REGISTRY_USER_DEFAULT} password=${3:-$REGISTRY_PASSWORD_DEFAULT}
	mkdir -p "$work/auth"
	htpasswd -Bbn "$user" "$password" >"$work/auth/htpasswd"
}

# Start token-server.py under WORKDIR/token-server unless it runs already, with a
# new self-signed RS256 signing certificate. The registry trusts that certificate
# as its rootcertbundle, and distribution 2.8 accepts a token whose x5c chain is
# just a certificate from that bundle. The server binds a port chosen by the
# kernel and writes it to token-server/addr once it listens. Sets
# REGISTRY_TOKEN_SERVER_ADDR; REGISTRY_PDEATHSIG applies as in registry_start.
registry_start_token_server() {
	local work=$1 dir=$1/token-server pid deadline port
	if [ -f "$dir/pid" ] && registry_is_ours "$(cat "$dir/pid")"; then
		REGISTRY_TOKEN_SERVER_ADDR=$(cat "$dir/addr")
		return 0
	fi
	mkdir -p "$dir"
	rm -f "$dir/addr"
	openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=agentkernel test token issuer" \
		-keyout "$dir/signing.key" -out "$dir/signing.crt" 2>/dev/null
	local command=(python3 "$REGISTRY_TOKEN_SERVER" --cert "$dir/signing.crt" --key "$dir/signing.key"
		--issuer "$REGISTRY_TOKEN_ISSUER" --service "$REGISTRY_TOKEN_SERVICE"
		--user "$REGISTRY_USER_DEFAULT" --password "$REGISTRY_PASSWORD_DEFAULT"
		--log "$dir/requests.log" --addr-file "$dir/addr")

	if [ "${REGISTRY_PDEATHSIG:-0}" = 1 ]; then
		setpriv --pdeathsig TERM -- "${command[@]}" 2>"$dir/server.log" </dev/null &
	else
		"${command[@]}" 2>"$dir/server.log" </dev/null &
	fi
	pid=$!
	echo "$pid" >"$dir/pid"

	deadline=$((SECONDS + REGISTRY_READY_TIMEOUT_SECONDS))
	until [ -f "$dir/addr" ]; do
		if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
			registry_log "token-server.py did not start within ${REGISTRY_READY_TIMEOUT_SECONDS}s; $dir/server.log ends with:"
			tail -n 20 "$dir/server.log" >&2
			kill "$pid" 2>/dev/null || true
			wait "$pid" 2>/dev/null || true
			return 1
		fi
		sleep 0.02
	done

	REGISTRY_TOKEN_SERVER_ADDR=$(cat "$dir/addr")
	port=${REGISTRY_TOKEN_SERVER_ADDR##*:}
	registry_pid_owns_port "$pid" "$port" || {
		registry_log "token-server.py (pid $pid) does not own the socket on port $port"
		return 1
	}
}

# Write the config of registry KIND listening on PORT to WORKDIR/KIND/config.yml.
registry_write_config() {
	local kind=$1 work=$2 port=$3 dir=$2/$1 secret
	secret=$(openssl rand -hex 16)
	{
		cat <<-EOF
			version: 0.1
			log:
			  level: info
			  formatter: text
			  accesslog:
			    disabled: false
			storage:
			  filesystem:
			    rootdirectory: $(registry_yaml_quote "$dir/data")
			  delete:
			    enabled: true
			  cache:
			    blobdescriptor: inmemory
			http:
			  addr: 127.0.0.1:$port
			  secret: $secret
		EOF
		if [ "$kind" = tls ]; then
			cat <<-EOF
				  tls:
				    certificate: $(registry_yaml_quote "$work/pki/registry.crt")
				    key: $(registry_yaml_quote "$work/pki/registry.key")
			EOF
		fi
		if [ "$kind" = auth ] || [ "$kind" = tls ]; then
			cat <<-EOF
				auth:
				  htpasswd:
				    realm: $REGISTRY_REALM
				    path: $(registry_yaml_quote "$work/auth/htpasswd")
			EOF
		fi
		if [ "$kind" = token ]; then
			cat <<-EOF
				auth:
				  token:
				    realm: http://$(cat "$work/token-server/addr")/token
				    service: $REGISTRY_TOKEN_SERVICE
				    issuer: $REGISTRY_TOKEN_ISSUER
				    rootcertbundle: $(registry_yaml_quote "$work/token-server/signing.crt")
			EOF
		fi
	} >"$dir/config.yml"
}

# Print the HTTP status of GET /v2/ on the registry of KIND at ADDR, or 000.
registry_probe() {
	local kind=$1 work=$2 addr=$3
	if [ "$kind" = tls ]; then
		curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
			--cacert "$work/ca/ca.crt" "https://$addr/v2/" || true
	else
		curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$addr/v2/" || true
	fi
}

# Start registry KIND under WORKDIR on a free port and wait until /v2/ answers
# (200 without auth, 401 with auth). Sets REGISTRY_ADDR and REGISTRY_PID and
# writes WORKDIR/KIND/{addr,pid}. stdout of the registry is its access log
# (KIND/access.log, Apache combined format); stderr is KIND/registry.log.
# With REGISTRY_PDEATHSIG=1 the registry gets SIGTERM when the calling shell
# dies, so even `kill -9` of the caller leaves no registry behind; call this
# function in the caller's own process (not in `$(...)`) for that to hold.
registry_start() {
	local kind=$1 work=$2 dir=$2/$1 expected attempt port pid status deadline
	case $kind in
	plain) expected=200 ;;
	auth | tls | token) expected=401 ;;
	*)
		registry_log "invalid registry kind '$kind': expected plain, auth, tls or token"
		return 2
		;;
	esac
	mkdir -p "$dir/data"
	if [ "$kind" = auth ] || [ "$kind" = tls ]; then
		[ -f "$work/auth/htpasswd" ] || registry_make_htpasswd "$work"
	fi
	[ "$kind" != tls ] || registry_make_pki "$work"
	[ "$kind" != token ] || registry_start_token_server "$work" || return 1

	for ((attempt = 1; attempt <= REGISTRY_START_ATTEMPTS; attempt++)); do
		port=$(registry_pick_port) || return 1
		registry_write_config "$kind" "$work" "$port"
		if [ "${REGISTRY_PDEATHSIG:-0}" = 1 ]; then
			setpriv --pdeathsig TERM -- docker-registry serve "$dir/config.yml" \
				>"$dir/access.log" 2>"$dir/registry.log" </dev/null &
		else
			docker-registry serve "$dir/config.yml" \
				>"$dir/access.log" 2>"$dir/registry.log" </dev/null &
		fi
		pid=$!
		deadline=$((SECONDS + REGISTRY_READY_TIMEOUT_SECONDS))
		while :; do
			if ! kill -0 "$pid" 2>/dev/null; then
				wait "$pid" 2>/dev/null || true
				if grep -q 'address already in use' "$dir/registry.log"; then
					registry_log "$kind: port $port taken by another process, retrying (attempt $attempt)"
					continue 2
				fi
				registry_log "$kind: docker-registry exited during start-up; $dir/registry.log ends with:"
				tail -n 20 "$dir/registry.log" >&2
				return 1
			fi
			status=$(registry_probe "$kind" "$work" "127.0.0.1:$port")
			if [ "$status" = "$expected" ] && registry_pid_owns_port "$pid" "$port"; then
				break 2
			fi
			if ((SECONDS >= deadline)); then
				registry_log "$kind: GET /v2/ on 127.0.0.1:$port returned '$status', expected $expected, within ${REGISTRY_READY_TIMEOUT_SECONDS}s; stopping pid $pid"
				kill "$pid" 2>/dev/null || true
				wait "$pid" 2>/dev/null || true
				return 1
			fi
			sleep 0.02
		done
	done
	if ((attempt > REGISTRY_START_ATTEMPTS)); then
		registry_log "$kind: no free port after $REGISTRY_START_ATTEMPTS attempts"
		return 1
	fi
	REGISTRY_ADDR=127.0.0.1:$port
	# shellcheck disable=SC2034 # read by scripts that source this file
	REGISTRY_PID=$pid
	echo "$REGISTRY_ADDR" >"$dir/addr"
	echo "$pid" >"$dir/pid"
}

# Succeed when PID is a docker-registry or token-server.py process, so that a PID
# reused by an unrelated process is left alone.
registry_is_ours() {
	[ "$(cat /proc/"$1"/comm 2>/dev/null)" = docker-registry ] ||
		grep -qzxF -- "$REGISTRY_TOKEN_SERVER" /proc/"$1"/cmdline 2>/dev/null
}

# Stop every registry and token server started under WORKDIR: SIGTERM, then
# SIGKILL after 5 s.
registry_stop() {
	local work=$1 pidfile pid i state
	for pidfile in "$work"/*/pid; do
		[ -f "$pidfile" ] || continue
		pid=$(cat "$pidfile")
		if registry_is_ours "$pid"; then
			kill -TERM "$pid" 2>/dev/null || true
			for ((i = 0; i < 250; i++)); do
				kill -0 "$pid" 2>/dev/null || break
				# A child of this shell stays a zombie until it is reaped.
				[ "$(awk '{print $3}' /proc/"$pid"/stat 2>/dev/null)" != Z ] || break
				sleep 0.02
			done
			# Bash may reap the child at any moment, so read its state once: no
			# state means it is gone.
			state=$(awk '{print $3}' /proc/"$pid"/stat 2>/dev/null) || true
			if [ -n "$state" ] && [ "$state" != Z ]; then
				registry_log "pid $pid ignored SIGTERM for 5s, sending SIGKILL"
				kill -KILL "$pid" 2>/dev/null || true
			fi
			wait "$pid" 2>/dev/null || true
		fi
		rm -f "$pidfile"
	done
	return 0
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	set -euo pipefail
	case ${1:-} in
	start)
		[ $# -eq 3 ] || {
			echo "usage: $0 start plain|auth|tls|token WORKDIR" >&2
			exit 2
		}
		mkdir -p "$3"
		work=$(cd "$3" && pwd)
		registry_start "$2" "$work"
		echo "$REGISTRY_ADDR"
		;;
	stop)
		[ $# -eq 2 ] || {
			echo "usage: $0 stop WORKDIR" >&2
			exit 2
		}
		registry_stop "$2"
		;;
	*)
		echo "usage: $0 start plain|auth|tls|token WORKDIR | $0 stop WORKDIR" >&2
		exit 2
		;;
	esac
fi
