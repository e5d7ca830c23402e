#include "console/picture.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/fnv.h"
#include "manifests/units.h"

namespace mkfleet::console {
namespace {

namespace v1 = mkfleet::v1;

// Letters for owners: the name's initial if free, else its other case, else the next
// free one of a-z, A-Z, 0-9; '*' once those run out.
char PickLetter(const std::string& name, std::set<char>& used) {
  auto take = [&](char c) {
    if (c == '.' || c == '-' || c == '|' || used.count(c) != 0) return false;
    used.insert(c);
    return true;
  };
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c))) continue;
    if (take(absl::ascii_tolower(c))) return absl::ascii_tolower(c);
    if (take(absl::ascii_toupper(c))) return absl::ascii_toupper(c);
    break;
  }
  for (const char* set : {"abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789"}) {
    for (const char* c = set; *c != '\0'; ++c) {
      if (take(*c)) return *c;
    }
  }
  return '*';
}

// Kelly's colours of maximum contrast, without white, black and grey (the free and the
// host kernel's CPUs).
constexpr const char* kPalette[] = {"#f3c300", "#875692", "#f38400", "#a1caf1", "#be0032", "#c2b280", "#008856",
                                    "#e68fac", "#0067a5", "#f99379", "#604e97", "#f6a600", "#b3446c", "#dcd300",
                                    "#882d17", "#8db600", "#654522", "#e25822", "#2b3d26"};
constexpr int kPaletteSize = sizeof(kPalette) / sizeof(kPalette[0]);

std::string Escape(absl::string_view text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

// The topology grouped for drawing: packages, their NUMA nodes, each node's L3 domains
// and their cores (indexes into topology.cores, ascending by first CPU).
struct Layout {
  struct L3 {
    uint32_t index = 0;
    std::vector<int> cores;
  };
  struct Node {
    int info = -1;  // index into topology.numa_nodes
    uint32_t os = 0;
    std::vector<L3> l3;
    std::vector<int> pci;  // indexes into topology.pci
  };
  struct Package {
    int id = -1;  // -1: the memory-only nodes
    std::vector<Node> nodes;
  };
  std::vector<Package> packages;
  uint32_t smt = 1;
};

Layout Group(const v1::TopologyInfo& t) {
  Layout layout;
  std::vector<int> order(t.cores_size());
  for (int i = 0; i < t.cores_size(); ++i) order[i] = i;
  auto first = [&](int i) { return t.cores(i).pus().empty() ? 0u : *std::min_element(t.cores(i).pus().begin(), t.cores(i).pus().end()); };
  std::sort(order.begin(), order.end(), [&](int a, int b) { return first(a) < first(b); });
  std::map<uint32_t, std::map<uint32_t, Layout::Node>> by_package;  // package -> node os -> node
  std::map<uint32_t, uint32_t> package_of_node;
  for (int i : order) {
    const v1::CoreInfo& c = t.cores(i);
    layout.smt = std::max<uint32_t>(layout.smt, c.pus_size());
    auto [it, fresh] = package_of_node.emplace(c.numa_node(), c.package());
    Layout::Node& node = by_package[it->second][c.numa_node()];
    node.os = c.numa_node();
    auto l3 = std::find_if(node.l3.begin(), node.l3.end(), [&](const Layout::L3& d) { return d.index == c.l3(); });
    if (l3 == node.l3.end()) {
      node.l3.push_back({c.l3(), {}});
      l3 = node.l3.end() - 1;
    }
    l3->cores.push_back(i);
  }
  Layout::Package memory_only;
  for (int n = 0; n < t.numa_nodes_size(); ++n) {
    uint32_t os = t.numa_nodes(n).node();
    auto p = package_of_node.find(os);
    if (p == package_of_node.end()) {
      Layout::Node node;
      node.info = n;
      node.os = os;
      memory_only.nodes.push_back(node);
    } else {
      by_package[p->second][os].info = n;
    }
  }
  for (auto& [id, nodes] : by_package) {
    Layout::Package pkg;
    pkg.id = static_cast<int>(id);
    for (auto& [os, node] : nodes) pkg.nodes.push_back(std::move(node));
    layout.packages.push_back(std::move(pkg));
  }
  if (!memory_only.nodes.empty()) layout.packages.push_back(std::move(memory_only));
  for (int i = 0; i < t.pci_size(); ++i) {
    for (auto& pkg : layout.packages) {
      for (auto& node : pkg.nodes) {
        if (t.pci(i).numa_node() >= 0 && static_cast<uint32_t>(t.pci(i).numa_node()) == node.os) node.pci.push_back(i);
      }
    }
  }
  return layout;
}

// The PCI functions no node claims (numa_node unknown).
std::vector<int> Unplaced(const v1::TopologyInfo& t, const Layout& layout) {
  std::set<uint32_t> nodes;
  for (const auto& pkg : layout.packages) {
    for (const auto& node : pkg.nodes) nodes.insert(node.os);
  }
  std::vector<int> out;
  for (int i = 0; i < t.pci_size(); ++i) {
    if (t.pci(i).numa_node() < 0 || nodes.count(static_cast<uint32_t>(t.pci(i).numa_node())) == 0) out.push_back(i);
  }
  return out;
}

// The owner of a PCI function: its own, or (for a PF) the first owner of one of its VFs.
int PciOwner(const HostPicture& p, const v1::PciFunctionInfo& f) {
  auto it = p.pci_owner.find(f.bdf());
  if (it != p.pci_owner.end()) return it->second;
  for (const std::string& vf : f.vf_bdfs()) {
    auto v = p.pci_owner.find(vf);
    if (v != p.pci_owner.end()) return v->second;
  }
  return -1;
}

std::string PciLabel(const v1::PciFunctionInfo& f) {
  std::string label = f.names().empty() ? f.bdf() : absl::StrCat(absl::StrJoin(f.names(), ","), " ", f.bdf());
  absl::StrAppend(&label, " ", PciClassName(f.class_id()));
  if (f.vf_bdfs_size() > 0) absl::StrAppend(&label, ", ", f.vf_bdfs_size(), " VFs");
  if (f.nvme_namespaces() > 0) absl::StrAppend(&label, ", ", f.nvme_namespaces(), " namespaces");
  return label;
}

}  // namespace

std::string OwnerColour(const std::string& name) {
  uint64_t h = Fnv1a().Add(name).value();
  // Hue from the hash; two saturations and lightnesses so near hues still differ.
  double hue = static_cast<double>(h % 360);
  double s = (h >> 16) % 2 == 0 ? 0.65 : 0.45;
  double l = (h >> 24) % 2 == 0 ? 0.55 : 0.42;
  double c = (1 - std::fabs(2 * l - 1)) * s;
  double x = c * (1 - std::fabs(std::fmod(hue / 60.0, 2) - 1));
  double m = l - c / 2;
  double r = 0, g = 0, b = 0;
  if (hue < 60) {
    r = c, g = x;
  } else if (hue < 120) {
    r = x, g = c;
  } else if (hue < 180) {
    g = c, b = x;
  } else if (hue < 240) {
    g = x, b = c;
  } else if (hue < 300) {
    r = x, b = c;
  } else {
    r = c, b = x;
  }
  auto byte = [m](double v) { return static_cast<int>(std::lround((v + m) * 255)); };
  return absl::StrFormat("#%02x%02x%02x", byte(r), byte(g), byte(b));
}

std::string PciClassName(uint32_t class_id) {
  if (class_id == 0x0b40) return "Accelerator";
  switch (class_id >> 8) {
    case 0x01: return "Storage";
    case 0x02: return "Network";
    case 0x03: return "GPU";
    case 0x04: return "Multimedia";
    case 0x06: return "Bridge";
    case 0x0c: return "Serial bus";
    case 0x12: return "Accelerator";
    default: return absl::StrFormat("class 0x%04x", class_id);
  }
}

HostPicture BuildPicture(const std::string& host, const v1::TopologyInfo& topology, const v1::HostStatus& status,
                         const std::vector<v1::Object>& instances) {
  HostPicture p;
  p.host = host;
  p.topology = topology;
  p.pool.insert(status.pool().cpus().begin(), status.pool().cpus().end());
  struct Holder {
    std::string phase;
    const v1::Placement* placement;
  };
  std::map<std::string, Holder> holders;
  for (const v1::Object& o : instances) {
    if (!o.has_kernel_instance()) continue;
    const v1::InstanceStatus& st = o.kernel_instance().status();
    if (st.placement().host() != host) continue;
    holders[o.kernel_instance().metadata().name()] = {st.phase().empty() ? "Pending" : st.phase(), &st.placement()};
  }
  for (const v1::KernelRef& k : status.unmanaged()) holders.emplace(k.name(), Holder{"unmanaged", &k.placement()});
  std::set<char> used;
  std::vector<bool> taken(kPaletteSize, false);
  for (const auto& [name, holder] : holders) {
    Owner owner;
    owner.name = name;
    owner.phase = holder.phase;
    if (p.owners.size() < static_cast<size_t>(kPaletteSize)) {
      int slot = static_cast<int>(Fnv1a().Add(name).value() % kPaletteSize);
      while (taken[slot]) slot = (slot + 1) % kPaletteSize;
      taken[slot] = true;
      owner.colour = kPalette[slot];
    } else {
      owner.colour = OwnerColour(name);
    }
    owner.letter = PickLetter(name, used);
    const int index = static_cast<int>(p.owners.size());
    for (uint32_t cpu : holder.placement->cpus()) {
      if (p.cpu_owner.emplace(cpu, index).second) ++owner.cpus;
    }
    for (const v1::PlacedDevice& d : holder.placement->devices()) p.pci_owner.emplace(d.pci(), index);
    p.owners.push_back(std::move(owner));
  }
  return p;
}

std::string TextMap(const HostPicture& p) {
  const v1::TopologyInfo& t = p.topology;
  const Layout layout = Group(t);
  int pus = 0;
  for (const auto& c : t.cores()) pus += c.pus_size();
  int packages = 0;
  for (const auto& pkg : layout.packages) packages += pkg.id >= 0 ? 1 : 0;
  std::string out = absl::StrCat(p.host, ": ", packages, packages == 1 ? " package, " : " packages, ",
                                 t.numa_nodes_size(), " NUMA nodes, ", t.cores_size(), " cores, ", pus, " CPUs (",
                                 layout.smt, " per core), ", t.pci_size(), " PCI functions\n");
  auto mark = [&](uint32_t cpu) {
    auto it = p.cpu_owner.find(cpu);
    if (it != p.cpu_owner.end()) return p.owners[it->second].letter;
    return p.pool.empty() || p.pool.count(cpu) != 0 ? '.' : '-';
  };
  constexpr int kCellsPerLine = 16;
  absl::StrAppend(&out, "NODE  PKG  MEMORY     CORES (a cell a core, a letter a CPU; | between L3 domains)\n");
  const std::string indent(27, ' ');
  for (const auto& pkg : layout.packages) {
    for (const auto& node : pkg.nodes) {
      uint64_t bytes = node.info >= 0 ? t.numa_nodes(node.info).memory_bytes() : 0;
      std::string row = absl::StrFormat("%-5u %-4s %-10s ", node.os, pkg.id >= 0 ? absl::StrCat(pkg.id) : "-",
                                        manifests::FormatBytesApprox(bytes));
      if (node.l3.empty()) absl::StrAppend(&row, "(memory only)");
      int cells = 0;
      for (size_t d = 0; d < node.l3.size(); ++d) {
        if (d > 0) absl::StrAppend(&row, "| ");
        for (int core : node.l3[d].cores) {
          if (cells > 0 && cells % kCellsPerLine == 0) absl::StrAppend(&row, "\n", indent);
          std::string cell;
          for (uint32_t pu : t.cores(core).pus()) cell += mark(pu);
          cell.resize(layout.smt, ' ');
          absl::StrAppend(&row, cell, " ");
          ++cells;
        }
      }
      while (!row.empty() && row.back() == ' ') row.pop_back();
      absl::StrAppend(&out, row, "\n");
    }
  }
  if (t.pci_size() > 0) {
    absl::StrAppend(&out, "PCI functions:\n");
    for (const auto& f : t.pci()) {
      int owner = PciOwner(p, f);
      absl::StrAppend(&out, absl::StrFormat("  %-12s %-12s node %-3s %-16s %s\n", f.bdf(), PciClassName(f.class_id()),
                                            f.numa_node() < 0 ? "-" : absl::StrCat(f.numa_node()),
                                            f.names().empty() ? "-" : absl::StrJoin(f.names(), ","),
                                            owner < 0 ? "-" : absl::StrCat(std::string(1, p.owners[owner].letter), " ",
                                                                           p.owners[owner].name)));
    }
  }
  std::vector<std::string> legend;
  for (const Owner& o : p.owners) {
    legend.push_back(absl::StrCat(std::string(1, o.letter), " ", o.name, " (", o.phase, ", ", o.cpus, " CPUs)"));
  }
  legend.push_back(". free");
  if (!p.pool.empty()) legend.push_back("- host kernel");
  absl::StrAppend(&out, "Legend: ", absl::StrJoin(legend, "   "), "\n");
  return out;
}

std::string Svg(const HostPicture& p) {
  const v1::TopologyInfo& t = p.topology;
  const Layout layout = Group(t);
  // Sizes (px): a CPU square, the gap between shapes, paddings, label heights.
  constexpr int kPu = 14, kGap = 2, kCorePad = 2, kPad = 6, kLabel = 16, kDev = 16, kMaxWidth = 1400;
  constexpr int kCoresPerRow = 8;
  const int core_w = static_cast<int>(layout.smt) * kPu + (static_cast<int>(layout.smt) - 1) * kGap + 2 * kCorePad;
  const int core_h = kPu + 2 * kCorePad;
  auto l3_size = [&](const Layout::L3& d) {
    int n = static_cast<int>(d.cores.size());
    int cols = std::min(n, kCoresPerRow);
    int rows = (n + kCoresPerRow - 1) / kCoresPerRow;
    return std::make_pair(2 * kPad + cols * core_w + (cols - 1) * kGap, kLabel + kPad + rows * core_h + (rows - 1) * kGap);
  };
  auto node_size = [&](const Layout::Node& node) {
    int w = 240, h = kLabel + kPad;
    for (const auto& d : node.l3) {
      auto [lw, lh] = l3_size(d);
      w = std::max(w, lw + 2 * kPad);
      h += lh + kPad;
    }
    h += static_cast<int>(node.pci.size()) * kDev + (node.pci.empty() ? 0 : kPad);
    return std::make_pair(w, h);
  };
  std::string body;
  auto fill_of = [&](int owner) { return owner < 0 ? std::string(kFreeColour) : p.owners[owner].colour; };
  auto owner_name = [&](int owner) { return owner < 0 ? std::string() : p.owners[owner].name; };
  auto device = [&](const v1::PciFunctionInfo& f, int x, int y, int width) {
    int owner = PciOwner(p, f);
    std::string label = PciLabel(f);
    size_t max_chars = static_cast<size_t>(std::max(8, (width - 22) / 6));
    if (label.size() > max_chars) label = label.substr(0, max_chars - 1) + "…";
    absl::StrAppend(&body, "<g class=\"device\"><rect class=\"dev\" x=\"", x, "\" y=\"", y + 1, "\" width=\"12\" height=\"12\" data-bdf=\"",
                    Escape(f.bdf()), "\" data-owner=\"", Escape(owner_name(owner)), "\" fill=\"", fill_of(owner),
                    "\" stroke=\"#555\"><title>", Escape(PciLabel(f)), owner < 0 ? "" : " — " + Escape(owner_name(owner)),
                    "</title></rect><text x=\"", x + 16, "\" y=\"", y + 11, "\" class=\"devlabel\">", Escape(label),
                    "</text></g>\n");
  };
  int y = kPad;
  int width = 0;
  for (const auto& pkg : layout.packages) {
    // Nodes flow left to right inside the package, wrapping at kMaxWidth.
    const int pkg_y = y;
    int row_x = 2 * kPad, row_y = pkg_y + kLabel + kPad, row_h = 0, pkg_w = 0;
    std::string inner;
    std::swap(inner, body);
    for (const auto& node : pkg.nodes) {
      auto [nw, nh] = node_size(node);
      if (row_x > 2 * kPad && row_x + nw > kMaxWidth) {
        row_x = 2 * kPad;
        row_y += row_h + kPad;
        row_h = 0;
      }
      uint64_t bytes = node.info >= 0 ? t.numa_nodes(node.info).memory_bytes() : 0;
      absl::StrAppend(&body, "<g class=\"numa\" data-node=\"", node.os, "\"><rect x=\"", row_x, "\" y=\"", row_y,
                      "\" width=\"", nw, "\" height=\"", nh, "\" rx=\"4\" fill=\"#eef3f8\" stroke=\"#7a8ca0\"/><text x=\"",
                      row_x + kPad, "\" y=\"", row_y + 12, "\" class=\"label\">NUMA node ", node.os, " · ",
                      manifests::FormatBytesApprox(bytes), node.l3.empty() ? " (memory only)" : "", "</text>\n");
      int cy = row_y + kLabel + kPad;
      for (const auto& d : node.l3) {
        auto [lw, lh] = l3_size(d);
        const int lx = row_x + kPad;
        absl::StrAppend(&body, "<g class=\"l3\"><rect x=\"", lx, "\" y=\"", cy, "\" width=\"", lw, "\" height=\"", lh,
                        "\" rx=\"3\" fill=\"#f8fafc\" stroke=\"#b0bccb\"/><text x=\"", lx + kPad, "\" y=\"", cy + 12,
                        "\" class=\"small\">L3 ", d.index,
                        d.index < static_cast<uint32_t>(t.l3_bytes_size()) && t.l3_bytes(d.index) > 0
                            ? " · " + manifests::FormatBytes(t.l3_bytes(d.index))
                            : "",
                        "</text>\n");
        for (size_t k = 0; k < d.cores.size(); ++k) {
          const v1::CoreInfo& core = t.cores(d.cores[k]);
          const int kx = lx + kPad + static_cast<int>(k % kCoresPerRow) * (core_w + kGap);
          const int ky = cy + kLabel + static_cast<int>(k / kCoresPerRow) * (core_h + kGap);
          absl::StrAppend(&body, "<g class=\"core\" data-core=\"", core.core(), "\"><rect x=\"", kx, "\" y=\"", ky,
                          "\" width=\"", core_w, "\" height=\"", core_h, "\" rx=\"2\" fill=\"#dde3ea\"/>");
          for (int i = 0; i < core.pus_size(); ++i) {
            const uint32_t cpu = core.pus(i);
            auto it = p.cpu_owner.find(cpu);
            int owner = it == p.cpu_owner.end() ? -1 : it->second;
            bool host = owner < 0 && !p.pool.empty() && p.pool.count(cpu) == 0;
            std::string fill = host ? kHostColour : fill_of(owner);
            std::string who = host ? "(host)" : owner_name(owner);
            absl::StrAppend(&body, "<rect class=\"pu\" x=\"", kx + kCorePad + i * (kPu + kGap), "\" y=\"", ky + kCorePad,
                            "\" width=\"", kPu, "\" height=\"", kPu, "\" data-cpu=\"", cpu, "\" data-owner=\"", Escape(who),
                            "\" fill=\"", fill, "\" stroke=\"#555\" stroke-width=\"0.5\"><title>CPU ", cpu, " · core ",
                            core.core(), " · ", who.empty() ? "free" : (host ? "host kernel" : Escape(who)),
                            "</title></rect>");
          }
          absl::StrAppend(&body, "</g>\n");
        }
        absl::StrAppend(&body, "</g>\n");
        cy += lh + kPad;
      }
      for (int i : node.pci) {
        device(t.pci(i), row_x + kPad, cy, nw - 2 * kPad);
        cy += kDev;
      }
      absl::StrAppend(&body, "</g>\n");
      row_x += nw + kPad;
      row_h = std::max(row_h, nh);
      pkg_w = std::max(pkg_w, row_x);
    }
    const int pkg_h = row_y + row_h + kPad - pkg_y;
    std::string nodes;
    std::swap(nodes, body);
    body = std::move(inner);
    absl::StrAppend(&body, "<g class=\"package\" data-package=\"", pkg.id, "\"><rect x=\"", kPad, "\" y=\"", pkg_y,
                    "\" width=\"", pkg_w - kPad, "\" height=\"", pkg_h, "\" rx=\"6\" fill=\"#ffffff\" stroke=\"#34495e\"/><text x=\"",
                    2 * kPad, "\" y=\"", pkg_y + 12, "\" class=\"label\">",
                    pkg.id >= 0 ? absl::StrCat("Package ", pkg.id) : std::string("Memory-only NUMA nodes"), "</text>\n",
                    nodes, "</g>\n");
    y = pkg_y + pkg_h + kPad;
    width = std::max(width, pkg_w + kPad);
  }
  std::vector<int> unplaced = Unplaced(t, layout);
  if (!unplaced.empty()) {
    absl::StrAppend(&body, "<text x=\"", kPad, "\" y=\"", y + 12, "\" class=\"label\">PCI functions of no known NUMA node</text>\n");
    y += kLabel;
    for (int i : unplaced) {
      device(t.pci(i), kPad, y, 600);
      y += kDev;
    }
    width = std::max(width, 620);
  }
  width = std::max(width, 480);
  // The legend on top, wrapped at the picture's width (drawn last: the width is known).
  std::string drawing;
  std::swap(drawing, body);
  int x = kPad;
  int ly = kPad;
  std::vector<std::tuple<std::string, std::string, std::string>> legend;  // owner, colour, text
  for (const Owner& o : p.owners) legend.emplace_back(o.name, o.colour, absl::StrCat(o.name, " (", o.phase, ", ", o.cpus, " CPUs)"));
  legend.emplace_back("", kFreeColour, "free");
  if (!p.pool.empty()) legend.emplace_back("(host)", kHostColour, "host kernel");
  absl::StrAppend(&body, "<g class=\"legend\">\n");
  for (const auto& [owner, colour, text] : legend) {
    const int w = 22 + static_cast<int>(text.size()) * 7;
    if (x > kPad && x + w > width) {
      x = kPad;
      ly += kLabel + 2;
    }
    absl::StrAppend(&body, "<g class=\"legend-item\" data-owner=\"", Escape(owner), "\"><rect x=\"", x, "\" y=\"", ly,
                    "\" width=\"", kPu, "\" height=\"", kPu, "\" fill=\"", colour, "\" stroke=\"#555\"/><text x=\"",
                    x + kPu + 4, "\" y=\"", ly + 11, "\">", Escape(text), "</text></g>\n");
    x += w;
    width = std::max(width, x + kPad);
  }
  absl::StrAppend(&body, "</g>\n");
  const int top = ly + kLabel + kPad;
  const int height = top + y + kPad;
  return absl::StrCat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"topology\" data-host=\"", Escape(p.host), "\" width=\"", width,
      "\" height=\"", height, "\" viewBox=\"0 0 ", width, " ", height, "\" font-family=\"sans-serif\" font-size=\"11\">\n",
      "<style>.label{font-size:12px;font-weight:bold;fill:#1f2d3d}.small{font-size:10px;fill:#4a5a6a}"
      ".devlabel{font-size:10px;fill:#1f2d3d}</style>\n",
      "<title>", Escape(p.host), "</title>\n", body, "<g transform=\"translate(0,", top, ")\">\n", drawing, "</g>\n</svg>\n");
}

}  // namespace mkfleet::console
