// mkapply's -o formats over objects, as kubectl has them: the objects as stored (yaml, json:
// one object unwrapped, several in a List), name (Kind/name), jsonpath=TEMPLATE and
// custom-columns=HEADER:PATH,... Thread-safety: pure functions.
#ifndef MKFLEET_CLI_OUTPUT_H_
#define MKFLEET_CLI_OUTPUT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mkfleet/v1/manifest.pb.h"
#include "nlohmann/json.hpp"

namespace mkfleet::cli {

using Json = nlohmann::ordered_json;

// "Host/node-a".
std::string NameOf(const mkfleet::v1::Object& object);

// One object as stored, with its status (manifests::PrintJson): sizes as quantities, enum
// values as manifests spell them.
Json ObjectJson(const mkfleet::v1::Object& object);

// `single`: the one object itself; else {"apiVersion", "kind": "List", "items": [...]}.
Json ObjectsJson(const std::vector<mkfleet::v1::Object>& objects, bool single);

// Whether `output` is one of the formats below (yaml, json, name, jsonpath=..., custom-columns=...).
bool IsObjectFormat(const std::string& output);

// Prints `objects` in `output` (IsObjectFormat). InvalidArgument for a bad template or
// column spec, naming what is wrong.
absl::StatusOr<std::string> FormatObjects(const std::vector<mkfleet::v1::Object>& objects, bool single,
                                          const std::string& output);

// kubectl's JSONPath, the part people use: literal text; {.a.b}, {.a[0]}, {.a[*].b},
// {['a.b']}, {.a..b} is not supported; {range EXPR}...{end} over a list; {"\n"} and \n, \t
// in text. Several values print space-separated; objects and lists as compact JSON.
absl::StatusOr<std::string> JsonPath(const Json& data, const std::string& template_text);

}  // namespace mkfleet::cli

#endif  // MKFLEET_CLI_OUTPUT_H_
