#include "manifests/loader.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "manifests/checks.h"
#include "manifests/printer.h"
#include "manifests/schema.h"
#include "manifests/walker.h"
#include "proto/deterministic.h"

namespace mkfleet::manifests {
namespace {

namespace fs = std::filesystem;
using mkfleet::v1::Object;

constexpr absl::string_view kKinds[] = {"Host", "KernelInstance", "InstanceSet", "RoleBinding", "RolloutPolicy", "GitSource"};

const YamlNode* Lookup(const YamlNode& map, absl::string_view key) {
  if (map.kind != YamlNode::Kind::kMap) return nullptr;
  for (const auto& [k, v] : map.entries) {
    if (k->kind == YamlNode::Kind::kScalar && k->value == key) return v;
  }
  return nullptr;
}

google::protobuf::Message* MessageForKind(absl::string_view kind, Object* object) {
  if (kind == "Host") return object->mutable_host();
  if (kind == "KernelInstance") return object->mutable_kernel_instance();
  if (kind == "InstanceSet") return object->mutable_instance_set();
  if (kind == "RoleBinding") return object->mutable_role_binding();
  if (kind == "RolloutPolicy") return object->mutable_rollout_policy();
  if (kind == "GitSource") return object->mutable_git_source();
  return nullptr;
}

bool IsManifestFile(const fs::path& p) {
  std::string ext = p.extension().string();
  return ext == ".yaml" || ext == ".yml";
}

void AddFileError(LoadResult* result, std::string file, std::string message) {
  result->errors.push_back({std::move(file), Position{}, "", "", std::move(message)});
}

void LoadFile(const std::string& file, const LoadOptions& options, LoadResult* result) {
  std::error_code ec;
  uintmax_t size = fs::file_size(file, ec);
  if (ec) {
    AddFileError(result, file, absl::StrCat("cannot read: ", ec.message()));
    return;
  }
  if (size > options.max_file_bytes) {
    AddFileError(result, file,
                 absl::StrCat("file is too large (", size, " bytes; the limit is ",
                              options.max_file_bytes, ")"));
    return;
  }
  std::ifstream in(file, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in.good() && !in.eof()) {
    AddFileError(result, file, "cannot read the file");
    return;
  }
  LoadText(file, text, options, result);
}

}  // namespace

std::string Diagnostic::ToString() const {
  std::string out = absl::StrCat(file, ":", pos.line, ":", pos.column, ": ");
  if (!object.empty()) absl::StrAppend(&out, object, ": ");
  if (!path.empty()) absl::StrAppend(&out, path, ": ");
  absl::StrAppend(&out, message);
  return out;
}

absl::string_view KindOf(const Object& object) {
  switch (object.kind_case()) {
    case Object::kHost:
      return "Host";
    case Object::kKernelInstance:
      return "KernelInstance";
    case Object::kInstanceSet:
      return "InstanceSet";
    case Object::kRoleBinding:
      return "RoleBinding";
    case Object::kRolloutPolicy:
      return "RolloutPolicy";
    case Object::kGitSource:
      return "GitSource";
    default:
      return "";
  }
}

const mkfleet::v1::ObjectMeta& MetadataOf(const Object& object) {
  switch (object.kind_case()) {
    case Object::kHost:
      return object.host().metadata();
    case Object::kKernelInstance:
      return object.kernel_instance().metadata();
    case Object::kInstanceSet:
      return object.instance_set().metadata();
    case Object::kRoleBinding:
      return object.role_binding().metadata();
    case Object::kRolloutPolicy:
      return object.rollout_policy().metadata();
    case Object::kGitSource:
      return object.git_source().metadata();
    default:
      return mkfleet::v1::ObjectMeta::default_instance();
  }
}

std::string LoadResult::Summary() const {
  std::map<absl::string_view, int> counts;
  for (const LoadedObject& o : objects) ++counts[KindOf(o.object)];
  std::vector<std::string> parts;
  for (absl::string_view kind : kKinds) {
    if (counts[kind] > 0) parts.push_back(absl::StrCat(counts[kind], " ", kind));
  }
  return absl::StrCat(objects.size(), objects.size() == 1 ? " object" : " objects", " valid",
                      parts.empty() ? "" : ": ", absl::StrJoin(parts, ", "));
}

void LoadText(absl::string_view file, absl::string_view text, const LoadOptions& options,
              LoadResult* result) {
  const std::string file_name(file);
  YamlError bad_text;
  if (!CheckYamlText(text, &bad_text)) {
    result->errors.push_back({file_name, bad_text.pos, "", "", bad_text.message});
    return;
  }
  YamlTree tree = YamlTree::Parse(text, options.max_nodes);
  for (const YamlError& e : tree.errors()) {
    result->errors.push_back({file_name, e.pos, "", "", e.message});
  }
  size_t budget = options.max_nodes;
  int documents = 0;
  for (size_t d = 0; d < tree.documents().size(); ++d) {
    const YamlNode& root = *tree.documents()[d];
    if (root.kind == YamlNode::Kind::kNull) continue;  // empty document (e.g. a trailing ---)
    ++documents;
    if (root.kind != YamlNode::Kind::kMap) {
      result->errors.push_back({file_name, root.pos, "", "",
                                absl::StrCat("a manifest document must be a mapping, got ",
                                             DescribeKind(root))});
      continue;
    }
    const YamlNode* kind = Lookup(root, "kind");
    const YamlNode* metadata = Lookup(root, "metadata");
    const YamlNode* name = metadata != nullptr ? Lookup(*metadata, "name") : nullptr;
    std::string name_text = name != nullptr && name->kind == YamlNode::Kind::kScalar
                                ? name->value
                                : "<unnamed>";
    if (kind == nullptr || kind->kind != YamlNode::Kind::kScalar) {
      result->errors.push_back(
          {file_name, kind != nullptr ? kind->pos : root.pos,
           absl::StrCat("document ", d + 1), "kind",
           absl::StrCat(kind == nullptr ? "is required" : "must be a string",
                        " (one of Host, KernelInstance, InstanceSet, RolloutPolicy, RoleBinding)")});
      continue;
    }
    LoadedObject loaded;
    google::protobuf::Message* msg = MessageForKind(kind->value, &loaded.object);
    if (msg == nullptr) {
      std::string suggestion =
          Suggest(kind->value, std::vector<std::string>(std::begin(kKinds), std::end(kKinds)));
      result->errors.push_back(
          {file_name, kind->pos, absl::StrCat(kind->value, "/", name_text), "kind",
           absl::StrCat("unknown kind \"", kind->value,
                        "\" (expected Host, KernelInstance, InstanceSet, RolloutPolicy or RoleBinding",
                        suggestion.empty() ? "" : "; did you mean \"", suggestion,
                        suggestion.empty() ? "" : "\"?", ")")});
      continue;
    }
    loaded.label = absl::StrCat(kind->value, "/", name_text);
    loaded.file = file_name;
    loaded.pos = root.pos;
    const std::string& object = loaded.label;
    size_t errors_before = result->errors.size();
    Walker walker(file_name, object, &budget, &result->errors, &loaded.fields);
    walker.WalkMessage(root, msg, "", root.pos);
    if (result->errors.size() == errors_before) {
      CheckObject(loaded, &result->errors);
    }
    result->objects.push_back(std::move(loaded));
  }
  if (documents == 0 && tree.errors().empty()) {
    result->errors.push_back({file_name, Position{}, "", "", "file has no manifest documents"});
  }
}

LoadResult LoadPaths(const std::vector<std::string>& paths, const LoadOptions& options) {
  LoadResult result;
  for (const std::string& path : paths) {
    if (path == "-") {
      std::ostringstream buffer;
      buffer << std::cin.rdbuf();
      std::string text = buffer.str();
      if (text.size() > options.max_file_bytes) {
        AddFileError(&result, "<stdin>", "input is too large");
        continue;
      }
      LoadText("<stdin>", text, options, &result);
      continue;
    }
    std::error_code ec;
    fs::file_status st = fs::status(path, ec);
    if (ec || !fs::exists(st)) {
      AddFileError(&result, path, "no such file or directory");
      continue;
    }
    if (!fs::is_directory(st)) {
      LoadFile(path, options, &result);
      continue;
    }
    std::vector<std::string> files;
    fs::recursive_directory_iterator it(path, fs::directory_options::skip_permission_denied, ec);
    for (; !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (it->is_regular_file(ec) && IsManifestFile(it->path())) {
        files.push_back(it->path().string());
      }
    }
    if (ec) AddFileError(&result, path, absl::StrCat("cannot list: ", ec.message()));
    std::sort(files.begin(), files.end());
    if (files.empty()) AddFileError(&result, path, "directory has no *.yaml or *.yml files");
    for (const std::string& f : files) LoadFile(f, options, &result);
  }
  CheckObjects(options, &result);
  return result;
}

void CheckObjects(const LoadOptions& options, LoadResult* result) {
  CheckAcrossObjects(result->objects, options.check_host_references, options.known_hosts, &result->errors);
  std::stable_sort(result->errors.begin(), result->errors.end(),
                   [](const Diagnostic& a, const Diagnostic& b) {
                     if (a.file != b.file) return a.file < b.file;
                     return a.pos < b.pos;
                   });
}

bool RevalidationCache::Contains(const std::string& bytes) const {
  absl::MutexLock lock(&mu_);
  return valid_.contains(bytes);
}

void RevalidationCache::Add(std::vector<std::string> valid) {
  absl::MutexLock lock(&mu_);
  for (std::string& bytes : valid) {
    if (valid_.contains(bytes)) continue;
    if (bytes_ + bytes.size() > max_bytes_) {
      valid_.clear();
      bytes_ = 0;
    }
    bytes_ += bytes.size();
    valid_.insert(std::move(bytes));
  }
}

absl::StatusOr<std::vector<Object>> RevalidateObjects(const std::vector<Object>& objects, RevalidationCache* cache) {
  constexpr size_t kMaxErrors = 20;
  auto cut = [](absl::string_view text, size_t n) {
    return text.size() <= n ? std::string(text) : absl::StrCat(text.substr(0, n), "...");
  };
  LoadOptions options;
  options.check_host_references = false;
  LoadResult result;
  std::vector<std::string> errors;
  std::vector<std::string> files;  // objects[i], per loaded object
  std::vector<std::string> remembered;  // for the cache, once all pass
  for (size_t i = 0; i < objects.size(); ++i) {
    std::string file = absl::StrCat("objects[", i, "]");
    absl::string_view kind = KindOf(objects[i]);
    if (kind.empty()) {
      errors.push_back(file + ": an object without kind");
      continue;
    }
    std::string bytes;
    if (cache != nullptr) {
      bytes = DeterministicBytes(objects[i]);
      if (cache->Contains(bytes)) {
        // Valid as it is: only the checks across the objects (below) see it again.
        LoadedObject same;
        same.object = objects[i];
        same.label = absl::StrCat(kind, "/", MetadataOf(objects[i]).name());
        same.file = file;
        result.objects.push_back(std::move(same));
        continue;
      }
    }
    size_t before = result.objects.size();
    const size_t errors_before = result.errors.size();
    LoadText(file, PrintYaml(objects[i]), options, &result);
    for (size_t j = before; j < result.objects.size(); ++j) {
      if (KindOf(result.objects[j].object) != kind) {
        errors.push_back(absl::StrCat(file, ": kind: \"", cut(KindOf(result.objects[j].object), 40),
                                      "\" does not match the object (", kind, ")"));
      }
    }
    // Loaded back as sent, without a fault: the same bytes need no second look.
    if (cache != nullptr && result.objects.size() == before + 1 && result.errors.size() == errors_before &&
        DeterministicBytes(result.objects.back().object) == bytes) {
      remembered.push_back(std::move(bytes));
    }
  }
  CheckObjects(options, &result);
  for (const Diagnostic& d : result.errors) {
    std::string line = d.file;
    if (!d.object.empty()) absl::StrAppend(&line, " ", cut(d.object, 100));
    if (!d.path.empty()) absl::StrAppend(&line, ": ", cut(d.path, 100));
    absl::StrAppend(&line, ": ", cut(d.message, 300));
    errors.push_back(std::move(line));
  }
  if (!errors.empty()) {
    size_t n = errors.size();
    if (n > kMaxErrors) errors.resize(kMaxErrors);
    std::string text = absl::StrJoin(errors, "; ");
    if (n > kMaxErrors) absl::StrAppend(&text, "; and ", n - kMaxErrors, " more");
    return absl::InvalidArgumentError(text);
  }
  if (cache != nullptr) cache->Add(std::move(remembered));
  std::vector<Object> out;
  out.reserve(result.objects.size());
  for (LoadedObject& o : result.objects) out.push_back(std::move(o.object));
  return out;
}

}  // namespace mkfleet::manifests
