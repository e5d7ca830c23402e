#include "manifests/formats.h"

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace mkfleet::manifests {
namespace {

bool AllOf(absl::string_view s, bool (*pred)(unsigned char)) {
  for (char c : s) {
    if (!pred(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

bool IsHex(unsigned char c) { return absl::ascii_isxdigit(c); }

bool IsNameChar(unsigned char c) {
  return absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.';
}

bool IsLabelName(absl::string_view s) {
  return !s.empty() && s.size() <= 63 && AllOf(s, IsNameChar) &&
         absl::ascii_isalnum(static_cast<unsigned char>(s.front())) &&
         absl::ascii_isalnum(static_cast<unsigned char>(s.back()));
}

bool IsDeviceName(absl::string_view s) {
  // netdev / block device names: at most 15 (IFNAMSIZ-1) printable, no '/' or spaces.
  if (s.empty() || s.size() > 31) return false;
  for (char c : s) {
    if (!absl::ascii_isgraph(static_cast<unsigned char>(c)) || c == '/' || c == ':') return false;
  }
  return true;
}

}  // namespace

bool IsDnsLabel(absl::string_view s) {
  if (s.empty() || s.size() > 63 || s.front() == '-' || s.back() == '-') return false;
  for (char c : s) {
    if (!(absl::ascii_islower(static_cast<unsigned char>(c)) ||
          absl::ascii_isdigit(static_cast<unsigned char>(c)) || c == '-')) {
      return false;
    }
  }
  return true;
}

bool IsPciBdf(absl::string_view s) {
  // DDDD:BB:SS.F
  if (s.size() != 12 || s[4] != ':' || s[7] != ':' || s[10] != '.') return false;
  if (!AllOf(s.substr(0, 4), IsHex) || !AllOf(s.substr(5, 2), IsHex) ||
      !AllOf(s.substr(8, 2), IsHex)) {
    return false;
  }
  int slot = 0;
  if (!absl::SimpleHexAtoi(s.substr(8, 2), &slot) || slot > 0x1f) return false;
  return s[11] >= '0' && s[11] <= '7';
}

bool IsLabelKey(absl::string_view s) {
  size_t slash = s.find('/');
  if (slash == absl::string_view::npos) return IsLabelName(s);
  absl::string_view prefix = s.substr(0, slash);
  if (prefix.empty() || prefix.size() > 253) return false;
  for (absl::string_view part : absl::StrSplit(prefix, '.')) {
    if (!IsDnsLabel(part)) return false;
  }
  return IsLabelName(s.substr(slash + 1));
}

bool IsPrincipalName(absl::string_view s) {
  if (s.empty() || s.size() > 64 || !(absl::ascii_islower(s[0]) || absl::ascii_isdigit(s[0]))) return false;
  for (char c : s) {
    if (!absl::ascii_islower(c) && !absl::ascii_isdigit(c) && c != '.' && c != '_' && c != '@' && c != '-') {
      return false;
    }
  }
  return true;
}

bool IsLabelValue(absl::string_view s) { return s.empty() || IsLabelName(s); }

bool IsRepoPath(absl::string_view s) {
  if (s.empty()) return true;
  if (s.front() == '/' || s.size() > 1024) return false;
  for (absl::string_view part : absl::StrSplit(s, '/')) {
    if (part.empty()) continue;  // "a//b" and a trailing '/' are harmless
    if (part == "." || part == "..") return false;
    for (unsigned char c : part) {
      if (c < 0x20 || c == 0x7f || c == '\\') return false;
    }
  }
  return true;
}

bool IsGitUrl(absl::string_view s) {
  if (s.size() > 2048) return false;
  for (unsigned char c : s) {
    if (c <= 0x20 || c == 0x7f) return false;
  }
  absl::string_view rest = s;
  if (absl::ConsumePrefix(&rest, "file://")) return rest.size() > 1 && rest.front() == '/';
  if (!absl::ConsumePrefix(&rest, "ssh://") && !absl::ConsumePrefix(&rest, "https://")) return false;
  size_t slash = rest.find('/');
  if (slash == absl::string_view::npos || slash + 1 == rest.size()) return false;  // a path is needed
  absl::string_view authority = rest.substr(0, slash);
  size_t at = authority.rfind('@');
  if (at != absl::string_view::npos) authority.remove_prefix(at + 1);
  if (authority.empty()) return false;
  size_t colon = authority.rfind(':');
  if (colon != absl::string_view::npos && authority.front() != '[') {
    int port = 0;
    if (!absl::SimpleAtoi(authority.substr(colon + 1), &port) || port <= 0 || port > 65535) return false;
    authority = authority.substr(0, colon);
  }
  return !authority.empty();
}

std::string CheckFormat(mkfleet::v1::Format format, absl::string_view text) {
  auto got = [&] { return absl::StrCat(", got \"", text, "\""); };
  switch (format) {
    case mkfleet::v1::FORMAT_NONE:
      return "";
    case mkfleet::v1::FORMAT_DNS_LABEL:
      if (IsDnsLabel(text)) return "";
      if (text.size() > 63) return absl::StrCat("must be at most 63 characters, got ", text.size());
      return absl::StrCat(
          "must be a DNS label (lower-case letters, digits and '-', starting and ending with a "
          "letter or digit)",
          got());
    case mkfleet::v1::FORMAT_PCI_BDF:
      if (IsPciBdf(text)) return "";
      return absl::StrCat("must be a PCI address like 0000:04:00.1", got());
    case mkfleet::v1::FORMAT_PCI_OR_NAME:
      if (IsPciBdf(text) || IsDeviceName(text)) return "";
      return absl::StrCat("must be a PCI address like 0000:04:00.1 or a device name like eth2",
                          got());
    case mkfleet::v1::FORMAT_HOST_PORT: {
      size_t colon = text.rfind(':');
      int port = 0;
      bool ok = colon != absl::string_view::npos && colon > 0 &&
                absl::SimpleAtoi(text.substr(colon + 1), &port) && port > 0 && port < 65536 &&
                AllOf(text.substr(colon + 1), [](unsigned char c) { return absl::ascii_isdigit(c) != 0; });
      absl::string_view host = ok ? text.substr(0, colon) : "";
      if (ok && host.front() == '[') ok = host.size() > 2 && host.back() == ']';
      else if (ok) ok = host.find(':') == absl::string_view::npos &&
                        AllOf(host, [](unsigned char c) {
                          return absl::ascii_isalnum(c) || c == '.' || c == '-';
                        });
      if (ok) return "";
      return absl::StrCat("must be host:port with a port from 1 to 65535", got());
    }
    case mkfleet::v1::FORMAT_SHA256:
      if (text.size() == 64 && AllOf(text, IsHex)) return "";
      return absl::StrCat("must be 64 hexadecimal digits, got ", text.size(), " characters");
    case mkfleet::v1::FORMAT_HEX_ID: {
      absl::string_view digits = text;
      bool ok = (absl::ConsumePrefix(&digits, "0x") || absl::ConsumePrefix(&digits, "0X")) &&
                !digits.empty() && digits.size() <= 4 && AllOf(digits, IsHex);
      if (ok) return "";
      return absl::StrCat("must be a 16-bit hexadecimal id like \"0x8086\"", got());
    }
    case mkfleet::v1::FORMAT_LABEL_KEY:
      if (IsLabelKey(text)) return "";
      return absl::StrCat("must be a label key", got());
    case mkfleet::v1::FORMAT_PRINCIPAL:
      if (IsPrincipalName(text)) return "";
      return absl::StrCat("must be a user or group name: 1-64 characters of a-z 0-9 . _ @ -, starting with a "
                          "letter or digit",
                          got());
    case mkfleet::v1::FORMAT_ABSOLUTE_PATH:
      if (!text.empty() && text.front() == '/' && text.find('\0') == absl::string_view::npos) {
        return "";
      }
      return absl::StrCat("must be an absolute path", got());
    case mkfleet::v1::FORMAT_GIT_URL:
      if (IsGitUrl(text)) return "";
      return absl::StrCat("must be a git URL: file:///path, ssh://[user@]host[:port]/path or https://host/path",
                          got());
    case mkfleet::v1::FORMAT_GIT_SHA:
      if (text.size() == 40 && AllOf(text, IsHex)) return "";
      return absl::StrCat("must be a full commit id (40 hexadecimal digits), got ", text.size(), " characters");
    case mkfleet::v1::FORMAT_REPO_PATH:
      if (IsRepoPath(text)) return "";
      return absl::StrCat("must be a folder inside the repository (relative, no \"..\")", got());
    default:
      return "";
  }
}

}  // namespace mkfleet::manifests
