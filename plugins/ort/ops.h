// Per-execution-provider registration hooks of the FoPool op. qrnn_ort.cc calls each one that is
// compiled in; a new EP adds one function here, one source file and one call.
#pragma once

#include "fo_pool_op.h"

namespace qrnn {
namespace ort {

void AddCpuFoPoolOps(Ort::CustomOpDomain& domain);  // fo_pool_cpu_op.cc

#ifdef QRNN_WITH_CUDA
void AddCudaFoPoolOps(Ort::CustomOpDomain& domain);  // CUDA EP kernels (built with -DQRNN_WITH_CUDA=ON)
#endif

}  // namespace ort
}  // namespace qrnn
