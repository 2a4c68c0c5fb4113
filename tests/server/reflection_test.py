#!/usr/bin/python3
"""Reflection test: an independent client of pagepoold, as grpcurl is.

Runs with Debian's /usr/bin/python3 (python3-grpcio, python3-protobuf) and no generated code of
pagepool.v1: it compiles the server-reflection and health protocols' messages from Debian's
grpc-proto with /usr/bin/protoc, starts the real pagepoold on 127.0.0.1:0, lists the services over
reflection, resolves pagepool.v1.PagePoolService's file descriptors, builds message classes from
them, invokes CreateDevice from JSON (as `grpcurl -d '{...}'` does), checks health, then sends
SIGTERM and checks exit status 0 and the summary.

Usage: reflection_test.py --pagepoold PATH [--protoc /usr/bin/protoc]
"""
import argparse
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

GRPC_PROTO_DIRS = ["/usr/share/grpc-proto", "/usr/include"]
REFLECTION = "grpc/reflection/v1alpha/reflection.proto"
HEALTH = "grpc/health/v1/health.proto"


def find_proto(rel):
    for d in GRPC_PROTO_DIRS:
        p = os.path.join(d, rel)
        if os.path.exists(p):
            return p
    out = subprocess.run(["dpkg", "-L", "grpc-proto"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.endswith(rel):
            return line
    sys.exit(f"FAIL: cannot find {rel} (Debian package grpc-proto)")


def compile_messages(protoc, tmp):
    """protoc --python_out for the reflection and health messages, as top-level modules (the
    proto packages stay grpc.reflection.v1alpha / grpc.health.v1; only the Python module names
    change, so they do not clash with the grpc package)."""
    src = os.path.join(tmp, "src")
    os.makedirs(src)
    for rel, name in ((REFLECTION, "reflection.proto"), (HEALTH, "health.proto")):
        shutil.copy(find_proto(rel), os.path.join(src, name))
    subprocess.run([protoc, "-I", src, "--python_out", tmp, "reflection.proto", "health.proto"],
                   check=True)
    sys.path.insert(0, tmp)
    return importlib.import_module("reflection_pb2"), importlib.import_module("health_pb2")


def message_class(pool, full_name):
    desc = pool.FindMessageTypeByName(full_name)
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(desc)
    return message_factory.MessageFactory(pool).GetPrototype(desc)


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}")


def run(args, port):
    tmp = tempfile.mkdtemp(prefix="pagepool-refl-")
    try:
        refl, health = compile_messages(args.protoc, tmp)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=10)
        info = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=refl.ServerReflectionRequest.SerializeToString,
            response_deserializer=refl.ServerReflectionResponse.FromString)

        def ask(**kw):
            return next(iter(info(iter([refl.ServerReflectionRequest(**kw)]), timeout=10)))

        # `grpcurl list`
        services = [s.name for s in ask(list_services="").list_services_response.service]
        print("services:", services)
        check("pagepool.v1.PagePoolService" in services, "reflection lists PagePoolService")
        check("grpc.health.v1.Health" in services, "reflection lists grpc.health.v1.Health")

        # `grpcurl describe pagepool.v1.PagePoolService`: resolve the file and its dependencies.
        pool = descriptor_pool.DescriptorPool()
        added = set()

        def add_files(resp):
            for raw in resp.file_descriptor_response.file_descriptor_proto:
                fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
                if fd.name in added:
                    continue
                for dep in fd.dependency:
                    if dep not in added:
                        add_files(ask(file_by_filename=dep))
                pool.Add(fd)
                added.add(fd.name)

        add_files(ask(file_containing_symbol="pagepool.v1.PagePoolService"))
        svc = pool.FindServiceByName("pagepool.v1.PagePoolService")
        methods = [m.name for m in svc.methods]
        print("methods:", methods)
        for name in ["CreateDevice", "GetDevice", "ListDevices", "UnbindDevice", "CreatePool",
                     "GetPool", "ListPools", "DestroyPool", "Allocate", "Recycle", "Return",
                     "Traffic", "ListInflight", "GetDomain", "DumpPageTable", "WatchEvents"]:
            check(name in methods, f"describe shows {name}")
        traffic = svc.FindMethodByName("Traffic")
        check(traffic.input_type.full_name == "pagepool.v1.TrafficRequest", "Traffic's input type")
        pool_fields = [f.name for f in pool.FindMessageTypeByName("pagepool.v1.Pool").fields]
        for f in ["id", "ifindex", "napi_id", "inflight", "inflight_mem", "detach_time", "stats",
                  "dma_mapped"]:
            check(f in pool_fields, f"Pool has field {f}")

        # `grpcurl -d '{...}' ... pagepool.v1.PagePoolService/CreateDevice`
        method = svc.FindMethodByName("CreateDevice")
        req_cls = message_class(pool, method.input_type.full_name)
        resp_cls = message_class(pool, method.output_type.full_name)
        call = channel.unary_unary(f"/{svc.full_name}/{method.name}",
                                   request_serializer=req_cls.SerializeToString,
                                   response_deserializer=resp_cls.FromString)
        req = json_format.Parse(
            '{"name": "refl0", "iommu_mode": "IOMMU_MODE_LAZY", "address_width": 39}', req_cls())
        resp = call(req, timeout=10)
        out = json.loads(json_format.MessageToJson(resp, preserving_proto_field_name=True))
        print("CreateDevice ->", json.dumps(out)[:200])
        dev = out["device"]
        check(dev["name"] == "refl0", "CreateDevice answered the device")
        check(dev["iommu_mode"] == "IOMMU_MODE_LAZY", "iommu_mode as sent")
        check(dev["state"] == "DEVICE_STATE_BOUND", "device is bound")

        # An error comes back with its code.
        get = svc.FindMethodByName("GetDevice")
        get_req = message_class(pool, get.input_type.full_name)
        get_call = channel.unary_unary(
            f"/{svc.full_name}/GetDevice", request_serializer=get_req.SerializeToString,
            response_deserializer=message_class(pool, get.output_type.full_name).FromString)
        try:
            get_call(json_format.Parse('{"device_id": 999}', get_req()), timeout=10)
            check(False, "GetDevice 999 fails")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.NOT_FOUND, "GetDevice 999 is NOT_FOUND")
            check("999" in e.details(), "the message names the id")

        # grpc.health.v1
        hc = channel.unary_unary("/grpc.health.v1.Health/Check",
                                 request_serializer=health.HealthCheckRequest.SerializeToString,
                                 response_deserializer=health.HealthCheckResponse.FromString)
        status = hc(health.HealthCheckRequest(service=""), timeout=10).status
        check(status == health.HealthCheckResponse.SERVING, "health: SERVING")
        channel.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pagepoold", required=True)
    ap.add_argument("--protoc", default="/usr/bin/protoc")
    args = ap.parse_args()
    daemon = subprocess.Popen(
        [args.pagepoold, "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--memory-gib", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = daemon.stdout.readline()
        m = re.search(r"\(port (\d+)\)", first)
        if not m:
            sys.exit(f"FAIL: pagepoold did not report its port: {first!r}")
        run(args, int(m.group(1)))
    except BaseException:
        daemon.kill()
        daemon.wait()
        raise
    daemon.send_signal(signal.SIGTERM)
    rest, _ = daemon.communicate(timeout=30)
    print(rest)
    check(daemon.returncode == 0, "pagepoold exits 0 on SIGTERM")
    check("pagepoold summary" in rest and "CreateDevice 1" in rest, "summary printed")
    print("PASS")


if __name__ == "__main__":
    main()
