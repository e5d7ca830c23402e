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

}  // namespace mkfleet::reconciler
