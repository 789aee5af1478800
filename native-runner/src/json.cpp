#include "json.h"

#include <cmath>
#include <cstdlib>

namespace edgeq {

namespace {
constexpr int kMaxDepth = 64;  // edgeq_bundle.json is shallow; bound recursion on hostile input
}

class JsonParser {
 public:
  explicit JsonParser(const std::string& s) : s_(s) {}

  Json document() {
    Json v = value(0);
    skip_ws();
    if (pos_ != s_.size()) fail("trailing characters");
    return v;
  }

 private:
  const std::string& s_;
  size_t pos_ = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("invalid JSON at byte " + std::to_string(pos_) + ": " + what);
  }
  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\r' || s_[pos_] == '\t')) ++pos_;
  }
  char peek() {
    skip_ws();
    if (pos_ >= s_.size()) fail("unexpected end");
    return s_[pos_];
  }
  void expect(const char* word) {
    for (const char* p = word; *p; ++p, ++pos_)
      if (pos_ >= s_.size() || s_[pos_] != *p) fail(std::string("expected ") + word);
  }

  Json value(int depth) {
    if (depth > kMaxDepth) fail("nested too deeply");
    Json v;
    char c = peek();
    if (c == '{') {
      v.kind_ = Json::Kind::Object;
      ++pos_;
      if (peek() == '}') { ++pos_; return v; }
      while (true) {
        if (peek() != '"') fail("expected a key");
        std::string key = string();
        if (peek() != ':') fail("expected ':'");
        ++pos_;
        v.object_[key] = value(depth + 1);
        char n = peek();
        ++pos_;
        if (n == '}') return v;
        if (n != ',') fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      v.kind_ = Json::Kind::Array;
      ++pos_;
      if (peek() == ']') { ++pos_; return v; }
      while (true) {
        v.array_.push_back(value(depth + 1));
        char n = peek();
        ++pos_;
        if (n == ']') return v;
        if (n != ',') fail("expected ',' or ']'");
      }
    }
    if (c == '"') {
      v.kind_ = Json::Kind::String;
      v.string_ = string();
      return v;
    }
    if (c == 't') { expect("true"); v.kind_ = Json::Kind::Bool; v.bool_ = true; return v; }
    if (c == 'f') { expect("false"); v.kind_ = Json::Kind::Bool; return v; }
    if (c == 'n') { expect("null"); return v; }
    if (c == '-' || (c >= '0' && c <= '9')) {
      const char* start = s_.c_str() + pos_;
      char* end = nullptr;
      v.number_ = std::strtod(start, &end);
      if (end == start || !std::isfinite(v.number_)) fail("bad number");
      pos_ += static_cast<size_t>(end - start);
      v.kind_ = Json::Kind::Number;
      return v;
    }
    fail(std::string("unexpected character '") + c + "'");
  }

  std::string string() {
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) fail("unterminated string");
      char c = s_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in string");
      if (c != '\\') { out += c; continue; }
      if (pos_ >= s_.size()) fail("unterminated escape");
      char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': append_utf8(out, code_point()); break;
        default: fail("bad escape");
      }
    }
  }

  uint32_t hex4() {
    if (pos_ + 4 > s_.size()) fail("short \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      char h = s_[pos_++];
      v <<= 4;
      if (h >= '0' && h <= '9') v |= h - '0';
      else if (h >= 'a' && h <= 'f') v |= h - 'a' + 10;
      else if (h >= 'A' && h <= 'F') v |= h - 'A' + 10;
      else fail("bad hex digit");
    }
    return v;
  }
  uint32_t code_point() {
    uint32_t cp = hex4();
    if (cp >= 0xD800 && cp < 0xDC00 && pos_ + 6 <= s_.size() && s_[pos_] == '\\' && s_[pos_ + 1] == 'u') {
      pos_ += 2;
      uint32_t lo = hex4();
      if (lo < 0xDC00 || lo > 0xDFFF) fail("bad surrogate pair");
      cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
    }
    return cp;
  }
  static void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) out += static_cast<char>(cp);
    else if (cp < 0x800) { out += static_cast<char>(0xC0 | (cp >> 6)); out += static_cast<char>(0x80 | (cp & 0x3F)); }
    else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
};

Json Json::parse(const std::string& text) { return JsonParser(text).document(); }

bool Json::has(const std::string& key) const { return kind_ == Kind::Object && object_.count(key) > 0; }

const Json& Json::operator[](const std::string& key) const {
  if (kind_ != Kind::Object) throw std::runtime_error("'" + key + "': parent is not an object");
  auto it = object_.find(key);
  if (it == object_.end()) throw std::runtime_error("missing key '" + key + "'");
  return it->second;
}

const Json& Json::operator[](size_t i) const {
  if (kind_ != Kind::Array || i >= array_.size()) throw std::runtime_error("index out of range");
  return array_[i];
}

size_t Json::size() const { return kind_ == Kind::Array ? array_.size() : object_.size(); }

const std::vector<Json>& Json::items() const {
  if (kind_ != Kind::Array) throw std::runtime_error("expected an array");
  return array_;
}

const std::map<std::string, Json>& Json::members() const {
  if (kind_ != Kind::Object) throw std::runtime_error("expected an object");
  return object_;
}

const std::string& Json::str() const {
  if (kind_ != Kind::String) throw std::runtime_error("expected a string");
  return string_;
}

double Json::num() const {
  if (kind_ != Kind::Number) throw std::runtime_error("expected a number");
  return number_;
}

int64_t Json::integer() const {
  double n = num();
  if (n != std::floor(n) || std::fabs(n) > 9.0e15) throw std::runtime_error("expected an integer");
  return static_cast<int64_t>(n);
}

bool Json::boolean() const {
  if (kind_ != Kind::Bool) throw std::runtime_error("expected true or false");
  return bool_;
}

}  // namespace edgeq
