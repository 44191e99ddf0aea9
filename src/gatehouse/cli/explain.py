"""`gatehouse explain SUBJECT PERMISSION RESOURCE`: the decision and its proof tree."""

from __future__ import annotations

import argparse
from typing import Any

from gatehouse.server.client import add_client_args, run_client
from gatehouse.v1 import decision_pb2 as pb
from gatehouse.v1 import decision_pb2_grpc as pb_grpc


def render(node: pb.ProofNode, indent: str = "") -> list[str]:
    mark = "✓" if node.allowed else "✗"
    lines = [f"{indent}{mark} {node.label}"]
    for c in node.children:
        lines.extend(render(c, indent + "  "))
    return lines


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "explain", help="show why SUBJECT has (or lacks) PERMISSION on RESOURCE"
    )
    add_client_args(p)
    p.add_argument("subject", metavar="SUBJECT")
    p.add_argument("permission", metavar="PERMISSION")
    p.add_argument("resource", metavar="RESOURCE")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    def body(stub: pb_grpc.DecisionServiceStub, timeout: float) -> None:
        req = pb.ExplainRequest(
            subject=args.subject,
            permission=args.permission,
            resource=args.resource,
            at_least_revision=args.at_least_revision,
        )
        r = stub.Explain(req, timeout=timeout)
        print(f"{'allow' if r.allowed else 'deny'} {r.revision} {r.reason}")
        print("\n".join(render(r.proof)))

    return run_client(args, body)
