// Tiny command-line parsing shared by the example programs: `--name value` flags and
// positional arguments; every mistake is a UsageError (one line, exit code 2).
#pragma once

#include <cstdlib>
#include <exception>
#include <iostream>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace qrnn_examples {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Args {
 public:
  // `valued`: flags that take a value; `switches`: flags without one.
  Args(int argc, char** argv, const std::set<std::string>& valued, const std::set<std::string>& switches) {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "-h" || a == "--help") {
        help = true;
      } else if (a.rfind("--", 0) == 0) {
        std::string value;
        const auto eq = a.find('=');
        if (eq != std::string::npos) {
          value = a.substr(eq + 1);
          a = a.substr(0, eq);
        }
        if (switches.count(a)) {
          if (eq != std::string::npos) throw UsageError(a + " takes no value");
          flags_[a] = "1";
        } else if (valued.count(a)) {
          if (eq == std::string::npos) {
            if (i + 1 >= argc) throw UsageError(a + " needs a value");
            value = argv[++i];
          }
          flags_[a] = value;
        } else {
          throw UsageError("unknown option " + a);
        }
      } else {
        positional.push_back(a);
      }
    }
  }

  bool has(const std::string& f) const { return flags_.count(f) > 0; }
  std::string str(const std::string& f, const std::string& def) const {
    auto it = flags_.find(f);
    return it == flags_.end() ? def : it->second;
  }
  long integer(const std::string& f, long def, long lo, long hi) const {
    auto it = flags_.find(f);
    if (it == flags_.end()) return def;
    char* end = nullptr;
    const long v = std::strtol(it->second.c_str(), &end, 10);
    if (it->second.empty() || *end != '\0') throw UsageError(f + " must be an integer, got '" + it->second + "'");
    if (v < lo || v > hi)
      throw UsageError(f + " must be between " + std::to_string(lo) + " and " + std::to_string(hi) + ", got " + it->second);
    return v;
  }
  double real(const std::string& f, double def) const {
    auto it = flags_.find(f);
    if (it == flags_.end()) return def;
    char* end = nullptr;
    const double v = std::strtod(it->second.c_str(), &end);
    if (it->second.empty() || *end != '\0') throw UsageError(f + " must be a number, got '" + it->second + "'");
    return v;
  }

  std::vector<std::string> positional;
  bool help = false;

 private:
  std::map<std::string, std::string> flags_;
};

// Runs a program's `run` and turns every error into one line on stderr and an exit code:
// 2 for a usage error or a qrnn::Error (Error must be qrnn::Error), 1 for anything else.
template <typename Error, typename Run>
int main_guard(const char* program, Run run, int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << program << ": " << e.what() << "\n";
    return 2;
  } catch (const Error& e) {
    std::cerr << program << ": error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << program << ": internal error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace qrnn_examples
