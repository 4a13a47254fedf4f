#!/usr/bin/env python3
"""Timing harness and report writer for bench/run.sh.

Subcommands:
  time SPEC OUT        run the commands of SPEC (JSON) in alternating rounds, write samples to OUT
  parallel OUT N ROUNDS -- ARGV...
                       start ARGV N times at once, ROUNDS times, write exit statuses and times
  offcpu SCRIPT RUNS COMM_REGEX OUT
                       sum off-CPU time per kernel wait site from `perf script` output of a
                       system-wide sched:sched_switch recording with call chains, for the
                       processes whose name matches COMM_REGEX, per run, into OUT (Markdown)
  report [--write FILE] DIR
                       print the summary of the results in DIR as Markdown, and write it to FILE

Every timed process is started with posix_spawn and reaped with wait4, so each sample has the
wall time, the CPU time (user + system) and the peak RSS (ru_maxrss) of the process and of the
descendants it waited for. Stdin and stdout are /dev/null; stderr goes to a file that is kept
for failed runs.
"""

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1024 * 1024


def spawn(argv, stderr_path, env=None):
    """Starts argv with stdin and stdout on /dev/null and stderr on stderr_path; returns its pid."""
    devnull = os.open(os.devnull, os.O_RDWR)
    err = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        actions = [
            (os.POSIX_SPAWN_DUP2, devnull, 0),
            (os.POSIX_SPAWN_DUP2, devnull, 1),
            (os.POSIX_SPAWN_DUP2, err, 2),
        ]
        return os.posix_spawnp(argv[0], argv, env or os.environ, file_actions=actions)
    finally:
        os.close(devnull)
        os.close(err)


def exit_code(status):
    """Returns the exit code of a wait status, or 128 + N for a process killed by signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def read_error(path, limit=2000):
    text = Path(path).read_text(errors="replace").strip()
    return text[-limit:]


def run_once(argv, scratch):
    """Runs argv once and returns a sample: wall and CPU time in ms, peak RSS in KiB, exit code."""
    stderr_path = os.path.join(scratch, "stderr")
    started = time.perf_counter_ns()
    pid = spawn(argv, stderr_path)
    _, status, usage = os.wait4(pid, 0)
    wall_ns = time.perf_counter_ns() - started
    sample = {
        "wall_ms": wall_ns / 1e6,
        "cpu_ms": (usage.ru_utime + usage.ru_stime) * 1000,
        "maxrss_kib": usage.ru_maxrss,
        "status": exit_code(status),
    }
    if sample["status"] != 0:
        sample["stderr"] = read_error(stderr_path)
    return sample


def run_prepare(command):
    """Runs an untimed shell preparation step; raises with its output when it fails."""
    if not command:
        return
    result = subprocess.run(
        ["bash", "-c", command], stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"preparation {command!r} failed with status {result.returncode}: "
            f"{(result.stdout + result.stderr).strip()[-1000:]}"
        )


def command_time(spec_path, out_path):
    """Runs the commands of a spec in rounds A B C A B C ..., warm-up rounds first."""
    spec = json.loads(Path(spec_path).read_text())
    warmups = spec["warmups"]
    runs = spec["runs"]
    commands = spec["commands"]
    results = [
        {"name": c["name"], "argv": c["argv"], "warmup": [], "samples": []} for c in commands
    ]
    with tempfile.TemporaryDirectory(prefix="bench-time.") as scratch:
        for round_index in range(warmups + runs):
            counted = round_index >= warmups
            line = []
            for command, result in zip(commands, results):
                run_prepare(command.get("prepare"))
                sample = run_once(command["argv"], scratch)
                result["samples" if counted else "warmup"].append(sample)
                mark = "" if sample["status"] == 0 else f"!{sample['status']}"
                line.append(f"{command['name']} {sample['wall_ms']:.0f}ms{mark}")
                run_prepare(command.get("cleanup"))
            label = f"run {round_index - warmups + 1}" if counted else f"warm-up {round_index + 1}"
            print(f"bench: {spec['group']} {label}: " + ", ".join(line), file=sys.stderr)
    Path(out_path).write_text(
        json.dumps({"group": spec["group"], "warmups": warmups, "runs": runs, "commands": results})
    )


def command_parallel(out_path, count, rounds, argv):
    """Starts argv `count` times at once, `rounds` times, and records every exit status."""
    result = {"count": count, "argv": argv, "rounds": []}
    with tempfile.TemporaryDirectory(prefix="bench-parallel.") as scratch:
        for round_index in range(rounds):
            started = time.perf_counter_ns()
            pids = {}
            for index in range(count):
                stderr_path = os.path.join(scratch, f"stderr.{index}")
                pids[spawn(argv, stderr_path)] = (index, stderr_path, time.perf_counter_ns())
            processes = []
            while pids:
                pid, status, usage = os.wait4(-1, 0)
                if pid not in pids:
                    continue
                index, stderr_path, spawned = pids.pop(pid)
                process = {
                    "index": index,
                    "status": exit_code(status),
                    "wall_ms": (time.perf_counter_ns() - spawned) / 1e6,
                    "maxrss_kib": usage.ru_maxrss,
                }
                if process["status"] != 0:
                    process["stderr"] = read_error(stderr_path)
                processes.append(process)
            wall_ms = (time.perf_counter_ns() - started) / 1e6
            processes.sort(key=lambda process: process["index"])
            failures = sum(1 for process in processes if process["status"] != 0)
            result["rounds"].append(
                {"wall_ms": wall_ms, "failures": failures, "processes": processes}
            )
            print(
                f"bench: parallel round {round_index + 1}: {count} runs in {wall_ms:.0f} ms, "
                f"{failures} failed",
                file=sys.stderr,
            )
    Path(out_path).write_text(json.dumps(result))


# Frames of the scheduler and of generic wait helpers; the wait site is the first other frame.
SCHEDULER_FRAMES = {
    "__schedule",
    "schedule",
    "schedule_timeout",
    "io_schedule",
    "io_schedule_timeout",
    "schedule_preempt_disabled",
    "__wait_for_common",
    "wait_for_completion",
    "wait_for_completion_io_timeout",
    "wait_for_completion_state",
    "preempt_schedule_common",
    "__cond_resched",
    "_cond_resched",
}
SWITCH_RE = re.compile(
    r"\s*(?P<comm>.+?)\s+(?P<pid>\d+)\s+(?P<time>[\d.]+):\s+sched:sched_switch:\s+"
    r"prev_comm=(?P<prev_comm>.*?) prev_pid=(?P<prev_pid>\d+) prev_prio=\d+ "
    r"prev_state=(?P<state>\S+) ==> next_comm=.*? next_pid=(?P<next_pid>\d+)"
)


def command_offcpu(script_path, runs, comm_pattern, out_path):
    """Sums, per kernel wait site, the time matching tasks spent switched out."""
    comm_re = re.compile(comm_pattern)
    switched_out = {}
    totals = {}
    for block in Path(script_path).read_text(errors="replace").split("\n\n"):
        lines = block.strip().splitlines()
        match = SWITCH_RE.match(lines[0]) if lines else None
        if not match:
            continue
        frames = [line.split()[1] for line in lines[1:] if len(line.split()) > 1]
        frames = [frame.split("+")[0] for frame in frames]
        frames = [frame for frame in frames if frame not in SCHEDULER_FRAMES]
        time_s = float(match["time"])
        switched_out[match["prev_pid"]] = (time_s, match["state"], match["prev_comm"], frames)
        previous = switched_out.pop(match["next_pid"], None)
        if previous is None or not comm_re.search(previous[2]):
            continue
        started, state, _, wait_frames = previous
        state = "R" if state.startswith("R") else state
        site = " ← ".join(wait_frames[:4]) or "?"
        total, count = totals.get((state, site), (0.0, 0))
        totals[(state, site)] = (total + time_s - started, count + 1)
    rows = [
        "| ms per run | switches | state | kernel wait site (innermost first) |",
        "|---|---|---|---|",
    ]
    ranked = sorted(totals.items(), key=lambda item: -item[1][0])
    for (state, site), (total, count) in ranked:
        if state == "S":
            continue
        if len(rows) >= 14:
            break
        rows.append(f"| {total * 1000 / runs:.2f} | {count} | {state} | `{site}` |")
    Path(out_path).write_text("\n".join(rows) + "\n")


# ---------------------------------------------------------------------------------------------
# Report


def load(directory, name):
    path = Path(directory) / name
    if not path.exists():
        return None
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return path.read_text()


def by_name(result):
    return {command["name"]: command for command in result["commands"]} if result else {}


def ok_samples(command):
    return [sample for sample in command["samples"] if sample["status"] == 0]


def stats(command, key="wall_ms"):
    """Returns (median, min, max) of `key` over the successful counted samples, or None."""
    values = [sample[key] for sample in ok_samples(command)]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def median_of(command, key="wall_ms"):
    result = stats(command, key) if command else None
    return result[0] if result else None


def fmt_ms(value):
    if value is None:
        return "n/a"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.1f} ms"


def fmt_mib(kib):
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


def first_error(command):
    for sample in command["warmup"] + command["samples"]:
        if sample["status"] != 0:
            return sample.get("stderr", "").strip().splitlines()
    return []


def timing_table(result, descriptions):
    rows = [
        "| command | what it runs | median | min | max | median CPU | peak RSS | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for command in result["commands"]:
        wall = stats(command)
        cpu = median_of(command, "cpu_ms")
        rss = max((s["maxrss_kib"] for s in ok_samples(command)), default=None)
        failed = len(command["samples"]) - len(ok_samples(command))
        median, low, high = (fmt_ms(v) for v in wall) if wall else ("n/a",) * 3
        rows.append(
            f"| {command['name']} | {descriptions.get(command['name'], '')} | {median} | {low} "
            f"| {high} | {fmt_ms(cpu)} | {fmt_mib(rss)} | {failed}/{len(command['samples'])} |"
        )
    return rows


def errors_section(results):
    lines = []
    for result in results:
        for command in result["commands"] if result else []:
            error = first_error(command)
            if error:
                failed = sum(1 for s in command["warmup"] + command["samples"] if s["status"])
                total = len(command["warmup"]) + len(command["samples"])
                lines.append(
                    f"- `{command['name']}` failed {failed} of {total} runs; the first error:"
                )
                lines.append("")
                lines.append("  ```")
                lines.extend(f"  {line}" for line in error[-6:])
                lines.append("  ```")
    return lines


class Goals:
    """Rows of the goal table: name, measured value, target and whether it was met."""

    def __init__(self):
        self.rows = []

    def ratio(self, label, numerator, denominator, limit):
        numerator_ms = median_of(numerator)
        denominator_ms = median_of(denominator)
        if numerator_ms is None or denominator_ms is None:
            missing = [
                command["name"] if command else "a command"
                for command, median in ((numerator, numerator_ms), (denominator, denominator_ms))
                if median is None
            ]
            measured = f"no data ({', '.join(missing)} failed or did not run)"
            self.rows.append((label, measured, f"≤ {limit}", "no"))
            return
        value = numerator_ms / denominator_ms
        self.rows.append((label, f"{value:.2f}", f"≤ {limit}", "yes" if value <= limit else "no"))

    def value(self, label, measured, target, met):
        self.rows.append((label, measured, target, "yes" if met else "no"))

    def table(self):
        lines = ["| goal | measured | target | met |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows]
        return lines


def ratio_lines(pairs):
    lines = []
    for label, numerator, denominator in pairs:
        numerator_ms = median_of(numerator)
        denominator_ms = median_of(denominator)
        if numerator_ms is not None and denominator_ms is not None:
            lines.append(f"- {label} = {numerator_ms / denominator_ms:.2f}")
        else:
            lines.append(f"- {label} = n/a (a command failed or did not run)")
    return lines


PHASE_LINE_RE = re.compile(r"sandbox run finished.*?total=(\S+) timings=Timings \{ (.*?) \}")
DURATION_RE = re.compile(r"^([0-9.]+)(ns|µs|ms|s)$")
UNIT_MS = {"ns": 1e-6, "µs": 0.001, "ms": 1.0, "s": 1000.0}


def duration_ms(text):
    """Converts a Rust `Duration` debug string such as `1.5ms` or `250µs` to milliseconds."""
    match = DURATION_RE.match(text.strip())
    if not match:
        raise ValueError(f"invalid duration {text!r} in a `sandbox run finished` line")
    return float(match[1]) * UNIT_MS[match[2]]


def phase_table(text):
    """Parses the `sandbox run finished` debug lines and returns a table of phase medians.

    The phases are the fields of the logged `Timings` struct, in their order, after `total`.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    columns = {}
    count = 0
    for match in PHASE_LINE_RE.finditer(text):
        count += 1
        columns.setdefault("total", []).append(duration_ms(match[1]))
        for field in match[2].split(", "):
            name, _, value = field.partition(": ")
            columns.setdefault(name, []).append(duration_ms(value))
    if count == 0:
        return [], 0
    rows = ["| phase | median | min | max |", "|---|---|---|---|"]
    for name, values in columns.items():
        rows.append(
            f"| {name} | {fmt_ms(statistics.median(values))} | {fmt_ms(min(values))} "
            f"| {fmt_ms(max(values))} |"
        )
    return rows, count


WARM_DESCRIPTIONS = {
    "ak-moderate": "`agentkernel run --image <busybox> true`",
    "ak-restrictive": "`agentkernel run --profile restrictive --image <busybox> true`",
    "ak-moderate-tmpfs": "like ak-moderate, with `--root` on a tmpfs",
    "runc-moderate": "`runc run` on a bundle equivalent to moderate",
    "runc-restrictive": "`runc run` on a bundle equivalent to restrictive",
    "podman": "`podman run --rm --network none <busybox> true` (crun)",
    "podman-wrapper": "only the `unshare -m` + `umount` wrapper around podman",
    "unshare": "`unshare --mount --uts --ipc --net --pid --fork true`",
    "ak-version": "`agentkernel --version`: process start and exit only",
}


def pull_descriptions(names):
    descriptions = {}
    for name in names:
        tool, _, image = name.rpartition("-")
        descriptions[name] = {
            "ak-pull": f"`agentkernel --root <fresh dir> pull <{image}>`",
            "podman-pull": f"`podman pull <{image}>` after `podman rmi -a -f`",
            "skopeo-umoci": f"`skopeo copy` to a fresh OCI layout + `umoci unpack` of <{image}>",
        }.get(tool, "")
    return descriptions


SYNC_CALLS = ["fsync", "fdatasync", "syncfs", "sync_file_range", "sync"]


def sync_call_table(directory):
    """Returns a table of the calls counted in the `sync-NAME.txt` strace summaries of DIR."""
    rows = []
    for path in sorted(Path(directory).glob("sync-*.txt")):
        counts = dict.fromkeys(SYNC_CALLS, 0)
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 5 and fields[-1] in counts and fields[3].isdigit():
                counts[fields[-1]] = int(fields[3])
        name = path.stem.removeprefix("sync-")
        rows.append(f"| {name} | " + " | ".join(str(counts[call]) for call in SYNC_CALLS) + " |")
    if not rows:
        return []
    header = ["| command | " + " | ".join(SYNC_CALLS) + " |", "|---" * (len(SYNC_CALLS) + 1) + "|"]
    return header + rows


def report(directory):
    info = load(directory, "info.json") or {}
    warm = load(directory, "warm.json")
    pull = load(directory, "pull.json")
    big = load(directory, "big.json")
    parallel = load(directory, "parallel.json")
    phases_text = load(directory, "phases.txt") or ""
    strace_text = load(directory, "strace.txt") or ""
    notes = load(directory, "notes.txt") or ""
    profile = load(directory, "profile.md") or ""
    w = by_name(warm)
    p = by_name(pull)
    b = by_name(big)

    out = ["# Benchmarks", ""]
    out.append(
        f"Generated by `bench/run.sh` on {info.get('date', '?')} at commit "
        f"`{info.get('commit', '?')}`. All numbers below come from that one run. Each table "
        f"alternates its commands (A B C A B C ...) and counts {info.get('runs', '?')} runs "
        f"after {info.get('warmups', '?')} warm-up rounds. Medians, min and max are over the "
        "successful counted runs; ratios are median / median."
    )
    out += ["", "## Machine", ""]
    machine_keys = ["cpus", "memory", "kernel", "os", "cgroups", "filesystem", "versions"]
    for key in machine_keys + ["load", "priority", "duration"]:
        if key in info:
            out.append(f"- {key}: {info[key]}")

    goals = Goals()
    goals.ratio("warm run, moderate / runc", w.get("ak-moderate"), w.get("runc-moderate"), 0.5)
    goals.ratio(
        "warm run, restrictive / runc", w.get("ak-restrictive"), w.get("runc-restrictive"), 0.5
    )
    goals.ratio("warm run, moderate / podman run", w.get("ak-moderate"), w.get("podman"), 0.1)
    goals.ratio("warm run, restrictive / podman run", w.get("ak-restrictive"), w.get("podman"), 0.1)
    goals.ratio("warm run, moderate / unshare floor", w.get("ak-moderate"), w.get("unshare"), 5)
    goals.ratio(
        "warm run, restrictive / unshare floor", w.get("ak-restrictive"), w.get("unshare"), 5
    )
    images = sorted({name.rpartition("-")[2] for name in p if name.startswith("ak-pull-")})
    for image in images:
        goals.ratio(
            f"cold pull+unpack {image} / podman pull",
            p.get(f"ak-pull-{image}"),
            p.get(f"podman-pull-{image}"),
            0.6,
        )
    rss_values = []
    for result in (pull, big):
        for command in result["commands"] if result else []:
            if command["name"].startswith("ak-pull"):
                rss_values += [(s["maxrss_kib"], command["name"]) for s in ok_samples(command)]
    if rss_values:
        peak, where = max(rss_values)
        goals.value(
            "peak RSS of `agentkernel pull`",
            f"{fmt_mib(peak)} ({where})",
            "≤ 64 MiB",
            peak <= 64 * 1024,
        )
    else:
        goals.value("peak RSS of `agentkernel pull`", "no successful pull", "≤ 64 MiB", False)
    if parallel:
        failures = sum(r["failures"] for r in parallel["rounds"])
        total = sum(len(r["processes"]) for r in parallel["rounds"])
        goals.value(
            f"{parallel['count']} parallel runs without failure",
            f"{failures} of {total} failed",
            "0",
            failures == 0 and total > 0,
        )
    out += ["", "## Goals", ""] + goals.table()

    if warm:
        out += ["", "## Warm run of `true` in busybox", ""]
        out += timing_table(warm, WARM_DESCRIPTIONS)
        out += [""] + ratio_lines(
            [
                ("agentkernel moderate / runc", w.get("ak-moderate"), w.get("runc-moderate")),
                (
                    "agentkernel restrictive / runc",
                    w.get("ak-restrictive"),
                    w.get("runc-restrictive"),
                ),
                ("agentkernel moderate / podman", w.get("ak-moderate"), w.get("podman")),
                ("agentkernel restrictive / podman", w.get("ak-restrictive"), w.get("podman")),
                ("agentkernel moderate / unshare", w.get("ak-moderate"), w.get("unshare")),
                ("agentkernel restrictive / unshare", w.get("ak-restrictive"), w.get("unshare")),
                ("runc moderate / unshare", w.get("runc-moderate"), w.get("unshare")),
                (
                    "agentkernel moderate, --root on tmpfs / runc",
                    w.get("ak-moderate-tmpfs"),
                    w.get("runc-moderate"),
                ),
            ]
        )

    rows, count = phase_table(phases_text)
    if rows or strace_text or load(directory, "offcpu-agentkernel.md"):
        out += ["", "## Where the warm run's time goes", ""]
    if rows:
        out.append(
            f"Phases of `agentkernel --debug run --image <busybox> true` (moderate) from its "
            f"`sandbox run finished` debug line, {count} runs. Each phase is a field of the "
            "`Timings` struct in `src/sandbox/mod.rs`, whose comments say what it covers; "
            "`total` is the whole `sandbox::run`, without process start, argument parsing and "
            "the image lookup. `--debug` adds the cost of logging."
        )
        out += [""] + rows
    offcpu = [(name, load(directory, f"offcpu-{name}.md")) for name in ("agentkernel", "runc")]
    if any(table for _, table in offcpu):
        out += [
            "",
            "Off-CPU time per run by kernel wait site, from `perf record -a -g -e "
            "sched:sched_switch` over 10 more runs of each command: the time from a process "
            "being switched out until it runs again, summed per call chain. D is an "
            "uninterruptible wait in the kernel, R a runnable process that another process "
            "preempted.",
        ]
        for name, table in offcpu:
            if table:
                command = "ak-moderate" if name == "agentkernel" else "runc-moderate"
                out += ["", f"`{command}`:", ""] + table.rstrip().splitlines()
    if strace_text:
        out += [
            "",
            "System calls of one warm run (`strace -c -w -f`: wall-clock time inside each call, "
            "summed over all processes, so calls that wait for another process, such as "
            "`wait4` and `recvmsg`, count their waiting time; strace slows every call):",
            "",
            "```",
        ]
        out += strace_text.rstrip().splitlines()
        out += ["```"]

    if profile.strip():
        out += [""] + profile.rstrip().splitlines()

    if pull:
        out += ["", "## Cold pull and unpack", ""]
        names = [c["name"] for c in pull["commands"]]
        out += timing_table(pull, pull_descriptions(names))
        pairs = []
        for image in images:
            pairs.append(
                (
                    f"agentkernel/podman pull, {image}",
                    p.get(f"ak-pull-{image}"),
                    p.get(f"podman-pull-{image}"),
                )
            )
            pairs.append(
                (
                    f"agentkernel/(skopeo+umoci), {image}",
                    p.get(f"ak-pull-{image}"),
                    p.get(f"skopeo-umoci-{image}"),
                )
            )
        out += [""] + ratio_lines(pairs)

    sync_rows = sync_call_table(directory)
    if sync_rows:
        out += [
            "",
            "fsync-family system calls of one more python pull per tool (`strace -f -c`), which "
            "wait for the disk:",
            "",
        ] + sync_rows

    if big:
        out += ["", "## Pull of an image with one 1 GiB layer", ""]
        out.append(
            f"{big['runs']} counted runs after {big['warmups']} warm-up; the layer is 1 GiB of "
            "random bytes in a gzip layer. Peak RSS is `ru_maxrss` of the `agentkernel pull` "
            "process."
        )
        out += [""] + timing_table(big, pull_descriptions([c["name"] for c in big["commands"]]))

    if parallel:
        out += ["", f"## {parallel['count']} parallel runs", ""]
        out.append(
            f"Each round starts `agentkernel run --image <busybox> true` (moderate, one shared "
            f"`--root`) {parallel['count']} times at once and waits for all of them. Every "
            "process's exit status is checked."
        )
        out += [
            "",
            "| round | wall time, all | slowest | fastest | failed |",
            "|---|---|---|---|---|",
        ]
        for index, result in enumerate(parallel["rounds"], 1):
            walls = [process["wall_ms"] for process in result["processes"]]
            out.append(
                f"| {index} | {fmt_ms(result['wall_ms'])} | {fmt_ms(max(walls))} "
                f"| {fmt_ms(min(walls))} | {result['failures']}/{len(walls)} |"
            )
        failed = [
            (index, process)
            for index, result in enumerate(parallel["rounds"], 1)
            for process in result["processes"]
            if process["status"] != 0
        ]
        for index, process in failed[:5]:
            out += [
                "",
                f"Round {index}, run {process['index']}: exit status {process['status']}:",
                "",
                "```",
            ]
            out += process.get("stderr", "").splitlines()[-6:]
            out += ["```"]

    errors = errors_section([warm, pull, big])
    if errors:
        out += ["", "## Failures", ""] + errors

    if notes.strip():
        out += ["", "## Setup and differences between the compared commands", ""]
        out += notes.rstrip().splitlines()
    return "\n".join(out) + "\n"


def main(argv):
    if len(argv) >= 3 and argv[0] == "time":
        command_time(argv[1], argv[2])
    elif len(argv) >= 5 and argv[0] == "parallel" and argv[4] == "--":
        command_parallel(argv[1], int(argv[2]), int(argv[3]), argv[5:])
    elif len(argv) == 5 and argv[0] == "offcpu":
        command_offcpu(argv[1], int(argv[2]), argv[3], argv[4])
    elif argv and argv[0] == "report":
        write = None
        rest = argv[1:]
        if len(rest) >= 2 and rest[0] == "--write":
            write, rest = rest[1], rest[2:]
        if len(rest) != 1:
            print(__doc__, file=sys.stderr)
            return 2
        text = report(rest[0])
        sys.stdout.write(text)
        if write:
            Path(write).write_text(text)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
