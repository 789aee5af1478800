// edgeq-runner: load an edgeq bundle with ExecuTorch's Module API, check its golden output,
// then benchmark it and print JSON in the shape of `edgeq profile --json`.
//
//   edgeq-runner BUNDLE_DIR [--runs N] [--warmup N] [--threads N] [--json-out FILE]
//
// Exit codes: 0 ok; 2 the bundle is unreadable, incomplete or tampered with (one
// "error: ..." line on stderr); 3 the golden output is outside the bundle's tolerance;
// 1 the runtime failed.
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include "json.h"
#include "sha256.h"

#if __has_include(<executorch/extension/threadpool/threadpool.h>)
#include <executorch/extension/threadpool/threadpool.h>
#else
// The pip wheel ships libexecutorch_threadpool.so but not this header; these are the two
// members the runner calls, as declared in extension/threadpool/threadpool.h.
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool
#endif

namespace {

using executorch::aten::ScalarType;
using executorch::extension::Module;
using Clock = std::chrono::steady_clock;

constexpr int kRunnerVersion = 1;
constexpr int kMaxRuns = 1000000;

struct BundleError {
  std::string message;
};

struct Tensor {
  std::string name, dtype;
  std::vector<int32_t> shape;
  std::vector<unsigned char> bytes;
};

[[noreturn]] void bad(const std::string& message) { throw BundleError{message}; }

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) bad("cannot read " + path);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

bool safe_relative(const std::string& rel) {
  if (rel.empty() || rel[0] == '/') return false;
  std::stringstream parts(rel);
  std::string part;
  while (std::getline(parts, part, '/'))
    if (part == ".." || part.empty()) return false;
  return true;
}

size_t dtype_size(const std::string& dtype) {
  if (dtype == "float32" || dtype == "int32") return 4;
  if (dtype == "int64") return 8;
  if (dtype == "bool" || dtype == "uint8" || dtype == "int8") return 1;
  bad("unsupported dtype '" + dtype + "'");
}

ScalarType scalar_type(const std::string& dtype) {
  if (dtype == "float32") return ScalarType::Float;
  if (dtype == "int32") return ScalarType::Int;
  if (dtype == "int64") return ScalarType::Long;
  if (dtype == "bool") return ScalarType::Bool;
  if (dtype == "uint8") return ScalarType::Byte;
  if (dtype == "int8") return ScalarType::Char;
  bad("unsupported dtype '" + dtype + "'");
}

// Every file in the bundle's table exists with its recorded size and sha256.
void verify_files(const std::string& dir, const edgeq::Json& files) {
  for (const auto& [rel, info] : files.members()) {
    if (!safe_relative(rel)) bad("edgeq_bundle.json lists a file outside the bundle (" + rel + ")");
    std::string path = dir + "/" + rel;
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    if (!f) bad(rel + " is missing from the bundle");
    if (static_cast<int64_t>(f.tellg()) != info["bytes"].integer() || edgeq::sha256_file(path) != info["sha256"].str())
      bad(rel + " does not match its sha256 in edgeq_bundle.json (corrupt or modified)");
  }
}

Tensor read_tensor(const std::string& dir, const edgeq::Json& spec) {
  Tensor t;
  t.name = spec["name"].str();
  t.dtype = spec["dtype"].str();
  size_t count = 1;
  for (const auto& d : spec["shape"].items()) {
    int64_t v = d.integer();
    if (v < 0 || v > (1 << 30)) bad("bad shape in edgeq_bundle.json");
    t.shape.push_back(static_cast<int32_t>(v));
    count *= static_cast<size_t>(v);
  }
  std::string rel = spec["file"].str();
  if (!safe_relative(rel)) bad("golden file outside the bundle (" + rel + ")");
  std::string data = read_file(dir + "/" + rel);
  if (data.size() != count * dtype_size(t.dtype)) bad(rel + " does not hold a " + t.dtype + " tensor of its shape");
  t.bytes.assign(data.begin(), data.end());  // little-endian on every platform ExecuTorch runs on here
  return t;
}

struct Memory {
  int64_t rss = -1, hwm = -1;
};

Memory memory_now() {
  Memory m;
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) m.rss = std::stoll(line.substr(6)) * 1024;
    if (line.rfind("VmHWM:", 0) == 0) m.hwm = std::stoll(line.substr(6)) * 1024;
  }
  return m;
}

bool reset_peak() {
  std::ofstream f("/proc/self/clear_refs");
  if (!f) return false;
  f << "5";
  return static_cast<bool>(f.flush());
}

double percentile(const std::vector<double>& sorted, double q) {  // numpy's default (linear)
  double pos = (sorted.size() - 1) * q;
  size_t lo = static_cast<size_t>(pos), hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

std::string quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') { out += '\\'; out += c; }
    else if (static_cast<unsigned char>(c) < 0x20) { char b[8]; std::snprintf(b, sizeof b, "\\u%04x", c); out += b; }
    else out += c;
  }
  return out + "\"";
}

std::string num(double v) {
  if (!std::isfinite(v)) return "null";
  char b[64];
  std::snprintf(b, sizeof b, "%.17g", v);
  return b;
}

struct Args {
  std::string dir, json_out;
  int runs = 20, warmup = 3, threads = -1;
};

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    auto next_int = [&](int lo) {
      if (i + 1 >= argc) bad(s + " needs a value");
      char* end = nullptr;
      long v = std::strtol(argv[++i], &end, 10);
      if (*end || v < lo || v > kMaxRuns) bad(s + " must be an integer >= " + std::to_string(lo));
      return static_cast<int>(v);
    };
    if (s == "--runs") a.runs = next_int(1);
    else if (s == "--warmup") a.warmup = next_int(0);
    else if (s == "--threads") a.threads = next_int(1);
    else if (s == "--json-out") { if (i + 1 >= argc) bad("--json-out needs a path"); a.json_out = argv[++i]; }
    else if (!s.empty() && s[0] == '-') bad("unknown option " + s);
    else if (a.dir.empty()) a.dir = s;
    else bad("one bundle directory, please");
  }
  if (a.dir.empty()) bad("usage: edgeq-runner BUNDLE_DIR [--runs N] [--warmup N] [--threads N] [--json-out FILE]");
  return a;
}

int usable_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
  return 1;
}

int run(const Args& args) {
  const std::string& dir = args.dir;
  edgeq::Json desc;
  try {
    desc = edgeq::Json::parse(read_file(dir + "/edgeq_bundle.json"));
  } catch (const std::runtime_error& e) {
    bad(dir + "/edgeq_bundle.json: " + e.what());
  }
  std::vector<Tensor> inputs;
  Tensor expected;
  double max_abs_tol = 0, min_cos = 0;
  std::string model_file;
  try {
    if (desc["schema_version"].integer() != 1) bad("edgeq_bundle.json has an unknown schema version");
    if (desc["format"].str() != "executorch")
      bad("this runner runs ExecuTorch bundles; this one is " + desc["format"].str() + " (use its own runtime)");
    model_file = desc["model_file"].str();
    if (!safe_relative(model_file) || !desc["files"].has(model_file)) bad("model file not in the bundle's file table");
    verify_files(dir, desc["files"]);
    const auto& golden = desc["golden"];
    if (!golden.has("output")) bad("the bundle has no golden output (" + golden["skipped"].str() + ")");
    for (const auto& spec : golden["inputs"].items()) inputs.push_back(read_tensor(dir, spec));
    expected = read_tensor(dir, golden["output"]);
    if (expected.dtype != "float32") bad("golden output must be float32");
    max_abs_tol = golden["tolerance"]["max_abs"].num();
    min_cos = golden["tolerance"]["min_cosine"].num();
  } catch (const std::runtime_error& e) {
    bad(std::string("edgeq_bundle.json: ") + e.what());
  }
  int usable = usable_cores();
  int wanted = static_cast<int>(desc["threads"].num());
  int threads = args.threads > 0 ? args.threads : (wanted > 0 ? std::min(wanted, usable) : 0);
  auto* pool = executorch::extension::threadpool::get_threadpool();
  if (threads > 0 && pool) pool->_unsafe_reset_threadpool(static_cast<uint32_t>(threads));
  int threads_used = pool ? static_cast<int>(pool->get_thread_count()) : 1;

  bool peak_reset = reset_peak();
  Memory base = memory_now();
  auto t0 = Clock::now();
  Module module(dir + "/" + model_file, Module::LoadMode::Mmap);
  auto err = module.load_forward();
  double load_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  if (err != executorch::runtime::Error::Ok) {
    std::fprintf(stderr, "error: ExecuTorch cannot load %s (error 0x%x) (the file is corrupt or needs a delegate or kernel this runner lacks)\n",
                 model_file.c_str(), static_cast<unsigned>(err));
    return 1;
  }
  std::vector<executorch::runtime::EValue> feeds;
  std::vector<executorch::extension::TensorPtr> keep;
  for (auto& t : inputs) {
    keep.push_back(executorch::extension::from_blob(t.bytes.data(), t.shape, scalar_type(t.dtype)));
    feeds.emplace_back(keep.back());
  }
  auto result = module.forward(feeds);
  if (!result.ok() || result->empty() || !result->at(0).isTensor()) {
    std::fprintf(stderr, "error: ExecuTorch failed running the golden input (error 0x%x)\n",
                 result.ok() ? 0u : static_cast<unsigned>(result.error()));
    return 1;
  }
  const auto& out = result->at(0).toTensor();
  size_t n = expected.bytes.size() / 4;
  if (static_cast<size_t>(out.numel()) != n || out.scalar_type() != ScalarType::Float) {
    std::fprintf(stderr, "error: the output has %zd elements, the golden output %zu\n", static_cast<ssize_t>(out.numel()), n);
    return 3;
  }
  const float* got = out.const_data_ptr<float>();
  const float* want = reinterpret_cast<const float*>(expected.bytes.data());
  double max_diff = 0, dot = 0, ng = 0, nw = 0;
  for (size_t i = 0; i < n; ++i) {
    max_diff = std::max(max_diff, std::fabs(double(got[i]) - double(want[i])));
    dot += double(got[i]) * want[i];
    ng += double(got[i]) * got[i];
    nw += double(want[i]) * want[i];
  }
  double cosine = (ng > 0 && nw > 0) ? dot / std::sqrt(ng * nw) : (ng == nw ? 1.0 : 0.0);
  bool golden_ok = max_diff <= max_abs_tol && cosine >= min_cos;

  std::vector<double> samples;
  bool run_failed = false;
  for (int i = 0; i < args.warmup + args.runs && !run_failed; ++i) {
    auto t = Clock::now();
    auto r = module.forward(feeds);
    double ms = std::chrono::duration<double, std::milli>(Clock::now() - t).count();
    run_failed = !r.ok();
    if (i >= args.warmup) samples.push_back(ms);
  }
  if (run_failed) {
    std::fprintf(stderr, "error: ExecuTorch failed during the timed runs\n");
    return 1;
  }
  Memory end = memory_now();
  std::vector<double> sorted = samples;
  std::sort(sorted.begin(), sorted.end());
  double mean = std::accumulate(sorted.begin(), sorted.end(), 0.0) / sorted.size();
  double var = 0;
  for (double s : sorted) var += (s - mean) * (s - mean);
  double stdev = sorted.size() > 1 ? std::sqrt(var / (sorted.size() - 1)) : 0.0;

  std::ostringstream j;
  j << "{\n  \"runner_version\": " << kRunnerVersion << ",\n  \"runner\": \"edgeq-runner (C++, ExecuTorch Module API)\""
    << ",\n  \"artifact\": " << quote(dir) << ",\n  \"bundle_id\": " << quote(desc["id"].str())
    << ",\n  \"model\": " << quote(desc["model_name"].str()) << ",\n  \"model_file\": " << quote(model_file)
    << ",\n  \"format\": \"executorch\",\n  \"runtime\": " << quote("executorch " + desc["runtime"]["version"].str() + " (C++ Module API)")
    << ",\n  \"delegates\": [";
  const auto& dels = desc["delegates"].items();
  for (size_t i = 0; i < dels.size(); ++i) j << (i ? ", " : "") << quote(dels[i].str());
  j << "],\n  \"inputs\": [";
  for (size_t i = 0; i < inputs.size(); ++i) {
    j << (i ? ", " : "") << "{\"name\": " << quote(inputs[i].name) << ", \"shape\": [";
    for (size_t k = 0; k < inputs[i].shape.size(); ++k) j << (k ? ", " : "") << inputs[i].shape[k];
    j << "], \"dtype\": " << quote(inputs[i].dtype) << "}";
  }
  j << "],\n  \"host\": {\"usable_cores\": " << usable << "},\n  \"threads\": {\"requested\": "
    << (args.threads > 0 ? args.threads : wanted) << ", \"used\": " << threads_used << ", \"source\": "
    << (args.threads > 0 ? "\"--threads\"" : "\"bundle\"") << "},\n  \"warmup\": " << args.warmup
    << ",\n  \"runs\": " << args.runs << ",\n  \"load_ms\": " << num(load_ms) << ",\n  \"latency_ms\": {\"min\": "
    << num(sorted.front()) << ", \"p50\": " << num(percentile(sorted, 0.5)) << ", \"p90\": " << num(percentile(sorted, 0.9))
    << ", \"max\": " << num(sorted.back()) << ", \"mean\": " << num(mean) << ", \"stdev\": " << num(stdev)
    << "},\n  \"samples_ms\": [";
  for (size_t i = 0; i < samples.size(); ++i) j << (i ? ", " : "") << num(samples[i]);
  bool mem = base.rss >= 0 && end.hwm >= 0;
  j << "],\n  \"memory\": {\"available\": " << (mem ? "true" : "false") << ", \"baseline_rss_bytes\": " << base.rss
    << ", \"peak_rss_bytes\": " << end.hwm << ", \"model_attributable_bytes\": " << (mem ? end.hwm - base.rss : -1)
    << ", \"final_rss_bytes\": " << end.rss << ", \"peak_reset\": " << (peak_reset ? "true" : "false")
    << "},\n  \"golden\": {\"ok\": " << (golden_ok ? "true" : "false") << ", \"max_abs_diff\": " << num(max_diff)
    << ", \"cosine\": " << num(cosine) << ", \"tolerance_max_abs\": " << num(max_abs_tol)
    << ", \"tolerance_min_cosine\": " << num(min_cos) << "},\n  \"mode\": \"native\",\n  \"estimate\": false\n}\n";
  std::string text = j.str();
  if (!args.json_out.empty()) {
    std::ofstream f(args.json_out);
    if (!(f << text)) bad("cannot write " + args.json_out);
  } else {
    std::fputs(text.c_str(), stdout);
  }
  if (!golden_ok) {
    std::fprintf(stderr, "error: golden output mismatch: max |diff| %.3g (tolerance %.3g), cosine %.6f (min %.4f)\n",
                 max_diff, max_abs_tol, cosine, min_cos);
    return 3;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const BundleError& e) {
    std::fprintf(stderr, "error: %s\n", e.message.c_str());
    return 2;
  } catch (const std::runtime_error& e) {  // a field of edgeq_bundle.json missing or of the wrong type
    std::fprintf(stderr, "error: edgeq_bundle.json: %s (re-run 'edgeq bundle')\n", e.what());
    return 2;
  }
}
