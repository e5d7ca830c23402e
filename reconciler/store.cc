#include <map>

#include "reconciler/store.h"

namespace mkfleet::reconciler {

std::vector<Op> LastOpPerKey(const std::vector<Op>& ops) {
  std::vector<Op> out;
  out.reserve(ops.size());
  std::map<std::string, size_t> at;
  for (const Op& op : ops) {
    auto [it, fresh] = at.emplace(op.key, out.size());
    if (fresh) {
      out.push_back(op);
    } else {
      out[it->second] = op;
    }
  }
  return out;
}

std::string PrefixEnd(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty()) {
    unsigned char c = static_cast<unsigned char>(end.back());
    if (c < 0xff) {
      end.back() = static_cast<char>(c + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');
}

}  // namespace mkfleet::reconciler
