#!/usr/bin/env python3
"""The harness behind bench/run (issue 14): seedcore against its peers on the lab.

Standard library only. bench/run brings the lab up and prepares it; this file writes the
contenders' configurations, times the cases (contenders alternating), and writes
bench/results.md.

  harness.py selftest                           stats, goals and report on synthetic timings
  harness.py render  --work DIR --bin B         every configuration, offline (no lab)
  harness.py scale   --work DIR --bin B ...     plan at 1/8/32 hosts, memory, dry runs 3/8
  harness.py cluster --work DIR --bin B ...     3 hosts: converged plan, bring-up, re-apply,
                                                tear-down (seedcore vs ray up / ray down)
  harness.py report  --work DIR --out FILE      bench/results.md from the phases' JSON
"""

import argparse
import hashlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB = os.path.join(ROOT, ".lab")
KEY = os.path.join(LAB, "ssh", "id_ed25519")
KNOWN = os.path.join(LAB, "ssh", "known_hosts")
RAY_IMAGE = "seedcore-ray:lab"
TINY_IMAGE = "seedcore-bench-tiny:1"
CLUSTER = "bench"  # seedcore's cluster name in every bench config
RAY_CLUSTER = "seedbench"  # ray up's cluster_name
RAY_CONTAINER = "ray_bench"
TARGET_PY = "/opt/seedcore-bench/py/bin/python"  # Ansible's interpreter on lab hosts
GCS_PORT = 6380


def host_ip(k):
    return "10.77.0.%d" % (10 + k)


def log(msg):
    print("harness: " + msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ running and timing


def run(cmd, env=None, timeout=900, out=None, shell=False, peak=False):
    """Runs cmd (stdin closed). Returns dict(rc, wall, rss_kb, tail). rss_kb is wait4's
    ru_maxrss: the largest of the process and its waited-for children. A child forked by
    this Python process starts from this process's own size (ru_maxrss keeps what it had
    before exec), so with `peak` the command runs under GNU time, whose few MB are all it
    inherits, and rss_kb is the command's own peak (and its children's: seedcore's ssh
    processes), from time's %M. Its wall time includes time's exec (~1 ms)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    peak_file = None
    if peak:
        fd, peak_file = tempfile.mkstemp(prefix="peak.")
        os.close(fd)
        cmd = ["/usr/bin/time", "-o", peak_file, "-f", "%M"] + list(cmd)
    with tempfile.TemporaryFile() as f:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                             env=full_env, shell=shell)
        # A blocking wait (no polling: this process takes no CPU from the
        # command it times); a timer kills the command at the timeout.
        killer = threading.Timer(timeout, p.kill)
        killer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        f.seek(0)
        text = f.read().decode("utf-8", "replace")
    rss_kb = ru.ru_maxrss
    if peak_file:
        with open(peak_file) as pf:
            lines = [l for l in pf.read().split() if l.isdigit()]
        os.unlink(peak_file)
        rss_kb = int(lines[-1]) if lines else None
    if out:
        with open(out, "w") as o:
            o.write(text)
    return {"rc": p.returncode, "wall": wall, "rss_kb": rss_kb, "tail": text[-3000:]}


def must(res, what, ok=(0,)):
    if res["rc"] not in ok:
        sys.stderr.write(res["tail"] + "\n")
        raise SystemExit("harness: `%s` exited %s (expected %s)" % (what, res["rc"], ok))
    return res


def ssh_cmd(host, remote, fresh=True, kex=None):
    args = ["ssh", "-F", "/dev/null", "-i", KEY, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + KNOWN,
            "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"]
    if fresh:
        args += ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
    if kex:
        args += ["-o", "KexAlgorithms=" + kex]
    return args + ["root@" + host, remote]


def floor_cmd(host, kex=None):
    return ssh_cmd(host, "docker ps --filter label=io.seedcore.cluster=%s --format '{{json .}}'" % CLUSTER,
                   kex=kex)


# The key exchange OpenSSH 9.2 picks by default, and the classical one it falls back to: on
# these 2 cores the first costs the client about 70 ms of CPU per connection, the second a few
# (measured: `time ssh host true`), which bounds any tool that opens 32 connections at once.
KEX_DEFAULT = "sntrup761x25519-sha512@openssh.com"
KEX_CLASSIC = "curve25519-sha256"


def time_parallel(cmds):
    """Starts every command at once, waits for all: wall time and whether all exited 0."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for c in cmds]
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - t0
    bad = [(c, p.returncode, o[-500:]) for c, p, o in zip(cmds, procs, outs) if p.returncode]
    if bad:
        raise SystemExit("harness: floor command failed: %r" % (bad[0],))
    return {"rc": 0, "wall": wall, "rss_kb": 0, "tail": ""}


def ssh_out(host, remote):
    r = subprocess.run(ssh_cmd(host, remote), stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=120)
    return r.returncode, r.stdout


# ------------------------------------------------------------------ statistics and goals


def stats(xs):
    xs = [float(x) for x in xs]
    if not xs:
        return None
    return {"n": len(xs), "median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def fmt_s(st):
    if not st:
        return "n/a"
    if st["n"] == 1:
        return "%.2f s (1 run)" % st["median"]
    return "%.2f s (%.2f-%.2f, n=%d)" % (st["median"], st["min"], st["max"], st["n"])


def ratio(a, b):
    if not a or not b or b["median"] <= 0:
        return None
    return a["median"] / b["median"]


def verdict(value, op, limit):
    if value is None:
        return "not measured"
    ok = {"<=": value <= limit, ">=": value >= limit, "<": value < limit}[op]
    return "met" if ok else "NOT met"


# ------------------------------------------------------------------ configurations


def seedcore_toml(hosts, image, serve=False, persist=0):
    """head on hosts[0], one worker on each further host (group `remote`); `persist`:
    ssh.persist (connections kept open for the next command)."""
    q = lambda s: json.dumps(s)  # TOML basic strings accept JSON string escapes
    lines = [
        "# Written by bench/harness.py (issue 14).",
        "[cluster]",
        "name = %s" % q(CLUSTER),
        "image = %s" % q(image),
        'image_source = "push"',
        "",
        "[ssh]",
        'user = "root"',
        "port = 22",
        "identity_file = %s" % q(KEY),
        "known_hosts_file = %s" % q(KNOWN),
        'known_hosts = "strict"',
    ] + (["persist = %d" % persist] if persist else []) + [
        "",
        "[head]",
        "host = %s" % q(hosts[0]),
        "cpus = 1",
        'shm_size = "512m"',
        "serve = %s" % ("true" if serve else "false"),
    ]
    if len(hosts) > 1:
        lines += ["", "[workers.remote]", "hosts = [%s]" % ", ".join(q(h) for h in hosts[1:]),
                  "count = 1", "cpus = 1", 'shm_size = "512m"', "worker_ports_per_node = 7"]
    return "\n".join(lines) + "\n"


def yaml_dump(obj, indent=0):
    """A small YAML emitter: block mappings and lists, every string double-quoted
    (JSON escapes are valid YAML), so nothing is read back as another type."""
    pad = "  " * indent
    out = []
    if isinstance(obj, dict):
        if not obj:
            return pad + "{}\n"
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                out.append("%s%s:\n%s" % (pad, k, yaml_dump(v, indent + 1)))
            else:
                out.append("%s%s: %s\n" % (pad, k, yaml_scalar(v)))
    elif isinstance(obj, list):
        if not obj:
            return pad + "[]\n"
        for v in obj:
            if isinstance(v, (dict, list)) and v:
                inner = yaml_dump(v, indent + 1).lstrip(" ")
                out.append("%s- %s" % (pad, inner))
            else:
                out.append("%s- %s\n" % (pad, yaml_scalar(v)))
    else:
        out.append(pad + yaml_scalar(obj) + "\n")
    return "".join(out)


def yaml_scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, dict):
        return "{}"
    if isinstance(v, list):
        return "[]"
    return json.dumps(str(v), ensure_ascii=False)


def ray_config(hosts):
    """ray up's cluster: local provider, docker section, same image and hosts; the
    workarounds PEERS.md found necessary are marked (W1..W5, see results.md)."""
    route_ip = "$(ip -4 -o route get $RAY_HEAD_IP | sed -n 's/.* src \\([0-9.]*\\).*/\\1/p')"
    return {
        "cluster_name": RAY_CLUSTER,
        "max_workers": len(hosts) - 1,
        "min_workers": len(hosts) - 1,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "provider": {"type": "local", "head_ip": hosts[0], "worker_ips": hosts[1:]},
        "auth": {"ssh_user": "root", "ssh_private_key": KEY},
        "docker": {
            "image": RAY_IMAGE,
            "container_name": RAY_CONTAINER,
            "pull_before_run": False,
            "run_options": [
                "--shm-size=512m",  # seedcore's nodes get the same
                "-e RAY_USAGE_STATS_ENABLED=0",  # W4
                # W2: rsync inside the container without changing the image (bind-mounted
                # from the lab host, where bench/run installs Debian's rsync and libpopt0).
                "-v /usr/bin/rsync:/usr/bin/rsync:ro",
                "-v /usr/lib/x86_64-linux-gnu/libpopt.so.0.0.2:/usr/lib/x86_64-linux-gnu/libpopt.so.0:ro",
            ],
        },
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        # W3: /etc/profile (bash --login) resets PATH; the image's Ray is in /opt/ray/bin.
        "setup_commands": [
            "grep -q /opt/ray/bin ~/.bashrc 2>/dev/null || echo 'export PATH=/opt/ray/bin:$PATH' >> ~/.bashrc"
        ],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [
            "ray stop",
            "ulimit -n 65536; ray start --head --port=%d --num-cpus=1 --dashboard-host=0.0.0.0"
            " --autoscaling-config=~/ray_bootstrap_config.yaml" % GCS_PORT,
        ],
        "worker_start_ray_commands": [
            "ray stop",
            # W5: the node's address from the route to the head, not from eth0.
            "ulimit -n 65536; ray start --address=$RAY_HEAD_IP:%d --num-cpus=1 --node-ip-address=%s"
            % (GCS_PORT, route_ip),
        ],
    }


RAY_ENV = {"RAY_UP_enable_autoscaler_v2": "0", "RAY_USAGE_STATS_ENABLED": "0"}  # W1, W4


def ansible_files(plan, hosts):
    """ansible.cfg, inventory and playbook creating exactly the containers of a saved
    seedcore plan (`seedcore plan --out`): same names, image, command, environment,
    labels (computed as seedcore computes them), limits and policies."""
    cluster = plan["plan"]["cluster"]
    per_host = {h: [] for h in hosts}
    for ch in plan["plan"]["changes"]:
        spec = ch.get("after")
        if not spec or ch.get("action") not in ("create", "replace"):
            continue
        canonical = json.dumps(spec, separators=(",", ":"), ensure_ascii=False)
        labels = {
            "io.seedcore.cluster": cluster["name"],
            "io.seedcore.cluster-id": cluster["id"],
            "io.seedcore.head": hosts[0],
            "io.seedcore.host": spec["host"],
            "io.seedcore.index": str(spec["index"]),
            "io.seedcore.ports": json.dumps(spec["ports"], separators=(",", ":")),
            "io.seedcore.role": spec["role"],
            "io.seedcore.node": spec["name"],
            "io.seedcore.schema": "2",
            "io.seedcore.spec-hash": hashlib.sha256(canonical.encode()).hexdigest(),
        }
        if spec.get("group"):
            labels["io.seedcore.group"] = spec["group"]
        if len(canonical) <= 16 * 1024:
            labels["io.seedcore.spec"] = canonical
        per_host[spec["host"]].append({
            "name": spec["name"],
            "image": spec["image"],
            "command": spec["command"],
            "env": {k: str(v) for k, v in spec["env"].items()},
            "labels": labels,
            "network_mode": spec["network_mode"],
            "restart_policy": spec["restart_policy"],
            "init": bool(spec["init"]),
            "cpus": float(spec["cpus"]),
            "shm_size": str(spec["shm_size_bytes"]),
        })
    cfg = "\n".join([
        "# Written by bench/harness.py (issue 14). Ansible's documented speed-ups are on:",
        "# SSH pipelining, enough forks for every host, no fact gathering (the play needs none).",
        "[defaults]",
        "forks = 50",
        "host_key_checking = True",
        "retry_files_enabled = False",
        "interpreter_python = " + TARGET_PY,
        "",
        "[ssh_connection]",
        "pipelining = True",
        "",
    ])
    inventory = {"all": {"vars": {
        "ansible_user": "root",
        "ansible_ssh_private_key_file": KEY,
        "ansible_ssh_common_args": "-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes" % KNOWN,
        "ansible_python_interpreter": TARGET_PY,
    }, "hosts": {h: {"containers": per_host[h]} for h in hosts}}}
    playbook = [{
        "name": "seedcore's containers, with community.docker.docker_container",
        "hosts": "all",
        "gather_facts": False,
        "tasks": [{
            "name": "node container",
            "community.docker.docker_container": {
                "name": "{{ item.name }}",
                "image": "{{ item.image }}",
                "command": "{{ item.command }}",
                "env": "{{ item.env }}",
                "labels": "{{ item.labels }}",
                "network_mode": "{{ item.network_mode }}",
                "restart_policy": "{{ item.restart_policy }}",
                "init": "{{ item.init }}",
                "cpus": "{{ item.cpus }}",
                "shm_size": "{{ item.shm_size }}",
                "state": "started",
            },
            "loop": "{{ containers }}",
            "loop_control": {"label": "{{ item.name }}"},
        }],
    }]
    return {"ansible.cfg": cfg, "inventory.yml": yaml_dump(inventory),
            "playbook.yml": "---\n" + yaml_dump(playbook)}


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def hosts_of(n):
    return [host_ip(k) for k in range(1, n + 1)]


def sc(bin_, cfg, *args):
    return [bin_, "-c", cfg] + list(args)


SC_ENV = {"NO_COLOR": "1"}


def saved_plan(bin_, cfg, out, observed=None):
    args = ["plan", "--out", out] + (["--observed", observed] if observed else [])
    must(run(sc(bin_, cfg, *args), env=SC_ENV), "seedcore plan --out")
    with open(out) as f:
        return json.load(f)


def ansible_dir(work, n, bin_, observed=None):
    d = os.path.join(work, "ansible-%d" % n)
    os.makedirs(d, exist_ok=True)
    cfg = os.path.join(work, "seedcore-tiny-%d.toml" % n)
    plan = saved_plan(bin_, cfg, os.path.join(d, "seedcore-plan.json"), observed)
    for name, text in ansible_files(plan, hosts_of(n)).items():
        write(os.path.join(d, name), text)
    return d


def ansible_cmd(d, venv):
    return [os.path.join(venv, "bin", "ansible-playbook"), "-i", os.path.join(d, "inventory.yml"),
            "--check", "--diff", os.path.join(d, "playbook.yml")]


def ansible_env(d, venv):
    return {"ANSIBLE_CONFIG": os.path.join(d, "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
            "PATH": os.path.join(venv, "bin") + ":" + os.environ.get("PATH", "")}


def ansible_fresh(d, venv):
    """ansible --check with Ansible's own settings but none of the connections an earlier run
    left open (ControlPersist): a control-path directory of its own, emptied afterwards.
    Returns the run's result."""
    cp = tempfile.mkdtemp(prefix="acp.", dir="/tmp")
    try:
        env = dict(ansible_env(d, venv), ANSIBLE_SSH_CONTROL_PATH_DIR=cp)
        return must(run(ansible_cmd(d, venv), env=env), "ansible --check (fresh connections)")
    finally:
        for s in os.listdir(cp):
            subprocess.run(["ssh", "-o", "ControlPath=" + os.path.join(cp, s), "-O", "exit", "x"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(["rm", "-rf", cp])


def render_all(work, bin_, observed_dir=None):
    """Every configuration. With observed_dir, seedcore's saved plans come from synthetic
    empty observations (offline); otherwise from the lab."""
    for n in (1, 3, 8, 32):
        write(os.path.join(work, "seedcore-tiny-%d.toml" % n), seedcore_toml(hosts_of(n), TINY_IMAGE))
        write(os.path.join(work, "seedcore-tiny-%d-kept.toml" % n),
              seedcore_toml(hosts_of(n), TINY_IMAGE, persist=KEPT_SECS))
    write(os.path.join(work, "seedcore-cluster.toml"), seedcore_toml(hosts_of(3), RAY_IMAGE))
    write(os.path.join(work, "ray-cluster.yaml"), yaml_dump(ray_config(hosts_of(3))))
    for n in (3, 8):
        obs = None
        if observed_dir:
            obs = write(os.path.join(observed_dir, "empty-%d.json" % n), json.dumps({
                "format_version": "1",
                "hosts": {h: {"reachable": True, "engine": {"version": "20.10.24", "api_version": "1.41",
                                                             "cpus": 2, "memory_bytes": 24 << 30},
                              "containers": []} for h in hosts_of(n)}}))
        ansible_dir(work, n, bin_, obs)


# ------------------------------------------------------------------ phase: scale (32-host lab)


def alternate(i, items):
    """Round i's order: rotated by i, so no contender always runs first."""
    k = i % len(items)
    return items[k:] + items[:k]


# seedcore with `ssh.persist` (connections kept open for the next command, as Ansible's
# ControlPersist): its own control directory, so that the default runs (which close the
# kept connections of their hosts) and these do not meet.
KEPT_SECS = 60
KEPT_ENV = dict(SC_ENV, XDG_RUNTIME_DIR="/tmp/sc-bench-kept")


def phase_scale(a):
    work, bin_, venv = a.work, a.bin, a.venv
    render_all(work, bin_)
    os.makedirs(KEPT_ENV["XDG_RUNTIME_DIR"], mode=0o700, exist_ok=True)
    res = {"plan_scale": {1: [], 8: [], 32: []}, "rss_kb": {1: [], 8: [], 32: []},
           "plan_kept": {1: [], 8: [], 32: []},
           "floor_scale": {1: [], 8: [], 32: []}, "floor_classic": {1: [], 32: []},
           "dry": {3: {"seedcore": [], "seedcore_kept": [], "ansible": [], "ansible_fresh": []},
                   8: {"seedcore": [], "seedcore_kept": [], "ansible": [], "ansible_fresh": []}}}
    cfg = lambda n: os.path.join(work, "seedcore-tiny-%d.toml" % n)
    kept = lambda n: os.path.join(work, "seedcore-tiny-%d-kept.toml" % n)
    log("warm-up (not timed): seedcore plan at 1/3/8/32 hosts, ansible --check at 3/8")
    for n in (1, 3, 8, 32):
        must(run(sc(bin_, cfg(n), "plan"), env=SC_ENV), "seedcore plan (%d hosts)" % n)
        must(run(sc(bin_, kept(n), "plan"), env=KEPT_ENV), "seedcore plan, kept (%d hosts)" % n)
    for n in (3, 8):
        d = os.path.join(work, "ansible-%d" % n)
        must(run(ansible_cmd(d, venv), env=ansible_env(d, venv)), "ansible-playbook --check (%d)" % n)
    for i in range(a.reps):
        log("plan at 1/8/32 hosts, round %d/%d" % (i + 1, a.reps))
        for n in alternate(i, [1, 8, 32]):
            for who in alternate(i, ["plan", "kept", "floor"]):
                if who == "plan":
                    r = must(run(sc(bin_, cfg(n), "plan"), env=SC_ENV, peak=True),
                             "seedcore plan (%d hosts)" % n)
                    res["plan_scale"][n].append(r["wall"])
                    res["rss_kb"][n].append(r["rss_kb"])
                elif who == "kept":
                    r = must(run(sc(bin_, kept(n), "plan"), env=KEPT_ENV),
                             "seedcore plan, kept (%d hosts)" % n)
                    res["plan_kept"][n].append(r["wall"])
                else:
                    res["floor_scale"][n].append(time_parallel([floor_cmd(h) for h in hosts_of(n)])["wall"])
        # What bounds the 32-host case: the same floor with the classical key exchange.
        for n in (1, 32):
            res["floor_classic"][n].append(
                time_parallel([floor_cmd(h, kex=KEX_CLASSIC) for h in hosts_of(n)])["wall"])
        log("dry run at 3/8 hosts, round %d/%d" % (i + 1, a.reps))
        for n in (3, 8):
            d = os.path.join(work, "ansible-%d" % n)
            for who in alternate(i, ["seedcore", "seedcore_kept", "ansible", "ansible_fresh"]):
                if who == "seedcore":
                    r = must(run(sc(bin_, cfg(n), "plan"), env=SC_ENV), "seedcore plan (%d)" % n)
                elif who == "seedcore_kept":
                    r = must(run(sc(bin_, kept(n), "plan"), env=KEPT_ENV), "seedcore plan, kept (%d)" % n)
                elif who == "ansible":
                    r = must(run(ansible_cmd(d, venv), env=ansible_env(d, venv)), "ansible --check (%d)" % n)
                else:
                    r = ansible_fresh(d, venv)
                res["dry"][n][who].append(r["wall"])
    save(work, "scale", res)


# ------------------------------------------------------------------ phase: cluster (3-host lab)

STATE_SCRIPT = r"""
import json, os, urllib.request
tok = os.environ.get('RAY_AUTH_TOKEN')
p = os.environ.get('RAY_AUTH_TOKEN_PATH')
if not tok and p and os.path.exists(p):
    tok = open(p).read().strip()
req = urllib.request.Request('http://127.0.0.1:8265/api/v0/nodes?limit=1000&detail=1&timeout=10')
if tok:
    req.add_header('Authorization', 'Bearer ' + tok)
d = json.load(urllib.request.urlopen(req, timeout=15))
print(json.dumps(sorted(n['node_id'] for n in d['data']['result']['result'] if n['state'] == 'ALIVE')))
"""


def alive_ids(container):
    """Ray's ALIVE node IDs, asked inside the head container (token from its env)."""
    rc, out = ssh_out(host_ip(1), "docker exec %s python3 -c %s" % (container, shlex.quote(STATE_SCRIPT)))
    try:
        return json.loads(out.strip().splitlines()[-1]) if rc == 0 else None
    except (ValueError, IndexError):
        return None


def containers_snapshot(filter_):
    snap = {}
    for k in (1, 2, 3):
        rc, out = ssh_out(host_ip(k), "for c in $(docker ps -aq %s); do docker inspect -f "
                          "'{{.Name}} {{.Id}} {{.State.StartedAt}} {{.RestartCount}}' $c; done" % filter_)
        snap[host_ip(k)] = sorted(l for l in out.split("\n") if l.strip()) if rc == 0 else None
    return snap


def poll_alive(want, t0, timeout=240):
    """Polls the ray-up head's state API (what `ray list nodes` reads) from this machine
    every 0.2 s: seconds since t0 when `want` nodes are ALIVE, and their IDs."""
    url = "http://%s:8265/api/v0/nodes?limit=1000&detail=1&timeout=5" % host_ip(1)
    while time.perf_counter() - t0 < timeout:
        try:
            d = json.load(urllib.request.urlopen(url, timeout=5))
            ids = sorted(n["node_id"] for n in d["data"]["result"]["result"] if n["state"] == "ALIVE")
            if len(ids) >= want:
                return time.perf_counter() - t0, ids
        except Exception:  # not up yet: refused, 5xx, partial JSON
            pass
        time.sleep(0.2)
    raise SystemExit("harness: ray up: %d nodes were not ALIVE within %d s" % (want, timeout))


def ray_leftovers():
    left = {}
    for k in (1, 2, 3):
        rc, out = ssh_out(host_ip(k), "docker ps -aq --filter name=^%s$" % RAY_CONTAINER)
        if out.strip():
            left[host_ip(k)] = out.split()
    return left


def phase_cluster(a):
    work, bin_, venv = a.work, a.bin, a.venv
    cfg = write(os.path.join(work, "seedcore-cluster.toml"), seedcore_toml(hosts_of(3), RAY_IMAGE))
    ycfg = write(os.path.join(work, "ray-cluster.yaml"), yaml_dump(ray_config(hosts_of(3))))
    ray = os.path.join(venv, "bin", "ray")
    renv = dict(RAY_ENV, PATH=os.path.join(venv, "bin") + ":" + os.environ.get("PATH", ""))
    seed_filter = "--filter label=io.seedcore.cluster=%s" % CLUSTER
    res = {"sc": {"up": [], "reapply": [], "plan": [], "floor": [], "down": [], "restarted": []},
           "ray": {"up_return": [], "up_alive": [], "norestart": [], "restart_return": [],
                   "restart_alive": [], "down": [], "norestart_restarted": [], "restart_restarted": []},
           "notes": []}
    log("clean start (not timed): ray down, seedcore destroy")
    run([ray, "down", "-y", ycfg], env=renv, timeout=300)
    must(run(sc(bin_, cfg, "destroy", "--auto-approve"), env=SC_ENV), "seedcore destroy")
    left = ray_leftovers()
    if left:
        raise SystemExit("harness: ray containers remain after ray down: %r" % left)

    def seedcore_round(i):
        r = must(run(sc(bin_, cfg, "apply", "--auto-approve"), env=SC_ENV, timeout=600,
                     out=os.path.join(work, "sc-up-%d.log" % i)), "seedcore apply (from empty)")
        res["sc"]["up"].append(r["wall"])
        must(run(sc(bin_, cfg, "status"), env=SC_ENV), "seedcore status after apply")
        before = (containers_snapshot(seed_filter), alive_ids("%s-ray-head" % CLUSTER))
        r = must(run(sc(bin_, cfg, "apply", "--auto-approve"), env=SC_ENV), "seedcore apply (no change)")
        res["sc"]["reapply"].append(r["wall"])
        after = (containers_snapshot(seed_filter), alive_ids("%s-ray-head" % CLUSTER))
        res["sc"]["restarted"].append(before != after or before[1] is None)
        for j in range(a.reps):
            for who in alternate(i + j, ["plan", "floor"]):
                if who == "plan":
                    r = must(run(sc(bin_, cfg, "plan"), env=SC_ENV), "seedcore plan (converged)")
                else:
                    r = time_parallel([floor_cmd(h) for h in hosts_of(3)])
                res["sc"][who].append(r["wall"])
        r = must(run(sc(bin_, cfg, "destroy", "--auto-approve"), env=SC_ENV), "seedcore destroy")
        res["sc"]["down"].append(r["wall"])
        if any(containers_snapshot(seed_filter).values()):
            raise SystemExit("harness: seedcore containers remain after destroy")

    def ray_round(i):
        t0 = time.perf_counter()
        r = must(run([ray, "up", "-y", ycfg], env=renv, timeout=600,
                     out=os.path.join(work, "ray-up-%d.log" % i)), "ray up -y (from empty)")
        res["ray"]["up_return"].append(r["wall"])
        alive_at, ids0 = poll_alive(3, t0)
        res["ray"]["up_alive"].append(alive_at)
        snap0 = containers_snapshot("--filter name=^%s$" % RAY_CONTAINER)
        r = must(run([ray, "up", "-y", "--no-restart", ycfg], env=renv, timeout=600,
                     out=os.path.join(work, "ray-norestart-%d.log" % i)), "ray up -y --no-restart")
        res["ray"]["norestart"].append(r["wall"])
        _, ids1 = poll_alive(3, time.perf_counter())
        res["ray"]["norestart_restarted"].append(
            ids1 != ids0 or containers_snapshot("--filter name=^%s$" % RAY_CONTAINER) != snap0)
        t0 = time.perf_counter()
        r = must(run([ray, "up", "-y", ycfg], env=renv, timeout=600,
                     out=os.path.join(work, "ray-reup-%d.log" % i)), "ray up -y (nothing changed)")
        res["ray"]["restart_return"].append(r["wall"])
        # ALIVE again: three ALIVE nodes none of which is one of the old ones.
        deadline = t0 + 240
        while True:
            at, ids2 = poll_alive(3, t0)
            if not set(ids2) & set(ids1) or time.perf_counter() > deadline:
                break
            time.sleep(0.2)
        res["ray"]["restart_alive"].append(at)
        res["ray"]["restart_restarted"].append(ids2 != ids1)
        r = must(run([ray, "down", "-y", ycfg], env=renv, timeout=600,
                     out=os.path.join(work, "ray-down-%d.log" % i)), "ray down -y")
        res["ray"]["down"].append(r["wall"])
        left = ray_leftovers()
        if left:
            res["notes"].append("round %d: `ray down -y` left containers %r; removed (not timed)" % (i + 1, left))
            for h, ids in left.items():
                ssh_out(h, "docker rm -f " + " ".join(ids))

    for i in range(a.rounds):
        for who in alternate(i, ["seedcore", "ray"]):
            log("round %d/%d: %s" % (i + 1, a.rounds, who))
            (seedcore_round if who == "seedcore" else ray_round)(i)
    save(work, "cluster", res)


# ------------------------------------------------------------------ results


def save(work, name, res):
    with open(os.path.join(work, name + ".json"), "w") as f:
        json.dump(res, f, indent=1)


def load(work, name):
    p = os.path.join(work, name + ".json")
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)


def key(d, k):
    """JSON turns int keys into strings."""
    return d.get(k, d.get(str(k))) if d else None


def image_ratio(text):
    """bench/image-bench's table: seedcore push's throughput ratio, e.g. `(0.96x)`."""
    for line in (text or "").splitlines():
        if line.startswith("| seedcore push (full image)"):
            i = line.rfind("(")
            j = line.find("x)", i)
            if i >= 0 and j > i:
                try:
                    return float(line[i + 1:j])
                except ValueError:
                    return None
    return None


def rows(scale, cluster, image_text):
    """The issue's table: (case, seedcore, peer, ratio text, goal, verdict)."""
    out = []
    c = cluster or {}
    sc_, ry = c.get("sc", {}), c.get("ray", {})
    plan3, floor3 = stats(sc_.get("plan", [])), stats(sc_.get("floor", []))
    r = ratio(plan3, floor3)
    out.append(("plan, converged, 3 hosts", fmt_s(plan3), "floor: " + fmt_s(floor3),
                fx(r), "<= 1.1x floor", verdict(r, "<=", 1.1)))
    ps = {n: stats(key(scale, "plan_scale") and key(scale["plan_scale"], n) or []) for n in (1, 8, 32)}
    fs = {n: stats(key(scale, "floor_scale") and key(scale["floor_scale"], n) or []) for n in (1, 8, 32)}
    r = ratio(ps[32], ps[1])
    floor_note = ""
    if fs[32]:
        floor_note = "; the floor at 1 / 8 / 32 hosts: %s (32 hosts: %s its 1 host; seedcore at 32: %s the floor at 32)" % (
            " / ".join(fmt_s(fs[n]) for n in (1, 8, 32)), fx(ratio(fs[32], fs[1])), fx(ratio(ps[32], fs[32])))
    out.append(("plan, 1 / 8 / 32 hosts", " / ".join(fmt_s(ps[n]) for n in (1, 8, 32)),
                "itself at 1 host" + floor_note, "32 hosts: " + fx(r), "32 hosts <= 2x 1 host",
                verdict(r, "<=", 2.0)))
    pk = {n: stats(key(scale, "plan_kept") and key(scale["plan_kept"], n) or []) for n in (1, 8, 32)}
    if pk[32]:
        r = ratio(pk[32], pk[1])
        out.append(("plan, 1 / 8 / 32 hosts, `ssh.persist = %d`" % KEPT_SECS,
                    " / ".join(fmt_s(pk[n]) for n in (1, 8, 32)),
                    "itself at 1 host (connections kept open by the previous run, as Ansible's)",
                    "32 hosts: " + fx(r), "32 hosts <= 2x 1 host", verdict(r, "<=", 2.0)))
    for n in (3, 8):
        d = key(key(scale, "dry") if scale else None, n) or {}
        s, p = stats(d.get("seedcore", [])), stats(d.get("ansible", []))
        pf = stats(d.get("ansible_fresh", []))
        r = ratio(p, s)
        fresh = ""
        if pf:
            fresh = " (its connections from the previous run kept open: ControlPersist); with fresh connections: %s, %.1fx" % (
                fmt_s(pf), ratio(pf, s))
        out.append(("dry run, %d hosts" % n, fmt_s(s), "ansible --check --diff: " + fmt_s(p) + fresh,
                    ("%.1fx faster" % r) if r else "n/a", ">= 5x faster", verdict(r, ">=", 5.0)))
        sk = stats(d.get("seedcore_kept", []))
        if sk:
            r = ratio(p, sk)
            out.append(("dry run, %d hosts, `ssh.persist = %d`" % (n, KEPT_SECS), fmt_s(sk),
                        "ansible --check --diff, both keeping their connections open: " + fmt_s(p),
                        ("%.1fx faster" % r) if r else "n/a", ">= 5x faster", verdict(r, ">=", 5.0)))
    up, ray_up = stats(sc_.get("up", [])), stats(ry.get("up_alive", []))
    r = ratio(up, ray_up)
    out.append(("bring-up, empty -> 3 ALIVE", fmt_s(up), "ray up until ALIVE: %s (returns: %s)"
                % (fmt_s(ray_up), fmt_s(stats(ry.get("up_return", [])))), fx(r), "<= 0.5x", verdict(r, "<=", 0.5)))
    re, nr = stats(sc_.get("reapply", [])), stats(ry.get("norestart", []))
    rs, rsa = stats(ry.get("restart_return", [])), stats(ry.get("restart_alive", []))
    r = ratio(re, nr)
    restarted = sc_.get("restarted", [])
    nothing = bool(restarted) and not any(restarted)
    v = verdict(r, "<=", 0.3)
    if restarted and not nothing:
        v = "NOT met (restarted)"
    out.append(("re-apply, nothing changed", fmt_s(re) + ("; restarts nothing" if nothing else
                                                          "; restarted something" if restarted else ""),
                "--no-restart: %s; ray up -y: %s (ALIVE again: %s)" % (fmt_s(nr), fmt_s(rs), fmt_s(rsa)),
                fx(r) + " of --no-restart", "restarts nothing; <= 0.3x", v))
    dn, rd = stats(sc_.get("down", [])), stats(ry.get("down", []))
    r = ratio(dn, rd)
    out.append(("tear down", fmt_s(dn), "ray down -y: " + fmt_s(rd), fx(r), "<= 0.15x", verdict(r, "<=", 0.15)))
    r = image_ratio(image_text)
    out.append(("image to 3 hosts", "seedcore push", "docker save | ssh docker load",
                ("%.2fx throughput" % r) if r else "n/a", ">= 0.9x throughput", verdict(r, ">=", 0.9)))
    rss = key(scale, "rss_kb") if scale else None
    rss32 = key(rss, 32) if rss else None
    peak = max(rss32) if rss32 else None
    out.append(("memory, plan at 32 hosts", ("peak RSS %.1f MB (%d KiB, max of %d)" % (peak * 1024 / 1e6, peak, len(rss32)))
                if peak else "n/a", "-", "-", "< 20 MB", verdict(peak * 1024 / 1e6 if peak else None, "<", 20.0)))
    return out


def fx(r):
    return ("%.2fx" % r) if r is not None else "n/a"


def md_table(rows_):
    lines = ["| case | seedcore | peer / baseline | ratio | goal | |", "|---|---|---|---|---|---|"]
    for row in rows_:
        lines.append("| " + " | ".join(str(x).replace("|", "\\|") for x in row) + " |")
    return "\n".join(lines)


def report(work, out, meta=None):
    scale, cluster = load(work, "scale"), load(work, "cluster")
    image_text = None
    if os.path.exists(os.path.join(work, "image.txt")):
        with open(os.path.join(work, "image.txt")) as f:
            image_text = f.read()
    if meta is None:
        meta = load(work, "meta") or {}
    parts = ["# Benchmark: seedcore and its peers on the lab (issue 14)", "",
             "Written by `bench/run` (with `bench/harness.py`). Rerun: `sudo bench/run` from the repository "
             "root on a machine like the one below (it brings the lab up itself; nothing else may use the "
             "lab meanwhile).", ""]
    parts += ["## Setup", "", "| | |", "|---|---|"]
    for k, v in meta.get("setup", []):
        parts.append("| %s | %s |" % (k, str(v).replace("|", "\\|")))
    parts += ["", "## Results", "",
              "Medians, with min-max and the number of runs; ratios are seedcore's median over the peer's "
              "(or the baseline's), except \"faster\", the peer's over seedcore's. Contenders alternate "
              "within each round, and the first of each round rotates.", "",
              md_table(rows(scale, cluster, image_text)), ""]
    if scale:
        parts += ["### Raw timings: scale phase (s)", "", "```", json.dumps(scale, indent=1), "```", ""]
    if cluster:
        parts += ["### Raw timings: cluster phase (s)", "", "```", json.dumps(cluster, indent=1), "```", ""]
        for n in cluster.get("notes", []):
            parts.append("- " + n)
    if image_text:
        parts += ["### Image transfer (bench/image-bench)", "", image_text.strip(), ""]
    fc = key(scale, "floor_classic") if scale else None
    if fc and key(fc, 32):
        c1, c32 = stats(key(fc, 1) or []), stats(key(fc, 32) or [])
        parts += ["### The SSH key exchange at 32 hosts", "",
                  "The floor (`ssh HOST docker ps`, fresh connections, all hosts at once) with OpenSSH's "
                  "default key exchange (%s) and with `-o KexAlgorithms=%s`, in the same run:" % (KEX_DEFAULT, KEX_CLASSIC), "",
                  "| key exchange | 1 host | 32 hosts | 32 / 1 |", "|---|---|---|---|",
                  "| default | %s | %s | %s |" % (fmt_s(stats(key(key(scale, "floor_scale"), 1) or [])),
                                                 fmt_s(stats(key(key(scale, "floor_scale"), 32) or [])),
                                                 fx(ratio(stats(key(key(scale, "floor_scale"), 32) or []),
                                                          stats(key(key(scale, "floor_scale"), 1) or [])))),
                  "| %s | %s | %s | %s |" % (KEX_CLASSIC, fmt_s(c1), fmt_s(c32), fx(ratio(c32, c1))), ""]
    analysis = os.path.join(ROOT, "bench", "analysis.md")
    if os.path.exists(analysis):
        with open(analysis) as f:
            parts += [f.read().rstrip(), ""]
    parts += ["## How each case is measured", ""] + ["- " + x for x in meta.get("method", [])] + [""]
    parts += ["## Exact commands", "", "```"] + meta.get("commands", []) + ["```", ""]
    parts += ["## Workarounds (none handicaps a peer)", ""] + ["- " + x for x in meta.get("workarounds", [])] + [""]
    parts += ["## Configurations used", ""]
    for title, path in meta.get("files", []):
        if os.path.exists(path):
            with open(path) as f:
                body = f.read()
            lang = "toml" if path.endswith(".toml") else "yaml" if path.endswith((".yml", ".yaml")) else "ini"
            parts += ["`%s` (%s):" % (os.path.relpath(path, work) if path.startswith(work) else path, title),
                      "", "```" + lang, body.rstrip(), "```", ""]
    text = "\n".join(parts).rstrip() + "\n"
    with open(out, "w") as f:
        f.write(text)
    return text


# ------------------------------------------------------------------ selftest


def selftest():
    assert stats([3, 1, 2]) == {"n": 3, "median": 2.0, "min": 1.0, "max": 3.0}
    assert stats([1, 2, 3, 4])["median"] == 2.5
    assert abs(ratio(stats([1.0]), stats([4.0])) - 0.25) < 1e-9
    assert verdict(1.05, "<=", 1.1) == "met" and verdict(1.2, "<=", 1.1) == "NOT met"
    assert verdict(None, "<=", 1) == "not measured"
    assert alternate(0, [1, 2, 3]) == [1, 2, 3] and alternate(1, [1, 2, 3]) == [2, 3, 1]
    assert alternate(1, ["a", "b"]) == ["b", "a"]
    assert image_ratio("| seedcore push (full image) | 47.0 s | 65 MiB/s (0.96x) |") == 0.96
    # run(): exit code, wall time, peak RSS of a child that allocates ~50 MB.
    r = run([sys.executable, "-c", "b = bytearray(50 * 1024 * 1024); print('x')"])
    assert r["rc"] == 0 and r["rss_kb"] > 50 * 1024 and r["tail"].strip() == "x", r
    # Under GNU time: the command's own peak, not this process's size.
    hog = bytearray(80 * 1024 * 1024)
    small = run(["sh", "-c", "true"], peak=True)
    assert small["rc"] == 0 and small["rss_kb"] < 20 * 1024, small
    assert run(["sh", "-c", "true"])["rss_kb"] > 80 * 1024, "the artefact peak=True avoids"
    del hog
    assert run(["sh", "-c", "exit 3"])["rc"] == 3
    # YAML emitter: the values that matter round-trip as strings/lists (checked with PyYAML
    # by bench/run check, when the venv has it).
    y = yaml_dump({"a": ["x", {"b": "it's: {{ x }}", "c": True}], "d": {}, "e": 1.5})
    assert '- "x"' in y and 'b: "it\'s: {{ x }}"' in y and "d: {}" in y, y
    # Labels computed as seedcore does: hash of the canonical JSON of `after`.
    spec = {"name": "bench-ray-head", "host": "10.77.0.11", "role": "head", "index": 0, "image": "i",
            "node_ip": "10.77.0.11", "cpus": 1, "shm_size_bytes": 536870912, "ray_start": ["ray"],
            "command": ["bash", "-c", "x"], "env": {"A": "1"}, "ports": {"object_manager": 8076},
            "network_mode": "host", "restart_policy": "unless-stopped", "init": True}
    plan = {"plan": {"cluster": {"name": "bench", "id": "abc"},
                     "changes": [{"action": "create", "after": spec}]}}
    files = ansible_files(plan, ["10.77.0.11"])
    canon = json.dumps(spec, separators=(",", ":"))
    assert hashlib.sha256(canon.encode()).hexdigest() in files["inventory.yml"]
    assert "community.docker.docker_container" in files["playbook.yml"]
    # The report on synthetic timings: every row filled, goals judged.
    work = tempfile.mkdtemp(prefix="harness-selftest.")
    save(work, "scale", {"plan_scale": {"1": [0.30, 0.31, 0.29], "8": [0.40, 0.42, 0.41], "32": [0.55, 0.60, 0.58]},
                         "floor_scale": {"1": [0.25], "8": [0.35], "32": [0.5]},
                         "floor_classic": {"1": [0.15], "32": [0.3]},
                         "plan_kept": {"1": [0.1], "8": [0.15], "32": [0.3]},
                         "rss_kb": {"1": [9000], "8": [11000], "32": [15000, 15500]},
                         "dry": {"3": {"seedcore": [0.5, 0.52], "seedcore_kept": [0.2], "ansible": [2.8, 2.9],
                                       "ansible_fresh": [4.0]},
                                 "8": {"seedcore": [0.7, 0.71], "ansible": [5.6, 5.7]}}})
    save(work, "cluster", {"sc": {"up": [16.7, 16.9, 16.5], "reapply": [0.58, 0.6, 0.57], "plan": [0.5, 0.52],
                                  "floor": [0.47, 0.49], "down": [3.9, 4.0, 3.8], "restarted": [False, False, False]},
                           "ray": {"up_return": [10.4, 10.6], "up_alive": [26.2, 25.0], "norestart": [3.27, 3.3],
                                   "restart_return": [20.0], "restart_alive": [35.2], "down": [24.2, 24.1],
                                   "norestart_restarted": [False], "restart_restarted": [True]},
                           "notes": ["synthetic note"]})
    write(os.path.join(work, "image.txt"), "| seedcore push (full image) | 47.0 s | 65 MiB/s (0.96x) |\n")
    out = os.path.join(work, "results.md")
    text = report(work, out, {"setup": [["date", "synthetic"]], "commands": ["bench/run"],
                              "workarounds": ["w"], "method": ["m"], "files": []})
    table = rows(load(work, "scale"), load(work, "cluster"), "| seedcore push (full image) | x | y (0.96x) |")
    assert len(table) == 11 and not any(r[5] == "not measured" for r in table), table
    got = {r[0]: r[5] for r in table}
    assert got["plan, converged, 3 hosts"] == "met"          # 0.51 / 0.48 = 1.06
    assert got["plan, 1 / 8 / 32 hosts"] == "met"            # 0.58 / 0.30
    assert got["dry run, 3 hosts"] == "met"                  # 2.85 / 0.51 = 5.6x
    assert got["dry run, 8 hosts"] == "met"
    assert got["plan, 1 / 8 / 32 hosts, `ssh.persist = 60`"] == "NOT met"   # 0.3 / 0.1
    assert got["dry run, 3 hosts, `ssh.persist = 60`"] == "met"             # 2.85 / 0.2
    assert got["bring-up, empty -> 3 ALIVE"] == "NOT met"    # 16.7 / 25.6 = 0.65
    assert got["re-apply, nothing changed"] == "met"         # 0.58 / 3.285 = 0.18
    assert got["tear down"] == "NOT met"                     # 3.9 / 24.15 = 0.161
    assert got["image to 3 hosts"] == "met"
    assert got["memory, plan at 32 hosts"] == "met"          # 15500 KiB = 15.9 MB
    assert "synthetic note" in text and "| tear down |" in text
    assert "seedcore at 32: 1.16x the floor at 32" in text, text
    assert "with fresh connections: 4.00 s (1 run), 7.8x" in text, text
    assert "| curve25519-sha256 | 0.15 s (1 run) | 0.30 s (1 run) | 2.00x |" in text, text
    empty = rows(None, None, None)
    assert all(r[5] == "not measured" for r in empty if r[0] != "re-apply, nothing changed"), empty
    print(text)
    print("selftest: ok (%s)" % out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["selftest", "render", "scale", "cluster", "report"])
    ap.add_argument("--work")
    ap.add_argument("--bin")
    ap.add_argument("--venv", default="/var/cache/seedcore-bench/venv")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out")
    ap.add_argument("--meta")
    ap.add_argument("--offline", action="store_true", help="render: plans from empty observations")
    a = ap.parse_args()
    if a.cmd == "selftest":
        return selftest()
    os.makedirs(a.work, exist_ok=True)
    if a.cmd == "render":
        render_all(a.work, a.bin, os.path.join(a.work, "observed") if a.offline else None)
    elif a.cmd == "scale":
        phase_scale(a)
    elif a.cmd == "cluster":
        phase_cluster(a)
    elif a.cmd == "report":
        meta = None
        if a.meta:
            with open(a.meta) as f:
                meta = json.load(f)
        report(a.work, a.out, meta)


if __name__ == "__main__":
    sys.exit(main())
