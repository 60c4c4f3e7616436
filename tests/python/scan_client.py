"""A Python grpcio client generated from proto/ at run time: proves the contract is usable
from another language. Usage: scan_client.py GATEWAY_ADDR MACHINE_ID

Checks health, then StartScan + GetScan, then follows a RunScan stream to SUCCEEDED, and a
bad request's INVALID_ARGUMENT. Exits non-zero with a message on any mismatch.
"""

import importlib
import os
import sys
import tempfile

from grpc_tools import protoc
import grpc


def generate(proto_root, out_dir):
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main([
        "protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        "defender/scan/v1/scan.proto",
    ])
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")
    sys.path.insert(0, out_dir)
    pb = importlib.import_module("defender.scan.v1.scan_pb2")
    rpc = importlib.import_module("defender.scan.v1.scan_pb2_grpc")
    return pb, rpc


def check(condition, message):
    if not condition:
        sys.exit(f"FAILED: {message}")


def main():
    addr, machine = sys.argv[1], sys.argv[2]
    proto_root = os.path.join(os.path.dirname(__file__), "..", "..", "proto")
    with tempfile.TemporaryDirectory() as out_dir:
        pb, rpc = generate(proto_root, out_dir)
        with grpc.insecure_channel(addr) as channel:
            stub = rpc.ScanServiceStub(channel)

            started = stub.StartScan(pb.StartScanRequest(
                machine_id=machine, scan_type=pb.SCAN_TYPE_QUICK, comment="from python"),
                timeout=10)
            check(started.action.status == pb.ACTION_STATUS_PENDING, f"StartScan: {started}")
            got = stub.GetScan(pb.GetScanRequest(action_id=started.action.id), timeout=10)
            check(got.action.id == started.action.id, "GetScan returns the started action")

            statuses = []
            for response in stub.RunScan(pb.RunScanRequest(
                    machine_id=machine, scan_type=pb.SCAN_TYPE_FULL, comment="from python"),
                    timeout=30):
                if response.update.WhichOneof("event") == "action":
                    statuses.append(pb.ActionStatus.Name(response.update.action.status))
            print("RunScan statuses:", " -> ".join(statuses))
            check(statuses[-1] == "ACTION_STATUS_SUCCEEDED", f"ends SUCCEEDED: {statuses}")
            check(statuses[0] in ("ACTION_STATUS_PENDING", "ACTION_STATUS_IN_PROGRESS"),
                  f"starts pending: {statuses}")

            try:
                stub.StartScan(pb.StartScanRequest(machine_id="nope", comment="x"), timeout=10)
                check(False, "an invalid request must fail")
            except grpc.RpcError as err:
                check(err.code() == grpc.StatusCode.INVALID_ARGUMENT, f"got {err.code()}")
    print("python client: OK")


if __name__ == "__main__":
    main()
