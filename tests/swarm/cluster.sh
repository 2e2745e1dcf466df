#!/usr/bin/env bash
# A real three-node Docker Swarm on this one machine, for the Swarm backend's tests and benches.
#
#   cluster.sh up   STATE_DIR ID NET   # e.g. /tmp/ics-ab12cd ab12cd 10.231.7
#   cluster.sh down STATE_DIR          # undoes everything `up` did (also after a failed `up`)
#
# Each node is one more dockerd in a network namespace of its own (own data root, exec root,
# socket, pid file, cgroup parent, containerd namespace). The nodes' namespaces are joined by a
# bridge in a further namespace, so the host's own interfaces and firewall stay untouched but
# for one veth: NET.1 on the host, where an orchestrator under test binds its worker API. The
# nodes have no default route: the /24 is all they can reach. Names derive from ID (at most six
# characters), so `down` removes exactly what this `up` made and nothing of anyone else's.
#
# `up` writes STATE_DIR/cluster.env (node names, sockets, addresses) for the test fixture;
# every step is recorded in STATE_DIR first, so `down` knows what to undo whatever failed.
set -euo pipefail

NODES=3

die() { echo "cluster.sh: $*" >&2; exit 1; }

names() {
    # Interface names have at most 15 characters.
    BR_NS="ic-${ID}-br"
    HOST_IF="ich${ID}"
    HOST_PEER="icH${ID}"
}

node_vars() {
    local i=$1
    NODE="ic-${ID}-n${i}"
    NS="ic-${ID}-n${i}"
    NODE_IF="icn${ID}${i}"
    NODE_PEER="icN${ID}${i}"
    NODE_DIR="${STATE}/n${i}"
    NODE_ADDR="${NET}.$((10 + i))"
    SOCK="${NODE_DIR}/docker.sock"
}

up() {
    [[ ${#ID} -le 6 && $ID =~ ^[a-z0-9]+$ ]] || die "ID must be 1-6 lower-case letters/digits"
    [[ $NET =~ ^10\.([0-9]+)\.[0-9]+$ && ${BASH_REMATCH[1]} -lt 255 ]] ||
        die "NET must be the first three octets of a 10.x.y.0/24 (x < 255)"
    if ip -4 route show | grep -q "^${NET}\."; then
        die "${NET}.0/24 is already routed on this host: pick another NET"
    fi
    mkdir -p "$STATE"
    printf 'ID=%s\nNET=%s\n' "$ID" "$NET" >"$STATE/ids"
    names
    ip netns add "$BR_NS"
    ip -n "$BR_NS" link add br0 type bridge
    ip -n "$BR_NS" link set br0 up
    ip link add "$HOST_IF" type veth peer name "$HOST_PEER"
    ip link set "$HOST_PEER" netns "$BR_NS"
    ip -n "$BR_NS" link set "$HOST_PEER" master br0 up
    ip addr add "${NET}.1/24" dev "$HOST_IF"
    ip link set "$HOST_IF" mtu 1400 up
    for i in $(seq 1 $NODES); do
        node_vars "$i"
        mkdir -p "$NODE_DIR"
        ip netns add "$NS"
        ip link add "$NODE_IF" type veth peer name "$NODE_PEER"
        ip link set "$NODE_PEER" netns "$BR_NS"
        ip -n "$BR_NS" link set "$NODE_PEER" master br0 up
        ip link set "$NODE_IF" netns "$NS"
        ip -n "$NS" link set lo up
        ip -n "$NS" link set "$NODE_IF" name eth0
        ip -n "$NS" addr add "${NODE_ADDR}/24" dev eth0
        ip -n "$NS" link set eth0 mtu 1400 up
        start_daemon "$i"
    done
    for i in $(seq 1 $NODES); do
        node_vars "$i"
        wait_for_socket "$SOCK" "$NODE_DIR/dockerd.log"
    done
    node_vars 1
    local manager_sock=$SOCK manager_addr=$NODE_ADDR
    # A 1 s heartbeat: a node that stops answering is Down within about two seconds. Overlay
    # subnets come from the /16 after NET's, which the nodes route nowhere else.
    local second=${NET#10.}
    second=${second%%.*}
    docker -H "unix://$manager_sock" swarm init --advertise-addr "$manager_addr" \
        --listen-addr "$manager_addr:2377" --default-addr-pool "10.$((second + 1)).0.0/16" \
        --dispatcher-heartbeat 1s >/dev/null
    local token
    token=$(docker -H "unix://$manager_sock" swarm join-token -q worker)
    for i in $(seq 2 $NODES); do
        node_vars "$i"
        docker -H "unix://$SOCK" swarm join --token "$token" --advertise-addr "$NODE_ADDR" \
            --listen-addr "$NODE_ADDR:2377" "$manager_addr:2377" >/dev/null
    done
    {
        echo "SWARM_HOST_ADDR=${NET}.1"
        echo "SWARM_MANAGER=unix://$manager_sock"
        for i in $(seq 1 $NODES); do
            node_vars "$i"
            echo "SWARM_NODE_${i}=${NODE}"
            echo "SWARM_NODE_${i}_SOCK=unix://${SOCK}"
            echo "SWARM_NODE_${i}_ADDR=${NODE_ADDR}"
            echo "SWARM_NODE_${i}_PIDFILE=${NODE_DIR}/dockerd.pid"
        done
    } >"$STATE/cluster.env"
}

start_daemon() {
    node_vars "$1"
    cat >"$NODE_DIR/daemon.json" <<EOF
{
  "storage-driver": "overlay2",
  "no-new-privileges": true,
  "icc": false,
  "cgroup-parent": "/${NODE}",
  "containerd-namespace": "${NODE}",
  "containerd-plugins-namespace": "${NODE}-plugins",
  "mtu": 1400,
  "labels": ["ironclaw.test.cluster=${ID}"]
}
EOF
    cat >"$NODE_DIR/run.sh" <<EOF
#!/bin/sh
# ip netns exec remounted /sys, without the cgroup v1 hierarchies dockerd needs.
set -e
mount -t tmpfs cgroup /sys/fs/cgroup
for h in cpu cpuacct cpuset memory devices freezer blkio pids; do
    mkdir -p /sys/fs/cgroup/\$h
    mount -t cgroup -o \$h cgroup /sys/fs/cgroup/\$h
done
mkdir -p /sys/fs/cgroup/systemd
mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
hostname ${NODE}
exec dockerd --config-file ${NODE_DIR}/daemon.json --data-root ${NODE_DIR}/data \
    --exec-root ${NODE_DIR}/exec --pidfile ${NODE_DIR}/dockerd.pid -H unix://${SOCK}
EOF
    chmod +x "$NODE_DIR/run.sh"
    # setsid: the daemons outlive this script, in no process group the caller might signal.
    DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 setsid ip netns exec "$NS" unshare --uts \
        "$NODE_DIR/run.sh" >"$NODE_DIR/dockerd.log" 2>&1 </dev/null &
    echo $! >"$NODE_DIR/launcher.pid"
}

wait_for_socket() {
    local sock=$1 log=$2
    for _ in $(seq 1 300); do
        if docker -H "unix://$sock" version >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    tail -n 30 "$log" >&2 || true
    die "dockerd at $sock did not come up in 30 s"
}

kill_pids() {
    # Only processes this cluster started: those whose command line names its state directory
    # (dockerd, its containerd and shims), and those in its nodes' cgroups (the containers).
    local pids=() pid
    for pid in $(pgrep -f -- "$STATE/" || true); do pids+=("$pid"); done
    for i in $(seq 1 $NODES); do
        node_vars "$i"
        for procs in /sys/fs/cgroup/pids/"$NODE"/*/cgroup.procs; do
            [[ -f $procs ]] || continue
            while read -r pid; do pids+=("$pid"); done <"$procs"
        done
    done
    [[ ${#pids[@]} -gt 0 ]] && kill "-$1" "${pids[@]}" 2>/dev/null || true
}

down() {
    [[ -f "$STATE/ids" ]] || return 0
    # shellcheck disable=SC1091
    source "$STATE/ids"
    names
    # SIGTERM first: a daemon that shuts down cleanly stops its containers itself.
    for i in $(seq 1 $NODES); do
        node_vars "$i"
        [[ -f "$NODE_DIR/dockerd.pid" ]] && kill -TERM "$(cat "$NODE_DIR/dockerd.pid")" 2>/dev/null || true
    done
    for _ in $(seq 1 100); do
        pgrep -f -- "$STATE/.*dockerd\.pid" >/dev/null || break
        sleep 0.1
    done
    kill_pids KILL
    for _ in $(seq 1 50); do
        pgrep -f -- "$STATE/" >/dev/null || break
        sleep 0.1
    done
    for i in $(seq 1 $NODES); do
        node_vars "$i"
        ip netns del "$NS" 2>/dev/null || true
        for hierarchy in /sys/fs/cgroup/*/; do
            [[ -d "$hierarchy$NODE" ]] || continue
            find "$hierarchy$NODE" -depth -type d -exec rmdir {} + 2>/dev/null || true
        done
    done
    ip link del "$HOST_IF" 2>/dev/null || true
    ip netns del "$BR_NS" 2>/dev/null || true
    rm -rf "$STATE"
}

case "${1:-}" in
    up)
        [[ $# -eq 4 ]] || die "usage: cluster.sh up STATE_DIR ID NET"
        STATE=$2 ID=$3 NET=$4
        up
        ;;
    down)
        [[ $# -eq 2 ]] || die "usage: cluster.sh down STATE_DIR"
        STATE=$2
        down
        ;;
    *) die "usage: cluster.sh up STATE_DIR ID NET | down STATE_DIR" ;;
esac
