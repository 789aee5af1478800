// A small JSON reader for edgeq_bundle.json (RFC 8259 values; no comments, no extensions).
// Written for the runner so that it depends on nothing but the ExecuTorch runtime.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace edgeq {

class Json {
 public:
  enum class Kind { Null, Bool, Number, String, Array, Object };

  static Json parse(const std::string& text);  // throws std::runtime_error with the offset

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::Null; }
  bool has(const std::string& key) const;
  const Json& operator[](const std::string& key) const;  // throws if missing or not an object
  const Json& operator[](size_t i) const;
  size_t size() const;
  const std::vector<Json>& items() const;
  const std::map<std::string, Json>& members() const;
  const std::string& str() const;
  double num() const;
  int64_t integer() const;
  bool boolean() const;

 private:
  Kind kind_ = Kind::Null;
  bool bool_ = false;
  double number_ = 0;
  std::string string_;
  std::vector<Json> array_;
  std::map<std::string, Json> object_;
  friend class JsonParser;
};

}  // namespace edgeq
