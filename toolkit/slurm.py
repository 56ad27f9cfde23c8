"""Launching any recipe on a SLURM cluster: N nodes x G GPUs, one `accelerate launch` per node.

    sbatch --nodes=2 --gpus-per-node=8 scripts/slurm.sbatch recipes/fast_cnn.py --run_dir=/shared/runs/fast --resume

scripts/slurm.sbatch runs `srun python -m toolkit.slurm RECIPE ARGS...` once per node; this module reads
SLURM's variables (the node's rank, the job's node list, GPUs per node) and replaces itself with

    accelerate launch --multi_gpu --num_machines N --num_processes N*G --machine_rank R
        --main_process_ip <first node> --main_process_port <port> --rdzv_backend static --same_network
        RECIPE ARGS...

(`--print` shows the command instead of running it). The port is 29500 + the job id modulo 1000 unless
MAIN_PROCESS_PORT is set, so two jobs sharing a node do not collide.
"""

from __future__ import annotations

import os
import re
import shlex
import sys

from toolkit.errors import UserError


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[03-05,09],cpu1' -> 'gpu03' ('scontrol show hostnames' order)."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise UserError(f"cannot read the SLURM node list {nodelist!r}")
    prefix, ranges = match.group(1), match.group(2)
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def gpus_per_node(environ: dict) -> int:
    """GPUs SLURM gave this node: SLURM_GPUS_ON_NODE, else SLURM_GPUS_PER_NODE ('8' or 'a100:8'), else 1."""
    for key in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        value = environ.get(key, "")
        if value:
            return int(value.split(":")[-1].split("(")[0])
    return 1


def accelerate_launch_command(environ: dict, recipe_args: list[str], accelerate: str = "accelerate") -> list[str]:
    """The `accelerate launch` command for this node of the job described by `environ` (SLURM's variables)."""
    missing = [k for k in ("SLURM_NNODES", "SLURM_NODEID", "SLURM_JOB_NODELIST") if k not in environ]
    if missing:
        raise UserError(f"not inside a SLURM job ({', '.join(missing)} unset): submit with "
                        "`sbatch scripts/slurm.sbatch RECIPE ARGS` (or `--print` inside srun to check)")
    if not recipe_args:
        raise UserError("name the recipe to run, e.g. recipes/fast_cnn.py, followed by its options")
    nodes, node_rank, gpus = int(environ["SLURM_NNODES"]), int(environ["SLURM_NODEID"]), gpus_per_node(environ)
    port = environ.get("MAIN_PROCESS_PORT") or str(29500 + int(environ.get("SLURM_JOB_ID", "0")) % 1000)
    processes = nodes * gpus
    command = [accelerate, "launch"]
    if processes > 1:
        command.append("--multi_gpu")
    command += ["--num_machines", str(nodes), "--num_processes", str(processes), "--machine_rank", str(node_rank),
                "--main_process_ip", first_host(environ["SLURM_JOB_NODELIST"]), "--main_process_port", port,
                "--rdzv_backend", "static", "--same_network"]
    return command + list(recipe_args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    show_only = "--print" in argv[:1]
    arguments = argv[1:] if show_only else argv
    try:
        command = accelerate_launch_command(dict(os.environ), arguments)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"[slurm] node {os.environ['SLURM_NODEID']}: {shlex.join(command)}", flush=True)
    if show_only:
        return 0
    os.execvp(command[0], command)  # accelerate launch takes over this process (signals reach it directly)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
