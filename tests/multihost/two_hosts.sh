#!/usr/bin/env bash
# Run COMMAND under mpirun across two "hosts" made of network namespaces on this machine.
#
#   tests/multihost/two_hosts.sh [--np N] [-x VAR[=VALUE]]... [--mpirun-arg ARG]... -- COMMAND [ARGS...]
#
# Host 1 and host 2 are network namespaces joined by a veth pair, each with its own address in
# a private /24 (10.213.X.1 and 10.213.X.2, X chosen per run). mpirun itself runs inside host 1;
# Open MPI reaches host 2 through a plm_rsh_agent that stands in for ssh: it enters host 2's
# namespace with `ip netns exec` and runs the daemon (orted) there with a clean environment, as
# ssh would. The hostfile names both hosts by IP address; ranks are split N/2 per host (the
# first host takes the odd one), so the default N = 2 puts one rank on each host.
#
# Every rank gets, besides Open MPI's own variables:
#   TWO_HOSTS_SUBNET  the hosts' subnet in CIDR form (10.213.X.0/24)
#   TWO_HOSTS_IFACE   the hosts' interface name (the same on both hosts)
#   TWO_HOSTS_ADDRS   both hosts' addresses, comma-separated, host 1 first
# and every SHOAL_* variable of the caller's environment, each named with its own -x (Open
# MPI 4.1's -x takes no wildcard: `-x 'SHOAL_*'` reaches only the ranks on mpirun's host).
# -x VAR[=VALUE] forwards more. The harness's own names do not start with SHOAL_ because shoal
# refuses a SHOAL_* variable close to a setting's name and warns about any other. A Shoal job can bind the test interface with
#   two_hosts.sh -- sh -c 'SHOAL_SYNC_INTERFACE=$TWO_HOSTS_IFACE exec shoal worker JOB.ini'
# (without it, shoal picks the first interface that is up and not loopback: the same here).
# --mpirun-arg ARG adds one argument to mpirun (repeat it; e.g. --mpirun-arg --tag-output).
#
# Needs root and `ip netns`; without them it prints "SKIP: <reason>" and exits 77 (CTest's
# SKIP_RETURN_CODE). Otherwise it exits with mpirun's exit code. The namespaces (and any
# process left in them) are removed on exit, also on SIGINT/SIGTERM.
# TWO_HOSTS_VERBOSE=1 prints the set-up and the agent's calls on stderr.
set -u

usage() {
    echo "usage: $0 [--np N] [-x VAR[=VALUE]]... [--mpirun-arg ARG]... -- COMMAND [ARGS...]" >&2
    exit 2
}

np=2
extra_env=()
extra_mpirun=()
while [ $# -gt 0 ]; do
    case "$1" in
        --np|-np|-n) [ $# -ge 2 ] || usage; np=$2; shift 2 ;;
        --np=*) np=${1#--np=}; shift ;;
        -x) [ $# -ge 2 ] || usage; extra_env+=("$2"); shift 2 ;;
        --mpirun-arg) [ $# -ge 2 ] || usage; extra_mpirun+=("$2"); shift 2 ;;
        --) shift; break ;;
        -h|--help) usage ;;
        *) echo "two_hosts.sh: unknown option '$1' (the command goes after --)" >&2; usage ;;
    esac
done
[ $# -ge 1 ] || usage
case "$np" in ''|*[!0-9]*) echo "two_hosts.sh: --np needs a number, got '$np'" >&2; exit 2 ;; esac
[ "$np" -ge 2 ] || { echo "two_hosts.sh: --np must be at least 2 (one rank per host)" >&2; exit 2; }

verbose=${TWO_HOSTS_VERBOSE:-0}
say() { [ "$verbose" = 1 ] && echo "two_hosts.sh: $*" >&2; return 0; }

skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root to create network namespaces (running as uid $(id -u))"
command -v ip >/dev/null 2>&1 || skip "the 'ip' command (iproute2) is not installed"
MPIRUN=$(command -v mpirun 2>/dev/null) || skip "mpirun (Open MPI) is not on PATH"

# Per-run names: $$ keeps parallel runs apart. The veth ends are created directly inside the
# namespaces, so their (fixed) names never meet another run's in the root namespace; the
# subnets live inside the namespaces too, so two runs that pick the same X do not clash either.
ns1="shoal-mh-$$-h1"
ns2="shoal-mh-$$-h2"
iface=shoalmh0
octet=$(( ($$ % 250) + 1 ))
subnet="10.213.$octet.0/24"
addr1="10.213.$octet.1"
addr2="10.213.$octet.2"
workdir=$(mktemp -d "${TMPDIR:-/tmp}/shoal-two-hosts.$$.XXXXXX") || exit 1

mpirun_pid=
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    local rc=$? ns pid
    trap - EXIT INT TERM HUP
    # Interrupted while mpirun runs: let it end its ranks and daemons first (up to 5 s).
    if [ -n "$mpirun_pid" ] && kill -0 "$mpirun_pid" 2>/dev/null; then
        kill -TERM "$mpirun_pid" 2>/dev/null
        for _ in $(seq 1 50); do
            kill -0 "$mpirun_pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    for ns in "$ns1" "$ns2"; do
        if ip netns pids "$ns" >/dev/null 2>&1; then
            # Whatever still runs in our namespaces (a daemon left by a killed mpirun) is ours.
            for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
            ip netns del "$ns" 2>/dev/null
        fi
    done
    rm -rf "$workdir"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Namespaces left by an earlier run that was killed with SIGKILL (its pid is gone): remove them.
for stale in $(ip netns list 2>/dev/null | sed -n 's/^\(shoal-mh-\([0-9]*\)-h[12]\)\( .*\)\{0,1\}$/\1 \2/p' |
               while read -r name pid; do kill -0 "$pid" 2>/dev/null || echo "$name"; done); do
    for pid in $(ip netns pids "$stale" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    ip netns del "$stale" 2>/dev/null && say "removed the stale namespace $stale"
done

if ! err=$(ip netns add "$ns1" 2>&1); then
    skip "cannot create a network namespace ('ip netns add' failed: ${err:-no message})"
fi
if ! err=$(ip netns add "$ns2" 2>&1); then
    skip "cannot create a second network namespace: ${err:-no message}"
fi
setup() {
    ip link add "$iface" netns "$ns1" type veth peer name "$iface" netns "$ns2" &&
    ip -n "$ns1" addr add "$addr1/24" dev "$iface" &&
    ip -n "$ns2" addr add "$addr2/24" dev "$iface" &&
    ip -n "$ns1" link set lo up && ip -n "$ns2" link set lo up &&
    ip -n "$ns1" link set "$iface" up && ip -n "$ns2" link set "$iface" up
}
if ! err=$(setup 2>&1); then
    skip "cannot set up the veth pair between the namespaces: ${err:-no message}"
fi
# The link takes a moment to come up; wait until host 1 reaches host 2 (ping if we have it).
for _ in $(seq 1 50); do
    state=$(ip -n "$ns1" -o link show "$iface" 2>/dev/null)
    case "$state" in *"state UP"*|*"LOWER_UP"*) break ;; esac
    sleep 0.1
done
if command -v ping >/dev/null 2>&1; then
    ip netns exec "$ns1" ping -c 1 -W 2 "$addr2" >/dev/null 2>&1 ||
        skip "host 1 ($addr1) cannot reach host 2 ($addr2) over the veth pair"
fi
say "host 1 = namespace $ns1, $addr1; host 2 = namespace $ns2, $addr2; interface $iface; subnet $subnet"

hostfile="$workdir/hosts"
slots1=$(( (np + 1) / 2 ))
slots2=$(( np / 2 ))
printf '%s slots=%d\n%s slots=%d\n' "$addr1" "$slots1" "$addr2" "$slots2" >"$hostfile"

# The agent Open MPI runs in place of ssh: `AGENT [ssh options] HOST COMMAND...`. Like ssh,
# it joins the command's words with spaces and hands the line to a shell on the "host", with
# a fresh environment (ssh does not carry the caller's; what the ranks need travels with -x).
agent="$workdir/netns-ssh"
cat >"$agent" <<EOF
#!/bin/sh
# plm_rsh_agent for tests/multihost/two_hosts.sh: ssh into a network namespace.
while [ \$# -gt 0 ]; do
    case "\$1" in
        --) shift; break ;;
        -[bcDEeFIiJLlmOoPpQRSWw]) shift 2 ;;   # ssh options that take an argument
        -[bcDEeFIiJLlmOoPpQRSWw]?*) shift ;;   # ... given in the same word (-p22)
        -*) shift ;;                            # flags: -x -X -T -t -q -n -A -a -C -4 -6 -v ...
        *) break ;;
    esac
done
[ \$# -ge 1 ] || { echo "netns-ssh: no host" >&2; exit 255; }
host=\$1; shift
case "\$host" in
    *@*) host=\${host#*@} ;;
esac
case "\$host" in
    $addr1) ns=$ns1 ;;
    $addr2) ns=$ns2 ;;
    *) echo "netns-ssh: unknown host '\$host' (this harness knows $addr1 and $addr2)" >&2; exit 255 ;;
esac
[ "$verbose" = 1 ] && echo "netns-ssh: \$host -> \$ns: \$*" >&2
exec ip netns exec "\$ns" env -i PATH="\$PATH" HOME="\${HOME:-/root}" \\
    \${LD_LIBRARY_PATH:+LD_LIBRARY_PATH="\$LD_LIBRARY_PATH"} \\
    \${TMPDIR:+TMPDIR="\$TMPDIR"} LANG=C \\
    sh -c "\$*"
EOF
chmod +x "$agent"

export TWO_HOSTS_SUBNET="$subnet"
export TWO_HOSTS_IFACE="$iface"
export TWO_HOSTS_ADDRS="$addr1,$addr2"
# Forward those and every SHOAL_* variable by name (mpirun's -x takes one variable per option).
xargs_=(-x TWO_HOSTS_SUBNET -x TWO_HOSTS_IFACE -x TWO_HOSTS_ADDRS)
while IFS= read -r name; do
    case "$name" in SHOAL_*) xargs_+=(-x "$name") ;; esac
done < <(compgen -e)
for v in "${extra_env[@]+"${extra_env[@]}"}"; do xargs_+=(-x "$v"); done

# shellcheck disable=SC2054  # "tcp,self" is one argument
mpirun_cmd=(
    "$MPIRUN" --allow-run-as-root --oversubscribe --bind-to none
    --hostfile "$hostfile" -np "$np"
    --mca plm_rsh_agent "$agent"
    --mca plm_rsh_no_tree_spawn 1
    --mca btl tcp,self
    --mca btl_tcp_if_include "$subnet"
    --mca oob_tcp_if_include "$subnet"
    "${xargs_[@]}"
    "${extra_mpirun[@]+"${extra_mpirun[@]}"}"
    "$@"
)
say "ip netns exec $ns1 ${mpirun_cmd[*]}"
# Not exec: the EXIT trap must still remove the namespaces. mpirun runs in the background so
# that a SIGTERM to this script is handled at once (the trap then kills what is left).
ip netns exec "$ns1" "${mpirun_cmd[@]}" 0<&0 &
mpirun_pid=$!
wait "$mpirun_pid"
exit $?
