// SHA-256 (FIPS 180-4) of a file, as lowercase hex: the runner checks every bundled file
// against edgeq_bundle.json before it loads anything.
#pragma once

#include <string>

namespace edgeq {

// Returns "" if the file cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace edgeq
