#include "kernel/fdt.h"

#include <libfdt.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace mkfleet::kernel {
namespace {

constexpr int kMaxDepth = 32;

std::string BeU32(uint32_t v) {
  fdt32_t be = cpu_to_fdt32(v);
  return std::string(reinterpret_cast<const char*>(&be), sizeof(be));
}

std::string BeU64(uint64_t v) {
  fdt64_t be = cpu_to_fdt64(v);
  return std::string(reinterpret_cast<const char*>(&be), sizeof(be));
}

absl::Status FdtError(absl::string_view what, int err) {
  return absl::InvalidArgumentError(absl::StrCat(what, ": ", fdt_strerror(err)));
}

absl::Status Write(void* fdt, const DtNode& node, bool root, int depth) {
  if (depth > kMaxDepth) return absl::InvalidArgumentError("device tree nested too deeply");
  int err = fdt_begin_node(fdt, root ? "" : node.name.c_str());
  if (err != 0) return FdtError(absl::StrCat("node ", node.name), err);
  for (const auto& [name, value] : node.props) {
    err = fdt_property(fdt, name.c_str(), value.data(), static_cast<int>(value.size()));
    if (err != 0) return FdtError(absl::StrCat("property ", node.name, "/", name), err);
  }
  for (const DtNode& child : node.children) {
    absl::Status s = Write(fdt, child, false, depth + 1);
    if (!s.ok()) return s;
  }
  err = fdt_end_node(fdt);
  return err == 0 ? absl::OkStatus() : FdtError(absl::StrCat("node ", node.name), err);
}

absl::Status Read(const void* fdt, int offset, DtNode* node, int depth) {
  if (depth > kMaxDepth) return absl::InvalidArgumentError("device tree nested deeper than 32 levels");
  int len = 0;
  const char* name = fdt_get_name(fdt, offset, &len);
  if (name == nullptr) return FdtError("node name", len);
  node->name.assign(name, len);
  int prop;
  fdt_for_each_property_offset(prop, fdt, offset) {
    const char* pname = nullptr;
    int plen = 0;
    const void* value = fdt_getprop_by_offset(fdt, prop, &pname, &plen);
    if (value == nullptr) return FdtError("property", plen);
    node->props.emplace_back(pname, std::string(static_cast<const char*>(value), plen));
  }
  if (prop != -FDT_ERR_NOTFOUND) return FdtError("properties", prop);
  int child;
  fdt_for_each_subnode(child, fdt, offset) {
    node->children.emplace_back();
    absl::Status s = Read(fdt, child, &node->children.back(), depth + 1);
    if (!s.ok()) return s;
  }
  if (child != -FDT_ERR_NOTFOUND) return FdtError("subnodes", child);
  return absl::OkStatus();
}

std::string Where(const DtNode& n, absl::string_view prop) {
  return absl::StrCat(n.name.empty() ? "/" : n.name, ": property ", prop);
}

}  // namespace

DtNode& DtNode::Add(std::string child_name) {
  children.emplace_back();
  children.back().name = std::move(child_name);
  return children.back();
}

const DtNode* DtNode::Find(absl::string_view child_name) const {
  for (const DtNode& c : children) {
    if (c.name == child_name) return &c;
  }
  return nullptr;
}

void DtNode::SetU32(absl::string_view prop, uint32_t v) { props.emplace_back(std::string(prop), BeU32(v)); }
void DtNode::SetU64(absl::string_view prop, uint64_t v) { props.emplace_back(std::string(prop), BeU64(v)); }
void DtNode::SetU32s(absl::string_view prop, const std::vector<uint32_t>& v) {
  std::string raw;
  for (uint32_t x : v) raw += BeU32(x);
  props.emplace_back(std::string(prop), std::move(raw));
}
void DtNode::SetU64s(absl::string_view prop, const std::vector<uint64_t>& v) {
  std::string raw;
  for (uint64_t x : v) raw += BeU64(x);
  props.emplace_back(std::string(prop), std::move(raw));
}
void DtNode::SetString(absl::string_view prop, absl::string_view v) {
  std::string raw(v);
  raw.push_back('\0');
  props.emplace_back(std::string(prop), std::move(raw));
}
void DtNode::SetStrings(absl::string_view prop, const std::vector<std::string>& v) {
  std::string raw;
  for (const std::string& s : v) {
    raw += s;
    raw.push_back('\0');
  }
  props.emplace_back(std::string(prop), std::move(raw));
}

const std::string* DtNode::Raw(absl::string_view prop) const {
  for (const auto& [name, value] : props) {
    if (name == prop) return &value;
  }
  return nullptr;
}

absl::StatusOr<uint32_t> DtNode::U32(absl::string_view prop) const {
  auto v = U32s(prop);
  if (!v.ok()) return v.status();
  if (v->size() != 1) return absl::InvalidArgumentError(absl::StrCat(Where(*this, prop), ": expected one u32 cell"));
  return v->front();
}

absl::StatusOr<uint64_t> DtNode::U64(absl::string_view prop) const {
  auto v = U64s(prop);
  if (!v.ok()) return v.status();
  if (v->size() != 1) return absl::InvalidArgumentError(absl::StrCat(Where(*this, prop), ": expected one u64"));
  return v->front();
}

absl::StatusOr<std::vector<uint32_t>> DtNode::U32s(absl::string_view prop) const {
  const std::string* raw = Raw(prop);
  if (raw == nullptr) return absl::NotFoundError(absl::StrCat(Where(*this, prop), " is missing"));
  if (raw->size() % 4 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(Where(*this, prop), ": size ", raw->size(), " is not a multiple of 4"));
  }
  std::vector<uint32_t> out(raw->size() / 4);
  for (size_t i = 0; i < out.size(); ++i) {
    fdt32_t be;
    memcpy(&be, raw->data() + 4 * i, 4);
    out[i] = fdt32_to_cpu(be);
  }
  return out;
}

absl::StatusOr<std::vector<uint64_t>> DtNode::U64s(absl::string_view prop) const {
  const std::string* raw = Raw(prop);
  if (raw == nullptr) return absl::NotFoundError(absl::StrCat(Where(*this, prop), " is missing"));
  if (raw->size() % 8 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(Where(*this, prop), ": size ", raw->size(), " is not a multiple of 8"));
  }
  std::vector<uint64_t> out(raw->size() / 8);
  for (size_t i = 0; i < out.size(); ++i) {
    fdt64_t be;
    memcpy(&be, raw->data() + 8 * i, 8);
    out[i] = fdt64_to_cpu(be);
  }
  return out;
}

absl::StatusOr<std::string> DtNode::String(absl::string_view prop) const {
  auto v = Strings(prop);
  if (!v.ok()) return v.status();
  if (v->size() != 1) return absl::InvalidArgumentError(absl::StrCat(Where(*this, prop), ": expected one string"));
  return v->front();
}

absl::StatusOr<std::vector<std::string>> DtNode::Strings(absl::string_view prop) const {
  const std::string* raw = Raw(prop);
  if (raw == nullptr) return absl::NotFoundError(absl::StrCat(Where(*this, prop), " is missing"));
  if (raw->empty() || raw->back() != '\0') {
    return absl::InvalidArgumentError(absl::StrCat(Where(*this, prop), ": not a NUL-terminated string"));
  }
  std::vector<std::string> out;
  size_t start = 0;
  while (start < raw->size()) {
    size_t end = raw->find('\0', start);
    out.push_back(raw->substr(start, end - start));
    start = end + 1;
  }
  return out;
}

namespace {

size_t Align4(size_t n) { return (n + 3) & ~size_t{3}; }

// The bytes `node` and its children take in the structure block, and the most their property
// names take in the strings block (each name once per property: no de-duplication).
void BlobBound(const DtNode& node, bool root, size_t* structure, size_t* strings) {
  *structure += 4 + Align4((root ? 0 : node.name.size()) + 1) + 4;  // begin (with the name), end
  for (const auto& [name, value] : node.props) {
    *structure += 12 + Align4(value.size());
    *strings += name.size() + 1;
  }
  for (const DtNode& child : node.children) BlobBound(child, false, structure, strings);
}

}  // namespace

absl::StatusOr<std::string> ToDtb(const DtNode& root, DtbNames names) {
  // A buffer the blob fits in (header, empty reserve map, structure, strings; written once:
  // the emulator writes its whole state for each change), doubled on FDT_ERR_NOSPACE should
  // the bound be short, up to the kernel's limit.
  size_t structure = 4, strings = 0;  // 4: FDT_END
  BlobBound(root, true, &structure, &strings);
  const uint32_t flags = names == DtbNames::kRepeated ? FDT_CREATE_FLAG_NO_NAME_DEDUP : 0;
  for (size_t size = std::max<size_t>(256, 64 + structure + strings);; size *= 2) {
    size = std::min(size, kMaxBlobBytes);
    std::string buf(size, '\0');
    int err = fdt_create_with_flags(buf.data(), static_cast<int>(buf.size()), flags);
    if (err == 0) err = fdt_finish_reservemap(buf.data());
    if (err != 0) return FdtError("fdt_create", err);
    absl::Status s = Write(buf.data(), root, true, 0);
    if (s.ok()) {
      err = fdt_finish(buf.data());
      if (err == 0) {
        buf.resize(fdt_totalsize(buf.data()));
        return buf;
      }
      if (err != -FDT_ERR_NOSPACE) return FdtError("fdt_finish", err);
    } else if (!absl::StrContains(s.message(), fdt_strerror(-FDT_ERR_NOSPACE))) {
      return s;
    }
    if (size == kMaxBlobBytes) return absl::InvalidArgumentError("device tree is larger than 1 MiB");
  }
}

absl::StatusOr<DtNode> FromDtb(absl::string_view blob) {
  if (blob.size() < 40 || blob.size() > kMaxBlobBytes) {
    return absl::InvalidArgumentError(absl::StrCat("device tree blob of ", blob.size(), " bytes (40 to 1 MiB)"));
  }
  // libfdt wants aligned memory.
  std::string copy(blob);
  int err = fdt_check_full(copy.data(), copy.size());
  if (err != 0) return FdtError("device tree blob", err);
  if (fdt_totalsize(copy.data()) != copy.size()) {
    return absl::InvalidArgumentError("device tree blob: totalsize does not match the write size");
  }
  DtNode root;
  absl::Status s = Read(copy.data(), 0, &root, 0);
  if (!s.ok()) return s;
  return root;
}

}  // namespace mkfleet::kernel
