"""static_system_binary: a C++ binary with Debian's system libraries linked statically.

A cc_binary links @system's libraries (gRPC, protobuf, Abseil, OpenSSL...) dynamically: 66
shared objects for mkapply, whose symbol lookups and page faults at start-up cost more than
the command itself (about 40 ms of a 60 ms `mkapply apply` here). This rule links the same
objects and libraries again with each `-lNAME` that has a static archive (as @system found
them: STATIC_ARCHIVES) replaced by that archive. Libraries named in `keep_dynamic` (and
those without an archive, glibc's among them) stay shared.
"""

load("@bazel_tools//tools/cpp:toolchain_utils.bzl", "find_cpp_toolchain")
load("@system//:static_libs.bzl", "STATIC_ARCHIVES")

# glibc's and the compiler's own: always shared (a static libm beside a shared libc, say,
# is not a combination to ship).
_ALWAYS_SHARED = ["c", "m", "dl", "rt", "pthread", "stdc++", "atomic", "gcc_s", "udev"]

def _static_flag(flag, keep):
    if flag in keep or flag not in STATIC_ARCHIVES:
        return flag
    return "-l:" + STATIC_ARCHIVES[flag].rsplit("/", 1)[1]

def _impl(ctx):
    cc_toolchain = find_cpp_toolchain(ctx)
    features = cc_common.configure_features(
        ctx = ctx,
        cc_toolchain = cc_toolchain,
        requested_features = ctx.features,
        unsupported_features = ctx.disabled_features,
    )
    keep = ["-l" + name for name in _ALWAYS_SHARED + ctx.attr.keep_dynamic]
    inputs = []
    for dep in ctx.attr.deps:
        for li in dep[CcInfo].linking_context.linker_inputs.to_list():
            inputs.append(cc_common.create_linker_input(
                owner = li.owner,
                libraries = depset(li.libraries),
                user_link_flags = depset([_static_flag(f, keep) for f in li.user_link_flags]),
                additional_inputs = depset(li.additional_inputs),
            ))
    linking = cc_common.create_linking_context(linker_inputs = depset(inputs, order = "topological"))
    out = cc_common.link(
        actions = ctx.actions,
        feature_configuration = features,
        cc_toolchain = cc_toolchain,
        linking_contexts = [linking],
        name = ctx.label.name,
        output_type = "executable",
        link_deps_statically = True,
    )
    return [DefaultInfo(executable = out.executable, files = depset([out.executable]))]

static_system_binary = rule(
    implementation = _impl,
    attrs = {
        "deps": attr.label_list(providers = [CcInfo], doc = "cc_libraries, main() among them (alwayslink)"),
        "keep_dynamic": attr.string_list(doc = "system libraries to leave shared, by name (e.g. hwloc)"),
        "_cc_toolchain": attr.label(default = "@bazel_tools//tools/cpp:current_cc_toolchain"),
    },
    executable = True,
    fragments = ["cpp"],
    toolchains = ["@bazel_tools//tools/cpp:toolchain_type"],
)
