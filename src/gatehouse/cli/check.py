"""`gatehouse check SUBJECT PERMISSION RESOURCE`: prints `allow|deny <revision> <reason>`."""

from __future__ import annotations

import argparse
from typing import Any

from gatehouse.server.client import add_client_args, run_client
from gatehouse.v1 import decision_pb2 as pb
from gatehouse.v1 import decision_pb2_grpc as pb_grpc


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "check", help="ask a running server whether SUBJECT has PERMISSION on RESOURCE"
    )
    add_client_args(p)
    p.add_argument("subject", metavar="SUBJECT", help="e.g. user:ann")
    p.add_argument("permission", metavar="PERMISSION")
    p.add_argument("resource", metavar="RESOURCE", help="e.g. fund:f1")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    def body(stub: pb_grpc.DecisionServiceStub, timeout: float) -> None:
        req = pb.CheckRequest(
            subject=args.subject,
            permission=args.permission,
            resource=args.resource,
            at_least_revision=args.at_least_revision,
        )
        r = stub.Check(req, timeout=timeout)
        print(f"{'allow' if r.allowed else 'deny'} {r.revision} {r.reason}")

    return run_client(args, body)
