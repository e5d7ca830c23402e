"""C++ protobuf + gRPC code generation with Debian's protoc and grpc_cpp_plugin."""

def cc_grpc_proto_library(name, srcs, deps = [], imports = [], grpc = True, **kwargs):
    """Generates <src>.pb.{h,cc} (and .grpc.pb.{h,cc}, _mock.grpc.pb.h) for each proto in srcs.

    Protos live under proto/ of the calling package; they import each other as
    "mkfleet/v1/x.proto" and C++ includes them as "mkfleet/v1/x.pb.h". `imports` are protos
    that srcs import but whose code comes from `deps`.
    """
    outs = []
    hdrs = []
    for src in srcs:
        base = src[:-len(".proto")]
        outs += [base + ".pb.h", base + ".pb.cc"]
        hdrs.append(base + ".pb.h")
        if grpc:
            outs += [base + ".grpc.pb.h", base + ".grpc.pb.cc", base + "_mock.grpc.pb.h"]
            hdrs += [base + ".grpc.pb.h", base + "_mock.grpc.pb.h"]
    pkg = native.package_name()
    grpc_flags = ""
    if grpc:
        grpc_flags = ("--grpc_out=generate_mock_code=true:$(GENDIR)/%s " % pkg +
                      "--plugin=protoc-gen-grpc=/usr/bin/grpc_cpp_plugin ")
    native.genrule(
        name = name + "_codegen",
        srcs = srcs + imports,
        outs = outs,
        cmd = ("/usr/bin/protoc -I%s --cpp_out=$(GENDIR)/%s %s" % (pkg or ".", pkg, grpc_flags) +
               " ".join(["$(location %s)" % s for s in srcs])),
    )
    native.cc_library(
        name = name,
        srcs = [o for o in outs if o.endswith(".cc")],
        hdrs = hdrs,
        includes = ["."],
        deps = deps + (["@system//:grpc"] if grpc else ["@system//:protobuf"]),
        **kwargs
    )
