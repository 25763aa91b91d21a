# Writes OUT, a C++ source holding the text of each model file in FILES (the zoo), so the
# binary knows its zoo without files beside it. Run by models/CMakeLists.txt at build time.
set(entries "")
list(SORT FILES)
foreach(file IN LISTS FILES)
  get_filename_component(name "${file}" NAME_WE)
  file(READ "${file}" text)
  string(APPEND entries "      {\"${name}\", R\"shoal_zoo(${text})shoal_zoo\"},\n")
endforeach()
file(WRITE "${OUT}.new" "// Generated from models/zoo/*.yaml by models/embed_zoo.cmake: do not edit.
#include <map>
#include <string>
#include <vector>

#include \"models/model_file.h\"

namespace shoal {
namespace {
const std::map<std::string, std::string>& zoo() {
  static const std::map<std::string, std::string> files = {
${entries}  };
  return files;
}
}  // namespace

const std::vector<std::string>& zoo_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& kv : zoo()) out.push_back(kv.first);
    return out;
  }();
  return names;
}

const std::string* zoo_text(const std::string& name) {
  auto it = zoo().find(name);
  return it == zoo().end() ? nullptr : &it->second;
}

}  // namespace shoal
")
file(COPY_FILE "${OUT}.new" "${OUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUT}.new")
