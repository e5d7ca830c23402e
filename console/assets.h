// The console's static files (console/static), compiled in by //console:embed.
#ifndef MKFLEET_CONSOLE_ASSETS_H_
#define MKFLEET_CONSOLE_ASSETS_H_

#include <string>
#include <vector>

namespace mkfleet::console {

struct Asset {
  std::string name;   // the file's base name: "index.html", "app.js", "style.css"
  std::string bytes;
};

const std::vector<Asset>& Assets();

}  // namespace mkfleet::console

#endif  // MKFLEET_CONSOLE_ASSETS_H_
