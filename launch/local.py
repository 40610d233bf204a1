"""Run jaxlm on several processes of this machine, as on several hosts (CPU testing).

    python launch/local.py --processes 2 -- --config configs/demo.yaml train.steps=20
    python launch/local.py --processes 2 --dry-run -- --config configs/demo.yaml

Each process gets `--devices_per_process` CPU devices and joins the others through
`jax.distributed` (gloo collectives) at localhost:<port>; together they form one mesh, and each
loads only its share of every batch. Output lines are prefixed with the process index; the first
process to fail stops the others, and its exit status is returned.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys
import threading

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def commands(processes: int, devices_per_process: int, port: int, args: list[str],
             python: str = sys.executable) -> list[tuple[dict, list[str]]]:
    """(environment additions, argv) of each process."""
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)  # jaxlm importable uninstalled
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
           "PYTHONPATH": path}
    return [(env, [python, "-m", "jaxlm.main", f"--coordinator=localhost:{port}",
                   f"--num_processes={processes}", f"--process_id={i}", *args])
            for i in range(processes)]


def shell_line(env: dict, argv: list[str]) -> str:
    return " ".join([f"{k}={shlex.quote(v)}" for k, v in env.items()] + [shlex.quote(a) for a in argv])


def _pipe(index: int, stream, out) -> None:
    for line in stream:
        out.write(f"[{index}] {line}")
        out.flush()


def run(cmds: list[tuple[dict, list[str]]]) -> int:
    """Starts every process, relays their output, and returns the first non-zero status (or 0)."""
    procs, relays = [], []
    for i, (env, argv) in enumerate(cmds):
        p = subprocess.Popen(argv, env={**os.environ, **env}, cwd=os.getcwd(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, bufsize=1)
        procs.append(p)
        t = threading.Thread(target=_pipe, args=(i, p.stdout, sys.stdout), daemon=True)
        t.start()
        relays.append(t)
    status = 0
    try:
        pending = list(procs)
        while pending:
            for p in list(pending):
                try:
                    code = p.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    continue
                pending.remove(p)
                if code and not status:
                    status = code
                    for other in pending:  # a lone survivor would wait for its peers forever
                        other.terminate()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        status = status or 130
    for p in procs:
        p.wait()
    for t in relays:
        t.join(timeout=5)
    return status


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s [options] -- --config C [key=value ...]")
    parser.add_argument("--processes", type=int, default=2, help="processes to start (default 2)")
    parser.add_argument("--devices_per_process", type=int, default=1, help="CPU devices in each (default 1)")
    parser.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="arguments of python -m jaxlm.main")
    args = parser.parse_args(argv)
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    if args.processes < 1 or args.devices_per_process < 1:
        parser.error("--processes and --devices_per_process must be at least 1")
    if not train_args:
        parser.error("give the trainer's arguments after --, e.g. -- --config configs/demo.yaml")
    cmds = commands(args.processes, args.devices_per_process, args.port or free_port(), train_args)
    if args.dry_run:
        for env, command in cmds:
            print(shell_line(env, command))
        return 0
    return run(cmds)


if __name__ == "__main__":
    sys.exit(main())
