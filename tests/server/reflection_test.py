#!/usr/bin/python3
"""Reflection test: an independent client of pagepoold, as grpcurl is.

Runs with Debian's /usr/bin/python3 (python3-grpcio, python3-protobuf) and no generated code of
pagepool.v1: it compiles the server-reflection and health protocols' messages from Debian's
grpc-proto with /usr/bin/protoc, starts the real pagepoold on 127.0.0.1:0, lists the services over
reflection, resolves pagepool.v1.PagePoolService's file descriptors, checks that they carry the
.proto comments (source_code_info, what `grpcurl describe` prints) and that questions without an
answer get NOT_FOUND in error_response, builds message classes from the descriptors, invokes
CreateDevice from JSON (as `grpcurl -d '{...}'` does), checks health, then sends SIGTERM and checks
exit status 0 and the summary.

The expected comments are read from the .proto source (--proto), so that editing a comment does not
break the test; the test fails if they are empty.

Usage: reflection_test.py --pagepoold PATH [--protoc /usr/bin/protoc] [--proto pagepool.proto]
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


def proto_comment(proto_path, pattern):
    """The `//` comment lines right above the first line of the .proto matching `pattern`, joined
    as protoc reports a leading comment: each line without its `//`, ending in a newline."""
    with open(proto_path) as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if re.search(pattern, line):
            j = i
            while j > 0 and lines[j - 1].strip().startswith("//"):
                j -= 1
            text = "".join(l.strip()[2:] + "\n" for l in lines[j:i])
            if not text.strip():
                sys.exit(f"FAIL: no comment above {pattern!r} in {proto_path}")
            return text
    sys.exit(f"FAIL: {pattern!r} not found in {proto_path}")


def leading_comment(fd, path):
    """The leading comment that source_code_info holds for the element at `path`, or None."""
    for loc in fd.source_code_info.location:
        if list(loc.path) == path:
            return loc.leading_comments
    return None


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
        check("grpc.reflection.v1alpha.ServerReflection" in services,
              "reflection lists grpc.reflection.v1alpha.ServerReflection")
        check("grpc.reflection.v1.ServerReflection" in services,
              "reflection lists grpc.reflection.v1.ServerReflection")

        # grpc.reflection.v1 has the same messages (wire-compatible) in another package.
        info_v1 = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=refl.ServerReflectionRequest.SerializeToString,
            response_deserializer=refl.ServerReflectionResponse.FromString)
        v1_resp = next(iter(info_v1(iter([refl.ServerReflectionRequest(list_services="")]),
                                    timeout=10)))
        check(sorted(s.name for s in v1_resp.list_services_response.service) == sorted(services),
              "grpc.reflection.v1 lists the same services")

        # Questions without an answer: NOT_FOUND in error_response, naming what was asked; several
        # requests on one stream are answered in order.
        answers = list(info(iter([
            refl.ServerReflectionRequest(file_containing_symbol="pagepool.v1.NoSuchThing"),
            refl.ServerReflectionRequest(file_by_filename="no/such/file.proto"),
            refl.ServerReflectionRequest(file_containing_extension=refl.ExtensionRequest(
                containing_type="pagepool.v1.Pool", extension_number=1000)),
            refl.ServerReflectionRequest(all_extension_numbers_of_type="pagepool.v1.NoSuchType"),
            refl.ServerReflectionRequest(all_extension_numbers_of_type="pagepool.v1.Pool"),
        ]), timeout=10))
        check(len(answers) == 5, "five requests on one stream, five answers")
        not_found = grpc.StatusCode.NOT_FOUND.value[0]
        for answer, name in zip(answers[:4], ["pagepool.v1.NoSuchThing", "no/such/file.proto",
                                              "pagepool.v1.Pool", "pagepool.v1.NoSuchType"]):
            err = answer.error_response
            print("error_response:", err.error_code, err.error_message)
            check(answer.WhichOneof("message_response") == "error_response"
                  and err.error_code == not_found, f"NOT_FOUND for {name}")
            check(name in err.error_message, f"the message names {name}")
        check(answers[0].original_request.file_containing_symbol == "pagepool.v1.NoSuchThing",
              "original_request echoed")
        ext = answers[4]
        check(ext.WhichOneof("message_response") == "all_extension_numbers_response"
              and ext.all_extension_numbers_response.base_type_name == "pagepool.v1.Pool"
              and not ext.all_extension_numbers_response.extension_number,
              "pagepool.v1.Pool has no extension numbers (an empty answer, not an error)")

        # The health service resolves too (its descriptors are served from the embedded set).
        health_files = ask(file_containing_symbol="grpc.health.v1.Health")
        check(health_files.WhichOneof("message_response") == "file_descriptor_response",
              "grpc.health.v1.Health resolves")

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

        first = ask(file_containing_symbol="pagepool.v1.PagePoolService")
        add_files(first)

        # `grpcurl describe` prints the comments: they travel in source_code_info.
        fd = descriptor_pb2.FileDescriptorProto.FromString(
            first.file_descriptor_response.file_descriptor_proto[0])
        check(fd.name == "pagepool/v1/pagepool.proto", "the answer starts with pagepool.proto")
        check(len(fd.source_code_info.location) > 0, "pagepool.proto carries source_code_info")
        svc_index = [s.name for s in fd.service].index("PagePoolService")
        method_index = [m.name for m in fd.service[svc_index].method].index("CreateDevice")
        want = proto_comment(args.proto, r"^\s*rpc CreateDevice\(")
        got = leading_comment(fd, [6, svc_index, 2, method_index])  # service, method
        print("CreateDevice comment:", repr(got))
        check(got == want, f"CreateDevice's comment is the .proto's: {want.strip()!r}")
        msg_index = [m.name for m in fd.message_type].index("Pool")
        field_index = [f.name for f in fd.message_type[msg_index].field].index("inflight")
        want = proto_comment(args.proto, r"^\s*uint64 inflight = 4;")
        got = leading_comment(fd, [4, msg_index, 2, field_index])  # message, field
        print("Pool.inflight comment:", repr(got))
        check(got == want, "Pool.inflight's comment is the .proto's (3 lines)")
        for symbol in ["pagepool.v1.PagePoolService.CreateDevice", "pagepool.v1.Pool.inflight",
                       "pagepool.v1.IommuMode", "pagepool.v1.IOMMU_MODE_LAZY"]:
            names = [descriptor_pb2.FileDescriptorProto.FromString(raw).name for raw in
                     ask(file_containing_symbol=symbol)
                     .file_descriptor_response.file_descriptor_proto]
            check(names[:1] == ["pagepool/v1/pagepool.proto"], f"{symbol} is in pagepool.proto")
        svc = pool.FindServiceByName("pagepool.v1.PagePoolService")
        methods = [m.name for m in svc.methods]
        print("methods:", methods)
        for name in ["CreateDevice", "GetDevice", "ListDevices", "UnbindDevice", "CreatePool",
                     "GetPool", "ListPools", "DestroyPool", "Allocate", "Recycle", "Return",
                     "Traffic", "ListInflight", "GetDomain", "DumpPageTable", "WatchEvents",
                     "RefFrag"]:
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
    ap.add_argument("--proto", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto", "pagepool", "v1",
        "pagepool.proto"))
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
