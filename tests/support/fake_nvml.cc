// A stand-in for the NVIDIA driver's libnvidia-ml.so.1, for the MIG detection's tests on a host
// without a GPU: the calls mig_slice_from_nvml makes, answering as FAKE_NVML says:
//   mig       one GPU (an H100) in MIG mode with one reachable instance, 1g.10gb
//   whole     one GPU, MIG mode off
//   no-init   nvmlInit_v2 fails (a driver/library mismatch)
// Every call counts in fake_nvml_calls(), and nvmlShutdown must follow every successful init.
#include <cstdlib>
#include <cstring>
#include <string>

namespace {
int calls = 0, inits = 0;
std::string mode() {
  const char* m = std::getenv("FAKE_NVML");
  return m != nullptr ? m : "mig";
}
struct Device {
  int id;
};
Device gpu{0}, instance{1};
int copy(char* out, unsigned length, const char* text) {
  if (std::strlen(text) + 1 > length) return 7;  // NVML_ERROR_INSUFFICIENT_SIZE
  std::strcpy(out, text);
  return 0;
}
}  // namespace

extern "C" {
int fake_nvml_calls() { return calls; }
int fake_nvml_open_inits() { return inits; }
int nvmlInit_v2() {
  ++calls;
  if (mode() == "no-init") return 9;  // NVML_ERROR_DRIVER_NOT_LOADED
  ++inits;
  return 0;
}
int nvmlShutdown() {
  ++calls;
  --inits;
  return 0;
}
int nvmlDeviceGetCount_v2(unsigned* count) {
  ++calls;
  *count = 1;
  return 0;
}
int nvmlDeviceGetHandleByIndex_v2(unsigned index, Device** device) {
  ++calls;
  if (index != 0) return 2;  // NVML_ERROR_INVALID_ARGUMENT
  *device = &gpu;
  return 0;
}
int nvmlDeviceGetMigMode(Device* device, unsigned* current, unsigned* pending) {
  ++calls;
  if (device != &gpu) return 2;
  *current = *pending = mode() == "mig" ? 1 : 0;
  return 0;
}
int nvmlDeviceGetMaxMigDeviceCount(Device* device, unsigned* count) {
  ++calls;
  if (device != &gpu) return 2;
  *count = 7;
  return 0;
}
int nvmlDeviceGetMigDeviceHandleByIndex(Device* device, unsigned index, Device** out) {
  ++calls;
  if (device != &gpu || index != 3) return 6;  // NVML_ERROR_NOT_FOUND: instances 0-2 are others'
  *out = &instance;
  return 0;
}
int nvmlDeviceGetName(Device* device, char* name, unsigned length) {
  ++calls;
  return copy(name, length, device == &gpu ? "NVIDIA H100 80GB HBM3" : "NVIDIA H100 80GB HBM3 MIG 1g.10gb");
}
int nvmlDeviceGetUUID(Device* device, char* uuid, unsigned length) {
  ++calls;
  return copy(uuid, length,
              device == &gpu ? "GPU-5f2c1d4e-aaaa-bbbb-cccc-0123456789ab" : "MIG-0c3a7e1f-1111-2222-3333-444455556666");
}
}
