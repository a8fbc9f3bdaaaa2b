// Run a gbd-export artifact from C++: no Python, only the TVM runtime.
//
//   run_artifact ARTIFACT_DIR INPUT.f32
//
// ARTIFACT_DIR is what `gbd-export ... --out ARTIFACT_DIR` wrote (model.so + manifest.json);
// INPUT.f32 holds the input images as raw little-endian float32 in C order (N, C, H, W), e.g.
// numpy's `x.astype("float32").tofile("x.f32")`.  The input shape comes from manifest.json; a
// dynamic-batch artifact takes any N (N = file size / (C*H*W)).  Prints one line per image,
// "top1 <class index>", and the run time on stderr.  CPU (llvm) artifacts only.
//
// The steps are those of tvm.runtime.vm.VirtualMachine in Python: load model.so, create the
// Relax VM from it (`vm_load_executable`), give it its device and allocator
// (`vm_initialization`), call `main`.  Unlike `tvm_passes.load`, this does not check the
// library's sha256 against the manifest.  Threads: TVM_NUM_THREADS (default: every core).

#include <dlpack/dlpack.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace ffi = tvm::ffi;

namespace {

constexpr int kPooledAllocator = 2;  // tvm.runtime.vm.VirtualMachine.POOLED_ALLOCATOR
constexpr size_t kAlignment = 64;    // TVM's kernels expect 64-byte aligned buffers

// Host memory for the input tensor, aligned as TVM requires.
struct AlignedCPUAlloc {
  void AllocData(DLTensor* t) {
    size_t bytes = (ffi::GetDataSize(*t) + kAlignment - 1) / kAlignment * kAlignment;
    t->data = std::aligned_alloc(kAlignment, bytes == 0 ? kAlignment : bytes);
    if (t->data == nullptr) throw std::runtime_error("out of memory for the input");
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  std::ostringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

// The input shape of manifest.json ("batch" for a dynamic batch -> -1), and its device.
std::vector<int64_t> InputShape(const std::string& dir, std::string* device) {
  ffi::String error;
  ffi::json::Value doc = ffi::json::Parse(ReadFile(dir + "/manifest.json"), &error);
  if (!error.empty()) throw std::runtime_error(dir + "/manifest.json: " + std::string(error));
  auto manifest = doc.cast<ffi::json::Object>();
  *device = manifest.count("device") ? std::string(manifest.at("device").cast<ffi::String>()) : "cpu";
  auto input = manifest.at("input").cast<ffi::json::Object>();
  std::vector<int64_t> shape;
  for (const ffi::Any& d : input.at("shape").cast<ffi::json::Array>()) {
    auto dim = d.try_cast<int64_t>();
    shape.push_back(dim.has_value() ? *dim : -1);
  }
  return shape;
}

// The (first) output tensor of `main`: a tensor, or the first field of a tuple.
ffi::Tensor FirstTensor(const ffi::Any& out) {
  if (auto t = out.try_cast<ffi::Tensor>()) return *t;
  if (auto a = out.try_cast<ffi::Array<ffi::Any>>()) return FirstTensor((*a)[0]);
  throw std::runtime_error("main returned no tensor");
}

int Run(const std::string& dir, const std::string& input_path) {
  std::string device;
  std::vector<int64_t> shape = InputShape(dir, &device);
  if (device != "cpu") throw std::runtime_error(dir + ": a " + device + " artifact; this example runs CPU ones");
  int64_t per_item = 1;
  for (size_t i = 1; i < shape.size(); ++i) per_item *= shape[i];
  std::string raw = ReadFile(input_path);
  int64_t floats = static_cast<int64_t>(raw.size() / sizeof(float));
  if (shape[0] < 0) shape[0] = per_item > 0 ? floats / per_item : 0;  // a dynamic batch
  int64_t want = shape[0] * per_item;
  if (want <= 0 || raw.size() != static_cast<size_t>(want) * sizeof(float)) {
    throw std::runtime_error(input_path + ": " + std::to_string(raw.size()) + " bytes, expected float32 (N, C, H, W)" +
                             " with C*H*W = " + std::to_string(per_item) + " (the manifest's input shape)");
  }

  // INT8 kernels built for Intel AMX tiles need the process's tile state from Linux first (the
  // Python loader asks the same way); harmless where the CPU has none.
#if defined(__linux__) && defined(__x86_64__)
  syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */);
#endif

  // model.so holds the compiled kernels and the VM executable; the VM comes from it.
  ffi::Module lib = ffi::Module::LoadFromFile(dir + "/model.so");
  ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
  vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, kPooledAllocator);
  ffi::Function main_fn = vm->GetFunction("main").value();

  ffi::Tensor x = ffi::Tensor::FromNDAlloc(AlignedCPUAlloc(), ffi::ShapeView(shape.data(), shape.size()),
                                           DLDataType{kDLFloat, 32, 1}, DLDevice{kDLCPU, 0});
  std::copy(raw.data(), raw.data() + raw.size(), static_cast<char*>(x.data_ptr()));

  auto t0 = std::chrono::steady_clock::now();
  ffi::Tensor y = FirstTensor(main_fn(x));
  auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

  if (y.ndim() != 2 || y.dtype().code != kDLFloat || y.dtype().bits != 32 || y.device().device_type != kDLCPU) {
    throw std::runtime_error("expected float32 logits (N, classes) on the CPU");
  }
  const float* logits = static_cast<const float*>(y.data_ptr());
  int64_t n = y.shape()[0], classes = y.shape()[1];
  for (int64_t i = 0; i < n; ++i) {
    int64_t best = 0;
    for (int64_t k = 1; k < classes; ++k) {
      if (logits[i * classes + k] > logits[i * classes + best]) best = k;
    }
    std::printf("top1 %lld\n", static_cast<long long>(best));
  }
  std::fprintf(stderr, "run_artifact: batch %lld in %.3f ms\n", static_cast<long long>(n), ms);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s ARTIFACT_DIR INPUT.f32\n", argv[0]);
    return 2;
  }
  try {
    return Run(argv[1], argv[2]);
  } catch (const ffi::Error& e) {  // TVM's own errors: kind and message
    std::fprintf(stderr, "run_artifact: error: %s: %s\n", e.kind().c_str(), e.message().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "run_artifact: error: %s\n", e.what());
  }
  return 1;
}
