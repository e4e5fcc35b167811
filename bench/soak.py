#!/usr/bin/env python3
"""Soak and fault runs against a real gatewayd, every one bounded in time; loopback only.

    python3 bench/soak.py                         # all phases, the soak for 10 minutes
    python3 bench/soak.py --duration 60           # a shorter soak
    python3 bench/soak.py --phase kill --phase sigterm

Phases (gatewayd with 2 workers unless --workers says otherwise):

soak     wrk at --concurrency (200) for --duration seconds over mixed routes (a `respond` route, a
         redirect, proxied GETs and POSTs to two nginx targets); errors must be 0, and the RSS of
         the gateway's workers, sampled every few seconds, must grow by less than 5% from the
         end of the warm-up to the end (the supervisor's is shown apart). The warm-up is the
         first minute (a fifth of a shorter run): RSS grows through it, and in 10-minute runs for
         3 to 8 minutes in all, to a peak 10 to 16% above its size at 5 s, and then levels off or
         falls back a little; the growth over the second half of the run is shown, to tell a
         leak from that.
reloads  wrk at c=50 while the config is rewritten --reloads (100) times, every --reload-every
         seconds, changing an upstream's settings (its response timeout, and every fifth time its
         max_connections, which replaces its pool); failed requests must be 0, and every worker
         must have reloaded each time. Its config has no key newer than this phase, so that it can
         be run against an older gatewayd with --gatewayd for comparison.
kill     a client at c=50 (pyreqwest, one record per request) while one of the two targets is
         killed (SIGKILL to its nginx) and started again --down seconds later; active checks every
         second. Run twice: with the default retries, and with retries off. Reported: the failed
         requests (only those in flight to the killed target may fail), when the killed target
         stopped getting requests, and how long after it was back it served again.
sigterm  clients on fresh connections to a proxied route whose upstream takes 200 ms, and one
         request of 2 s, then SIGTERM to the gateway: every request started before it must
         complete with 200, and gatewayd must exit 0.

Needs nginx and wrk (Debian: apt-get install -y nginx-light wrk) and the project's virtualenv
(with the `bench` extra, for pyreqwest). Prints a Markdown report; --output FILE writes it too. Exit status 1
when a phase missed its target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gatewayd_server  # noqa: E402
import nginx  # noqa: E402
import wrk  # noqa: E402
from procs import Proc, free_ports, wait_listening  # noqa: E402

REPO = HERE.parent
DEMO_UPSTREAM = REPO / "examples" / "upstream.py"
RSS_SAMPLE_S = 5.0
RSS_LIMIT = 0.05

TARGET_SNIPPET = """
server {{
    listen 127.0.0.1:{port};
    location / {{
        add_header X-Upstream {name};
        return 200 '{{"upstream": "{name}"}}';
    }}
}}
"""

# wrk: mixed routes, in turn (the `done` hook of wrk_report.lua is appended)
MIXED_LUA = """
local gets = {"/static", "/items/1", "/items/2?q=x", "/old"}
local n = 0
request = function()
  n = n + 1
  local k = n % 5
  if k == 4 then
    return wrk.format("POST", "/upload", {["Content-Type"] = "application/json"}, '{"n": 1}')
  end
  return wrk.format("GET", gets[k + 1])
end
"""

ROUTES = """
routes:
  - name: static
    match: {path: /static, methods: [GET]}
    respond: {json: {ok: true}}
  - name: moved
    match: {path: /old, methods: [GET]}
    redirect: {to: /static}
  - name: items
    match: {path_prefix: /items, methods: [GET]}
    upstream: items
  - name: upload
    match: {path: /upload, methods: [POST]}
    upstream: items
"""


CHECKS = "{path: /healthz, interval: 1s, timeout: 500ms}"


def upstream_yaml(targets: list[str], response: str = "30s", max_connections: int = 100, health: str | None = CHECKS,
                  retries: str | None = None) -> str:
    """The upstream `items` over `targets`; with health=None no key this gatewayd's own
    version added, so that the reloads phase can run against an older gatewayd too (--gatewayd)."""
    lines = [
        "upstreams:",
        "  items:",
        f"    targets: {json.dumps(targets)}",
        f"    timeouts: {{connect: 1s, response: {response}}}",
        f"    max_connections: {max_connections}",
    ]
    if health:
        lines.append(f"    health: {health}")
    if retries:
        lines.append(f"    retries: {retries}")
    return "\n".join(lines) + "\n"


@dataclass
class Phase:
    name: str
    ok: bool = True
    lines: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        print(f"[{self.name}] {text}", flush=True)
        self.lines.append(text)

    def check(self, ok: bool, text: str) -> None:
        self.ok = self.ok and ok
        self.say(f"{'ok' if ok else 'MISSED'}: {text}")


class Rig:
    """gatewayd in front of two nginx targets (or demo upstreams), in a private folder."""

    def __init__(self, args, tmp: Path, name: str):
        self.args, self.dir = args, tmp / name
        self.dir.mkdir(parents=True)
        self.port, self.port_a, self.port_b = free_ports(3)
        self.targets = [f"http://127.0.0.1:{self.port_a}", f"http://127.0.0.1:{self.port_b}"]
        self.procs: dict[str, Proc] = {}
        self.gw: Proc | None = None

    def start_nginx(self, name: str) -> None:
        port = self.port_a if name == "a" else self.port_b
        self.procs[name] = nginx.start(f"nginx-{name}", TARGET_SNIPPET.format(port=port, name=name), port, 1,
                                       self.dir / f"nginx-{name}")

    def start_demo(self, name: str) -> None:
        port = self.port_a if name == "a" else self.port_b
        proc = Proc(f"upstream-{name}", [sys.executable, "-S", str(DEMO_UPSTREAM), "--port", str(port), "--name", name],
                    self.dir / f"upstream-{name}.log")
        wait_listening(proc, port)
        self.procs[name] = proc

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        os.killpg(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait()
        proc.stop()

    def config(self, upstream: str) -> str:
        return gatewayd_server.render(upstream + ROUTES, self.port, self.args.workers, engine=self.args.engine)

    def start_gateway(self, upstream: str) -> None:
        self.conf = self.dir / "gateway" / "gatewayd.yaml"
        self.gw = gatewayd_server.start(self.args.command, self.config(upstream), self.port, self.args.workers,
                                        self.dir / "gateway")

    def write_config(self, upstream: str) -> None:
        tmp = self.conf.with_suffix(".tmp")
        tmp.write_text(self.config(upstream))
        os.replace(tmp, self.conf)

    def pids(self) -> list[int]:
        """The gateway's processes: the supervisor and its workers."""
        root = self.gw.pid
        found = [root]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                if int(stat.rpartition(")")[2].split()[1]) == root:
                    found.append(int(entry))
        return found

    def rss_kib(self) -> dict[int, int]:
        out = {}
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        out[pid] = int(line.split()[1])
            except OSError:
                pass
        return out

    def generations(self, tries: int = 100) -> dict[int, int]:
        """Each worker's config generation, from /health over fresh connections."""
        import http.client

        seen: dict[int, int] = {}
        for _ in range(tries):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                conn.request("GET", "/health")
                doc = json.loads(conn.getresponse().read())
                seen[doc["worker"]] = doc["generation"]
            except (OSError, ValueError, KeyError, http.client.HTTPException):
                pass
            finally:
                conn.close()
            if len(seen) == self.args.workers:
                break
        return seen

    def log_times(self, target: str) -> tuple[list[float], list[float]]:
        """Wall-clock times of the gateway's log lines saying `target` was ejected, and back in rotation."""
        import datetime

        out, back = [], []
        for line in self.gw.log_path.read_text(errors="replace").splitlines():
            if f"target {target} " not in line:
                continue
            try:
                when = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            except ValueError:
                continue
            if " ejected for " in line or "health checks in a row" in line:
                out.append(when)
            elif "back in rotation" in line:
                back.append(when)
        return out, back

    def own_latency(self) -> str:
        """Each route's request count, p99 and max total time as the gateway measured them (from
        /latency, merged over the workers, once they have published their last second): set beside
        the client's figures, it tells time spent in the gateway from time spent waiting for a CPU
        or in the kernel's queues."""
        import urllib.request

        time.sleep(1.5)
        doc = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/latency", timeout=5).read())
        return ", ".join(f"{name} {w['since_start']['count']} requests, p99 {w['since_start']['total_ms']['p99']} ms, "
                         f"max {w['since_start']['total_ms']['max']} ms" for name, w in doc["routes"].items())

    def counter(self, name: str, labels: str) -> float:
        """The sum over the workers of a counter's series whose labels include `labels`, from /metrics."""
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + "{") and labels in line)

    def upstream_connections(self) -> int:
        """Connections open to the two targets (ESTABLISHED, from /proc/net/tcp)."""
        remotes = {f"0100007F:{port:04X}" for port in (self.port_a, self.port_b)}
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
        return sum(1 for line in lines if (f := line.split())[3] == "01" and f[2] in remotes)

    def close(self) -> None:
        if self.gw is not None:
            self.gw.stop()
        for proc in self.procs.values():
            proc.stop()


def run_wrk(port: int, connections: int, seconds: int, script: Path) -> subprocess.Popen:
    argv = wrk.command(f"http://127.0.0.1:{port}/", connections, 2, seconds, {}, timeout_s=5)
    argv[argv.index("-s") + 1] = str(script)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish_wrk(proc: subprocess.Popen, seconds: int):
    try:
        out, err = proc.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}: {err.strip() or out.strip()}")
    return wrk.parse(out), error_kinds(out)


def error_kinds(stdout: str) -> str:
    """wrk's errors by kind: responses >= 400, and requests without one (connect, read, write, timeout)."""
    line = next(l for l in stdout.splitlines() if l.startswith(wrk.MARKER))
    d = json.loads(line[len(wrk.MARKER):])
    return ", ".join(f"{kind} {d[kind]}" for kind in ("status", "connect", "read", "write", "timeout"))


def mixed_script(tmp: Path) -> Path:
    path = tmp / "mixed.lua"
    path.write_text(MIXED_LUA + "\n" + wrk.LUA_SCRIPT.read_text())
    return path


# --- phases -------------------------------------------------------------------------------------


def phase_soak(args, tmp: Path) -> Phase:
    p = Phase("soak")
    rig = Rig(args, tmp, "soak")
    try:
        rig.start_nginx("a")
        rig.start_nginx("b")
        rig.start_gateway(upstream_yaml(rig.targets, health=None if args.no_checks else CHECKS))
        seconds = args.duration
        warmup = min(60.0, seconds / 5)
        load = run_wrk(rig.port, args.concurrency, seconds, mixed_script(tmp))
        started, samples = time.monotonic(), []
        while load.poll() is None and time.monotonic() - started < seconds + 30:
            time.sleep(min(RSS_SAMPLE_S, max(0.1, seconds - (time.monotonic() - started) - 1)))
            if time.monotonic() - started < seconds - 0.5:
                samples.append((time.monotonic() - started, rig.rss_kib()))
        result, kinds = finish_wrk(load, seconds)
        p.say(f"wrk -c{args.concurrency} for {seconds}s over mixed routes: {result.requests} requests, "
              f"{result.rps:.0f}/s, p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, max {result.max_ms:.0f} ms")
        p.check(result.errors == 0, f"{result.errors} errors ({kinds})")
        p.say("the gateway's own time per route (arrival to the end of the body, since start, from /latency): "
              + rig.own_latency())
        after = [(t, s) for t, s in samples if t >= warmup]
        if len(after) >= 2:
            report_rss(p, samples, after, rig.gw.pid)
        else:
            p.check(False, "too short a run to sample RSS after the warm-up")
    finally:
        rig.close()
    return p


def report_rss(p: Phase, samples: list, after: list, supervisor: int) -> None:
    """The RSS of each process along the run, and the check: the workers' RSS (the supervisor
    serves nothing, and its flat RSS would dilute theirs) from the end of the warm-up to the end.
    The growth over the second half of the run tells a leak (it keeps growing) from a high-water
    mark (it levels off)."""
    first, middle, last = after[0], after[len(after) // 2], after[-1]
    workers = sorted(set(first[1]) & set(last[1]) - {supervisor})
    total = lambda sample: sum(sample[1].get(pid, 0) for pid in workers)  # noqa: E731
    picks = [after[round(k * (len(after) - 1) / 4)] for k in range(5)]
    p.say(f"RSS of the supervisor (KiB): {samples[0][1].get(supervisor)} at {samples[0][0]:.0f}s, "
          f"{last[1].get(supervisor)} at {last[0]:.0f}s")
    for pid in workers:
        p.say(f"RSS of worker pid {pid} (KiB): {samples[0][1].get(pid)} at {samples[0][0]:.0f}s; after the warm-up "
              + ", ".join(f"{t:.0f}s {sample.get(pid)}" for t, sample in picks)
              + f"; {(last[1][pid] - first[1][pid]) / first[1][pid]:+.1%}")
    p.say(f"the workers' RSS over the second half ({middle[0]:.0f}s to {last[0]:.0f}s): "
          f"{(total(last) - total(middle)) / total(middle):+.1%}")
    growth = (total(last) - total(first)) / total(first)
    p.check(growth < RSS_LIMIT, f"RSS of the workers from {first[0]:.0f}s to {last[0]:.0f}s: "
                                f"{total(first)} -> {total(last)} KiB, {growth:+.1%}")


def phase_reloads(args, tmp: Path) -> Phase:
    p = Phase("reloads")
    rig = Rig(args, tmp, "reloads")
    try:
        rig.start_nginx("a")
        rig.start_nginx("b")
        rig.start_gateway(upstream_yaml(rig.targets, health=None))
        start_generation = max(rig.generations().values())
        seconds = int(args.reloads * args.reload_every + 4)
        load = run_wrk(rig.port, 50, seconds, mixed_script(tmp))
        time.sleep(1.0)
        connections = []
        for n in range(1, args.reloads + 1):
            rig.write_config(upstream_yaml(rig.targets, f"{30 + n % 2}s", 100 + (n // 5) % 2, health=None))
            time.sleep(args.reload_every)
            connections.append(rig.upstream_connections())
        result, kinds = finish_wrk(load, seconds)
        generations = rig.generations()
        p.say(f"{args.reloads} config rewrites every {args.reload_every}s under wrk -c50 for {seconds}s: "
              f"{result.requests} requests, {result.rps:.0f}/s, p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, "
              f"max {result.max_ms:.0f} ms")
        p.check(result.errors == 0, f"{result.errors} failed requests of {result.attempts} ({kinds})")
        p.say(f"connections open to the upstream's targets after each reload: median {sorted(connections)[len(connections) // 2]}, "
              f"max {max(connections)} (2 workers, each pool at most 100 or 101)")
        reloaded = {w: g - start_generation for w, g in generations.items()}
        p.check(len(reloaded) == args.workers and all(r == args.reloads for r in reloaded.values()),
                f"reloads per worker: {reloaded}")
    finally:
        rig.close()
    return p


@dataclass
class Record:
    started: float
    ended: float
    status: int | None
    upstream: str | None


async def _client_load(port: int, clients: int, seconds: float, records: list[Record]) -> None:
    from datetime import timedelta

    from pyreqwest.client import ClientBuilder
    from pyreqwest.exceptions import PyreqwestError

    client = (ClientBuilder().max_connections(clients).pool_max_idle_per_host(clients)
              .connect_timeout(timedelta(seconds=2)).build())
    deadline = time.monotonic() + seconds
    url = f"http://127.0.0.1:{port}/items/x"

    async def one_client() -> None:
        for _ in range(1_000_000):
            if time.monotonic() >= deadline:
                return
            started = time.monotonic()
            status = upstream = None
            try:
                async with asyncio.timeout(5):
                    async with client.request("GET", url).build_streamed() as r:
                        while await r.body_reader.read_chunk() is not None:
                            pass
                        status, upstream = r.status, r.headers.get("x-upstream")
            except (TimeoutError, PyreqwestError):
                pass
            records.append(Record(started, time.monotonic(), status, upstream))

    await asyncio.gather(*(one_client() for _ in range(clients)))


def phase_kill(args, tmp: Path, retries: str | None) -> Phase:
    p = Phase("kill" + (", retries off" if retries else ", default retries"))
    rig = Rig(args, tmp, "kill-" + ("off" if retries else "on"))
    try:
        rig.start_nginx("a")
        rig.start_nginx("b")
        rig.start_gateway(upstream_yaml(rig.targets, retries=retries))
        marks: dict[str, float] = {}
        seconds = 4.0 + args.down + 4.0

        # the client runs in its own process (monotonic clocks agree across processes): pyreqwest
        # clients are not to be shared between event loops or threads
        out = rig.dir / "records.jsonl"
        load = subprocess.Popen([sys.executable, __file__, "--client", str(rig.port), str(seconds), str(out)])
        time.sleep(4.0)
        marks["killed"], marks["killed_wall"] = time.monotonic(), time.time()
        rig.kill("b")
        time.sleep(args.down)
        rig.start_nginx("b")
        marks["back"], marks["back_wall"] = time.monotonic(), time.time()
        if load.wait(timeout=seconds + 30) != 0:
            raise RuntimeError("the load client failed")
        records = [Record(*json.loads(line)) for line in out.read_text().splitlines()]
        killed, back = marks["killed"], marks["back"]
        failed = [r for r in records if r.status != 200]
        during = [r for r in records if killed <= r.started < back]
        to_b = [r for r in during if r.upstream == "b" or r.status != 200]
        last_bad = max((r.ended for r in to_b), default=killed)
        returned = [r for r in records if r.started >= back and r.upstream == "b"]
        p.say(f"{len(records)} requests at c=50 over {seconds:.0f}s; target b killed at {killed - records[0].started:.1f}s, "
              f"started again {args.down:.0f}s later")
        if failed:
            p.say(f"failed: {len(failed)} ({', '.join(sorted({str(r.status) for r in failed}))}), started "
                  f"{min(r.started for r in failed) - killed:+.3f}s to {max(r.started for r in failed) - killed:+.3f}s "
                  "from the kill")
        else:
            p.say("failed: none")
        p.say(f"the clients saw b out of rotation {last_bad - killed:.3f}s after the kill (its last answer or failure)")
        if returned:
            p.say(f"b served again {returned[0].ended - back:.3f}s after it listened again")
        out, back_in = rig.log_times(rig.targets[1])
        p.say("the workers' logs: b ejected %s after the kill, back in rotation %s after it listened again" % (
            ", ".join(f"{t - marks['killed_wall']:.3f}s" for t in out) or "never",
            ", ".join(f"{t - marks['back_wall']:.3f}s" for t in back_in if t > marks["back_wall"]) or "never"))
        retried = rig.counter("gatewayd_upstream_retries_total", 'result="sent"')
        p.say(f"retries sent: {retried:.0f}")
        p.check(all(r.started < killed + 1.0 for r in failed), "failures only in the first second after the kill")
        p.check(bool(returned) and returned[0].ended - back <= 1.0 + 0.5, "back in rotation within one health interval (1s, + 0.5s)")
    finally:
        rig.close()
    return p


async def _fresh_get(port: int, path: str, timeout: float) -> tuple[int | None, str | None]:
    """One GET on a new connection; (status, None) or (None, the failure's phase)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (OSError, TimeoutError):
        return None, "connect"
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        await asyncio.wait_for(reader.read(), timeout)
        return int(head.split(b" ", 2)[1]), None
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
        return None, "response"
    finally:
        writer.close()


def phase_sigterm(args, tmp: Path) -> Phase:
    p = Phase("sigterm")
    rig = Rig(args, tmp, "sigterm")
    try:
        rig.start_demo("a")
        rig.start_demo("b")
        rig.start_gateway(upstream_yaml(rig.targets, health="{path: /healthz, interval: 5s, timeout: 1s}"))

        async def run() -> tuple[list, float, int]:
            results: list = []
            stop_at = time.monotonic() + 30

            async def client() -> None:
                for _ in range(10_000):
                    if time.monotonic() > stop_at:
                        return
                    started = time.monotonic()
                    status, phase = await _fresh_get(rig.port, "/items/slow/200", 10)
                    results.append((started, status, phase))
                    if phase == "connect":
                        return  # the listeners are closed

            tasks = [asyncio.create_task(client()) for _ in range(20)]
            slow = asyncio.create_task(_fresh_get(rig.port, "/items/slow/2000", 15))
            await asyncio.sleep(2.0)
            term_at = time.monotonic()
            rig.gw.popen.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(rig.gw.popen.wait, 20)
            await asyncio.gather(*tasks)
            results.append((term_at - 2.0, *(await slow)))
            return results, term_at, code

        results, term_at, code = asyncio.run(run())
        accepted = [r for r in results if r[0] < term_at - 0.05]
        bad = [r for r in accepted if r[1] != 200]
        late = [r for r in results if r[0] >= term_at - 0.05]
        p.say(f"{len(accepted)} requests started before SIGTERM (each 200 ms at the upstream, one of 2 s), "
              f"{len(late)} after it")
        p.check(not bad, f"{len(accepted) - len(bad)} of {len(accepted)} completed with 200")
        p.check(all(r[1] == 200 or r[2] == "connect" for r in late), "later ones were refused a connection or served")
        p.check(code == 0, f"gatewayd exited with {code}")
    finally:
        rig.close()
    return p


def client_main(port: str, seconds: str, out: str) -> int:
    """`--client PORT SECONDS FILE`: the kill phase's load, one JSON line per request in FILE."""
    records: list[Record] = []
    asyncio.run(_client_load(int(port), 50, float(seconds), records))
    Path(out).write_text("".join(json.dumps([r.started, r.ended, r.status, r.upstream]) + "\n" for r in records))
    return 0


def main() -> int:
    if sys.argv[1:2] == ["--client"]:
        return client_main(*sys.argv[2:5])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", action="append", choices=("soak", "reloads", "kill", "sigterm"), help="run only these (repeatable)")
    ap.add_argument("--duration", type=int, default=600, help="soak seconds (default 600)")
    ap.add_argument("--concurrency", type=int, default=200, help="soak connections (default 200)")
    ap.add_argument("--reloads", type=int, default=100)
    ap.add_argument("--reload-every", type=float, default=0.25, help="seconds between config rewrites")
    ap.add_argument("--down", type=float, default=4.0, help="seconds the killed target stays down")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--engine", choices=("granian", "hypercorn"), help="server.engine (default: the gateway's, granian)")
    ap.add_argument("--gatewayd", default=None, help="gatewayd executable (default: the virtualenv's)")
    ap.add_argument("--no-checks", action="store_true", help="soak without active health checks (an older gatewayd has none)")
    ap.add_argument("--output", type=Path, help="also write the report here")
    args = ap.parse_args()
    args.command = gatewayd_server.find_command(args.gatewayd)
    phases = args.phase or ["soak", "reloads", "kill", "sigterm"]
    report, load_start = [], os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="gatewayd-soak-") as tmp_name:
        tmp = Path(tmp_name)
        for name in phases:
            if name == "soak":
                report.append(phase_soak(args, tmp))
            elif name == "reloads":
                report.append(phase_reloads(args, tmp))
            elif name == "kill":
                report.append(phase_kill(args, tmp, None))
                report.append(phase_kill(args, tmp, "{attempts: 1}"))
            else:
                report.append(phase_sigterm(args, tmp))
    text = [f"# gatewayd soak and faults ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, "
            f"{args.workers} workers, engine {args.engine or 'default'})", "",
            "load average (1, 5, 15 min) at start %s, at end %s" % (
                " ".join(f"{x:.2f}" for x in load_start), " ".join(f"{x:.2f}" for x in os.getloadavg())), ""]
    for phase in report:
        text += [f"## {phase.name}: {'ok' if phase.ok else 'MISSED'}", "", *(f"- {line}" for line in phase.lines), ""]
    print("\n".join(text))
    if args.output:
        args.output.write_text("\n".join(text))
    return 0 if all(phase.ok for phase in report) else 1


if __name__ == "__main__":
    sys.exit(main())
