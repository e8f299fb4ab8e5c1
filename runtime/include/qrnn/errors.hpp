// Typed errors of the C++ runtime, mirroring qrnn_deploy/errors.py: every error a user can hit is
// a subclass of qrnn::Error whose message says what is wrong and what to do. Programs catch
// qrnn::Error, print one line and exit with a non-zero code.
#pragma once

#include <stdexcept>
#include <string>

namespace qrnn {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// A bundle directory or its manifest is missing, malformed or of an unknown version.
class BundleError : public Error {
 public:
  using Error::Error;
};

// Arguments the runtime cannot work with (beam < 1, empty source, unknown backend, ...).
class ConfigError : public Error {
 public:
  using Error::Error;
};

// A native library (custom-op library, TensorRT plugin) could not be found or loaded.
class BuildError : public Error {
 public:
  using Error::Error;
};

// A stream was used wrongly (mismatched batch sizes, fed after finish, ...).
class StreamError : public Error {
 public:
  using Error::Error;
};

// The inference engine (onnxruntime, TensorRT) failed to load or run a graph.
class BackendError : public Error {
 public:
  using Error::Error;
};

}  // namespace qrnn
