"""Exposes Debian's system libraries as cc_library targets in @system.

Link flags come from pkg-config where a .pc file exists, raw -l flags elsewhere.
Headers are in /usr/include, which the default toolchain searches already.
"""

_PKG_CONFIG = {
    "grpc": ["grpc++", "protobuf"],
    "protobuf": ["protobuf"],
    "yaml_cpp": ["yaml-cpp"],
    "libyaml": ["yaml-0.1"],
    "hwloc": ["hwloc"],
    "gtest": ["gtest"],
    "gtest_main": ["gtest_main"],
    "gmock": ["gmock", "gtest"],
    "gmock_main": ["gmock_main", "gmock", "gtest"],
    "benchmark": ["benchmark"],
    "tcmalloc": ["libtcmalloc_minimal"],
    "crypto": ["libcrypto"],
    "ssl": ["libssl"],
    "prometheus": ["prometheus-cpp-pull", "prometheus-cpp-core"],
    # Debian builds cpp-httplib as a library with TLS, zlib and brotli on: its users must
    # compile with the same -D flags (they change the classes' layout).
    "httplib": ["cpp-httplib"],
    "zlib": ["zlib"],
    "libgit2": ["libgit2"],
    "absl": [
        "absl_status",
        "absl_statusor",
        "absl_strings",
        "absl_str_format",
        "absl_synchronization",
        "absl_flat_hash_map",
        "absl_flat_hash_set",
        "absl_time",
        "absl_hash",
    ],
}

_RAW = {
    "fdt": ["-lfdt"],
    "sqlite3": ["-lsqlite3"],
    "grpc_reflection": ["-lgrpc++_reflection"],
    "cli11": [],
    "nlohmann_json": [],
    "gpgme": ["-lgpgme", "-lassuan", "-lgpg-error"],
}

_ETCD_SRC = "/usr/share/gocode/src/go.etcd.io/etcd"
_ETCD_PROTOS = [
    "etcdserver/etcdserverpb/rpc.proto",
    "mvcc/mvccpb/kv.proto",
    "auth/authpb/auth.proto",
]

def _system_libs_impl(ctx):
    lines = ['package(default_visibility = ["//visibility:public"])', ""]
    all_flags = []
    for name, pkgs in _PKG_CONFIG.items():
        res = ctx.execute(["pkg-config", "--libs"] + pkgs)
        if res.return_code != 0:
            fail("pkg-config --libs %s failed (run scripts/setup): %s" % (" ".join(pkgs), res.stderr))
        flags = [f for f in res.stdout.strip().split(" ") if f]
        all_flags.extend(flags)
        cflags = ctx.execute(["pkg-config", "--cflags"] + pkgs)
        defines = [f[2:] for f in cflags.stdout.strip().split(" ") if f.startswith("-D")]
        lines.append("cc_library(name = %r, linkopts = %r, defines = %r)" % (name, flags, defines))
    for name, flags in _RAW.items():
        all_flags.extend(flags)
        deps = ["grpc"] if name == "grpc_reflection" else []
        lines.append("cc_library(name = %r, linkopts = %r, deps = %r)" % (name, flags, [":" + d for d in deps]))
    # etcd's v3 API protos, as Debian's golang-etcd-server-dev ships them (proto/etcd strips
    # their Go-only options before generating C++).
    etcd = ctx.path(_ETCD_SRC)
    if not etcd.exists:
        fail("%s is missing (run scripts/setup: golang-etcd-server-dev)" % _ETCD_SRC)
    for p in _ETCD_PROTOS:
        ctx.symlink(_ETCD_SRC + "/" + p, "etcd/" + p)
    lines.append("filegroup(name = \"etcd_protos\", srcs = %r)" % ["etcd/" + p for p in _ETCD_PROTOS])
    # The libraries whose static archive Debian ships (the -dev packages): what
    # //bazel:static_system.bzl links statically into a binary that starts often (mkapply).
    # (Looked up in the compiler's library directories, in its order: one gcc call, not one
    # per library.)
    res = ctx.execute(["gcc", "-print-search-dirs"])
    dirs = []
    for line in res.stdout.splitlines():
        if line.startswith("libraries: ="):
            dirs = [d for d in line[len("libraries: ="):].split(":") if d]
    static = {}
    for flag in all_flags:
        if not flag.startswith("-l") or flag.startswith("-l:") or flag in static:
            continue
        for d in dirs:
            archive = ctx.path(d + "/lib%s.a" % flag[2:])
            if archive.exists:
                static[flag] = str(archive)
                break
    ctx.file("static_libs.bzl", "STATIC_ARCHIVES = %r\n" % static)
    ctx.file("WORKSPACE", "")
    ctx.file("BUILD.bazel", "\n".join(lines) + "\n")

system_libs = repository_rule(
    implementation = _system_libs_impl,
    local = True,
)
