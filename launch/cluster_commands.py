"""Prints the command to run on each machine of a multi-worker cluster.

    python -m launch.cluster_commands --hosts=gpu1,gpu2 --port=2222 -- \
        --config=configs/nail_unet_effb4.py --data_root=/data/nails --workdir=/shared/runs/effb4

prints one line per host, to be run on that host (worker 0 is the chief, the
one that writes metrics, checkpoints and the export). Every worker must see the
same --workdir (a shared file system): the chief writes the checkpoints there
and every worker restores from them on a restart. The hosts must reach each
other on the port.

--docker_image=IMAGE prints `docker run` commands of the trainer image instead
(host networking, so that the workers reach each other on the host's port);
--ssh prefixes each command with `ssh HOST`, to be run from one machine.
"""

import argparse
import json
import shlex
import sys

from launch.multi_worker_local import tf_configs

DEFAULT_PORT = 2222


def addresses(hosts: list[str], port: int) -> list[str]:
    """host:port of each host; a host given as host:port keeps its own port."""
    return [host if ":" in host else f"{host}:{port}" for host in hosts]


def host_commands(
    hosts: list[str],
    trainer_args: list[str],
    *,
    port: int = DEFAULT_PORT,
    python: str = "python",
    remote_dir: str | None = None,
    docker_image: str | None = None,
    docker_volumes: tuple[str, ...] = (),
    ssh: bool = False,
) -> list[tuple[str, str]]:
    """(host, shell command) for each worker, in worker order.

    Args:
        hosts: machine names or addresses, worker 0 (the chief) first.
        trainer_args: flags of trainer.train; --strategy=multi_worker_mirrored is added.
        port: port the workers listen on, for hosts given without one.
        python: the Python interpreter on the hosts (without docker).
        remote_dir: directory to `cd` into first (the repository on the hosts).
        docker_image: if set, run the trainer image instead of a local checkout.
        docker_volumes: `-v` arguments of docker run, e.g. /data/nails:/data:ro.
        ssh: prefix each command with `ssh HOST`.
    """
    if not hosts:
        raise ValueError("give at least one host")
    args = list(trainer_args)
    if not any(a.startswith("--strategy") for a in args):
        args.append("--strategy=multi_worker_mirrored")

    commands = []
    for host, tf_config in zip(hosts, tf_configs(addresses(hosts, port))):
        tf_config_json = json.dumps(tf_config, separators=(",", ":"))
        if docker_image:
            # Host networking: TF_CONFIG names the hosts' own addresses and ports.
            words = ["docker", "run", "--rm", "--gpus", "all", "--network", "host"]
            words += ["-e", f"TF_CONFIG={tf_config_json}"]
            for volume in docker_volumes:
                words += ["-v", volume]
            command = shlex.join([*words, docker_image, *args])
        else:
            command = shlex.join([f"TF_CONFIG={tf_config_json}", python, "-m", "trainer.train"])
            command = f"{command} {shlex.join(args)}" if args else command
            if remote_dir:
                command = f"cd {shlex.quote(remote_dir)} && {command}"
        if ssh:
            command = f"ssh {shlex.quote(host.split(':')[0])} {shlex.quote(command)}"
        commands.append((host, command))
    return commands


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s --hosts=H1,H2,... [options] -- TRAINER_FLAGS...",
    )
    parser.add_argument("--hosts", required=True, help="comma-separated, the chief first")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--python", default="python", help="interpreter on the hosts")
    parser.add_argument("--remote_dir", default=None, help="cd here first (the checkout)")
    parser.add_argument("--docker_image", default=None, help="run this trainer image")
    parser.add_argument(
        "--docker_volume", action="append", default=[], help="docker -v argument (repeatable)"
    )
    parser.add_argument("--ssh", action="store_true", help="prefix each command with ssh HOST")
    parser.add_argument("trainer_args", nargs=argparse.REMAINDER, help="flags of trainer.train")
    args = parser.parse_args(argv)
    trainer_args = args.trainer_args
    if trainer_args and trainer_args[0] == "--":
        trainer_args = trainer_args[1:]
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    if not hosts:
        parser.error("--hosts is empty")

    commands = host_commands(
        hosts,
        trainer_args,
        port=args.port,
        python=args.python,
        remote_dir=args.remote_dir,
        docker_image=args.docker_image,
        docker_volumes=tuple(args.docker_volume),
        ssh=args.ssh,
    )
    for index, (host, command) in enumerate(commands):
        role = "worker 0, the chief" if index == 0 else f"worker {index}"
        print(f"# on {host} ({role})")
        print(command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
