"""How `samora-kit run` starts its processes with torchrun: on this machine alone (--standalone), or
as one of several machines that meet at a c10d rendezvous endpoint or at a fixed master address."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from .errors import SamoraError

MEET = ("add --rdzv-endpoint HOST:PORT (the same on every node), or --master-addr HOST "
        "[--master-port PORT] with this node's --node-rank")


@dataclass(frozen=True)
class Launch:
    """The process layout of one run: `nproc_per_node` processes on each of `nnodes` machines."""
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int | None = None
    rdzv_endpoint: str | None = None
    master_addr: str | None = None
    master_port: int | None = None

    def check(self) -> None:
        """Refuse a layout torchrun could not start, or would start differently from what was asked."""
        if self.nproc_per_node < 1:
            raise SamoraError(f"--nproc-per-node {self.nproc_per_node}: start at least 1 process")
        if self.nnodes < 1:
            raise SamoraError(f"--nnodes {self.nnodes}: at least 1 node")
        if self.rdzv_endpoint is not None and self.master_addr is not None:
            raise SamoraError("--rdzv-endpoint and --master-addr are two ways for the nodes to meet; give one")
        if self.nnodes > 1 and self.rdzv_endpoint is None and self.master_addr is None:
            raise SamoraError(f"--nnodes {self.nnodes}: the nodes need a place to meet; {MEET}")
        if self.rdzv_endpoint is not None and not self.rdzv_endpoint.strip():
            raise SamoraError("--rdzv-endpoint is empty; expected HOST:PORT")
        if self.master_port is not None and self.master_addr is None:
            raise SamoraError("--master-port goes with --master-addr")
        if self.master_port is not None and not 0 < self.master_port < 65536:
            raise SamoraError(f"--master-port {self.master_port}: expected a port from 1 to 65535")
        if self.node_rank is not None and self.rdzv_endpoint is not None:
            raise SamoraError("--node-rank: the c10d rendezvous at --rdzv-endpoint numbers the nodes itself; "
                              "drop --node-rank, or meet at a fixed --master-addr instead")
        if self.node_rank is not None and self.master_addr is None:
            raise SamoraError("--node-rank goes with --master-addr (node 0 runs there) and --nnodes")
        if self.master_addr is not None and self.nnodes > 1 and self.node_rank is None:
            raise SamoraError(f"--master-addr with --nnodes {self.nnodes}: give this node's --node-rank, "
                              f"from 0 (on {self.master_addr}) to {self.nnodes - 1}")
        if self.node_rank is not None and not 0 <= self.node_rank < self.nnodes:
            raise SamoraError(f"--node-rank {self.node_rank}: with --nnodes {self.nnodes} it is "
                              f"from 0 to {self.nnodes - 1}")

    @property
    def needs_torchrun(self) -> bool:
        """One process on one machine runs in this process; anything more goes through torchrun."""
        return (self.nproc_per_node > 1 or self.nnodes > 1 or self.rdzv_endpoint is not None
                or self.master_addr is not None)

    def torchrun_args(self) -> list[str]:
        """torch.distributed.run's options for this layout."""
        procs = f"--nproc-per-node={self.nproc_per_node}"
        if self.rdzv_endpoint is not None:
            return [f"--nnodes={self.nnodes}", procs, "--rdzv-backend=c10d", f"--rdzv-endpoint={self.rdzv_endpoint}"]
        if self.master_addr is not None:  # torchrun's static rendezvous: node 0 listens at the address
            port = [] if self.master_port is None else [f"--master-port={self.master_port}"]
            return [f"--nnodes={self.nnodes}", f"--node-rank={self.node_rank or 0}", procs,
                    f"--master-addr={self.master_addr}", *port]
        return ["--standalone", procs]


def torchrun_command(launch: Launch, run_argv: list[str]) -> list[str]:
    """The command that starts `samora-kit <run_argv>` in every process of `launch` on this node."""
    launch.check()
    return [sys.executable, "-m", "torch.distributed.run", *launch.torchrun_args(), "-m", "samora_kit.cli", *run_argv]
